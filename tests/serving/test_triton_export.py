"""Exported Triton repositories: every config.pbtxt parses into Triton's ModelConfig, and the Python-backend
variant loads in the bundled tritonserver and answers through its ensemble as the Purifier does."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as thttp
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from nrp_deploy.runtime import DynamicDefense
from nrp_deploy.serving import Endpoints, PurifierClient, ServeSettings, TritonServer, write_serve_repository
from nrp_deploy.serving.triton_server import free_ports

pytestmark = pytest.mark.timeout(300)
MODELS = {"nrp_purifier", "nrp_preprocess", "nrp_model", "nrp_postprocess"}
ADAPTER_RULES = (
    Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "prometheus-adapter" / "config.yaml"
)


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("variant", ["repo_python", "repo_onnxruntime"])
def test_every_exported_config_is_a_valid_triton_model_config(artifacts: Path, variant: str):
    repo = artifacts / variant
    configs = {p.parent.name: _parse(p) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == MODELS and (repo / "README.md").is_file()
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == 8
    ensemble = configs["nrp_purifier"]
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "nrp_preprocess",
        "nrp_model",
        "nrp_postprocess",
    ]
    network = configs["nrp_model"]
    assert network.backend == ("python" if variant == "repo_python" else "onnxruntime")
    assert network.dynamic_batching.max_queue_delay_microseconds == 100
    assert network.instance_group[0].count == 1 and len(network.model_warmup) == 1
    assert (repo / "nrp_model" / "1" / "model.onnx").is_file()


def test_the_serve_repository_config_is_a_valid_triton_model_config(tmp_path, tiny_onnx: Path):
    from nrp_deploy.serving.model_config import Batching

    repo = write_serve_repository(
        tmp_path, ServeSettings(model=str(tiny_onnx)), Batching(4, 500), instances=2
    )
    config = _parse(repo / "nrp_purifier" / "config.pbtxt")
    assert (config.backend, config.max_batch_size) == ("python", 4)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    assert '"model": "' + str(tiny_onnx.resolve()) in config.parameters["nrp_settings"].string_value


def test_the_python_backend_repository_loads_and_answers_through_the_ensemble(
    artifacts: Path, tmp_path, in_process
):
    endpoints = Endpoints("127.0.0.1", *free_ports(3))
    with open(tmp_path / "triton.log", "wb") as log:
        server = TritonServer(artifacts / "repo_python", tmp_path, endpoints, log_to=log)
        try:
            server.start(ready_timeout_s=180)
            raw = thttp.InferenceServerClient(f"127.0.0.1:{endpoints.http_port}")
            assert {
                m["name"] for m in raw.get_model_repository_index() if m.get("state") == "READY"
            } == MODELS
            rng = np.random.default_rng(9)
            for url in (endpoints.http_url, endpoints.grpc_url):
                with PurifierClient(url) as client:
                    for shape in [(1, 16, 16, 3), (3, 20, 28, 3)]:
                        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
                        assert np.array_equal(client.purify(images), in_process(images))
                        expected = in_process(images, dynamic=DynamicDefense(seed=21), start_index=4)
                        assert np.array_equal(
                            client.purify(images, dynamic=True, seed=21, start_index=4), expected
                        )
                    with pytest.raises(Exception, match="exceed the server's limit of 4096"):
                        client.purify(np.zeros((1, 70, 70, 3), np.uint8))
            tensor = thttp.InferInput("images", [1, 8, 8, 3], "UINT8")
            tensor.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8), binary_data=True)
            with pytest.raises(Exception, match="unknown request parameter"):
                raw.infer("nrp_purifier", [tensor], parameters={"colour": 1})
            raw.close()
            _assert_adapter_series_are_served(endpoints.metrics_url)
        finally:
            assert server.stop() == 0, (tmp_path / "triton.log").read_text()[-3000:]
    assert server.remove_shared_memory() == []


def _assert_adapter_series_are_served(metrics_url: str) -> None:
    """The series the Kubernetes autoscaler's adapter rule reads exist, with its model label, on a server
    that has answered requests (the rule file is read as text: this environment has no YAML parser)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        metrics = reply.read().decode()
    wanted = set(re.findall(r'(nv_\w+)\{[^}]*model="(\w+)"', ADAPTER_RULES.read_text(encoding="utf-8")))
    assert {series for series, _ in wanted} == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    }
    for series, model in wanted:
        values = re.findall(rf'^{series}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', metrics, re.M)
        assert values, f"{series} for model {model} is not in {metrics_url}"
        if series == "nv_inference_request_success":
            assert float(values[0]) > 0
