"""The serving tests, run from the main suite in the serving environment (.venv-serving).

nvidia-pytriton requires numpy<2, so `nrp serve` and its tests live in their own environment, made by
scripts/setup.sh. This module exports the tiny model they serve (torch is here, not there), writes the
Triton repositories under test, and runs each module of tests/serving/ with that environment's
interpreter. Without the environment the tests skip locally and fail under CI=true (tests/ci_rule.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from ci_rule import unavailable
from onnx import checker, helper, numpy_helper
from onnx import load as load_onnx
from onnx import save as save_onnx

from nrp_deploy.cli import main
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.models.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
SERVING_PYTHON = Path(os.environ.get("NRP_SERVING_PYTHON", ROOT / ".venv-serving" / "bin" / "python"))
SUITE_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def serving_python() -> Path:
    if not SERVING_PYTHON.is_file():
        message = (
            f"no serving environment at {SERVING_PYTHON}: run scripts/setup.sh (or set NRP_SERVING_PYTHON)"
        )
        unavailable(message)
    return SERVING_PYTHON


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serving")
    torch.manual_seed(3)
    checkpoint = folder / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), checkpoint)
    export_onnx(str(checkpoint), folder / "tiny.onnx")
    for engine in ("python", "onnxruntime"):
        export = [
            "export",
            "triton",
            "--model",
            str(folder / "tiny.onnx"),
            "-o",
            str(folder / f"repo_{engine}"),
        ]
        assert main([*export, "--engine", engine, "--max-pixels", "4096", "--threads", "1"]) == 0
    _write_batch_of_one(folder / "tiny.onnx", folder / "batch_of_one.onnx")
    return folder


def _write_batch_of_one(source: Path, target: Path) -> None:
    """``source`` with a Squeeze/Unsqueeze of the batch axis in front: the same output for one image, and a
    run-time error inside ONNX Runtime for a batch of more (a model that fails inside the purifier)."""
    model = load_onnx(source)
    graph = model.graph
    images = graph.input[0].name
    for node in graph.node:
        node.input[:] = [f"{images}_batch_of_one" if name == images else name for name in node.input]
    axis = numpy_helper.from_array(np.zeros(1, np.int64), f"{images}_batch_axis")
    graph.initializer.append(axis)
    squeeze = helper.make_node("Squeeze", [images, axis.name], [f"{images}_squeezed"])
    unsqueeze = helper.make_node("Unsqueeze", [f"{images}_squeezed", axis.name], [f"{images}_batch_of_one"])
    graph.node.insert(0, unsqueeze)
    graph.node.insert(0, squeeze)
    checker.check_model(model)
    save_onnx(model, target)


@pytest.mark.parametrize("module", ["test_serve.py", "test_serve_openvino.py", "test_triton_export.py"])
def test_serving_suite(serving_python: Path, artifacts: Path, module: str):
    env = {**os.environ, "NRP_SERVING_TEST_DIR": str(artifacts), "PYTHONPATH": str(ROOT)}
    command = [str(serving_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/serving/{module}"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, (
        f"{module} failed in the serving environment:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    )
    assert " passed" in proc.stdout and " skipped" not in proc.stdout


def test_request_parameters_are_checked_with_what_to_send_instead():
    from nrp_deploy.errors import InputError
    from nrp_deploy.serving.protocol import RequestOptions, encode_parameters, parse_parameters

    assert parse_parameters({}, dynamic_default=False) == RequestOptions(False)
    assert parse_parameters({}, dynamic_default=True) == RequestOptions(True)
    assert parse_parameters({"dynamic": "true", "seed": "18446744073709551615", "start_index": 3}, False) == (
        RequestOptions(True, 2**64 - 1, 3)
    )
    assert parse_parameters({"seed": 5, "priority": 1}, dynamic_default=True) == RequestOptions(True, 5)
    for parameters, message in [
        ({"sigma": 0.1}, "unknown request parameter(s) 'sigma'; this model takes dynamic, seed, start_index"),
        ({"seed": 1}, "send dynamic=true or drop 'seed'"),
        ({"dynamic": True, "seed": 2**64}, "0 <= seed < 2**64"),
        ({"dynamic": True, "seed": True}, "0 <= seed < 2**64"),
        ({"start_index": -1}, "0 <= start_index < 2**32"),
        ({"dynamic": "yes"}, "'dynamic' must be true or false"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            parse_parameters(parameters, dynamic_default=False)
    assert encode_parameters(True, 2**64 - 1, 2) == {
        "dynamic": True,
        "seed": str(2**64 - 1),
        "start_index": 2,
    }
    with pytest.raises(InputError, match="drop it or leave dynamic on"):
        encode_parameters(False, 3)


def test_exported_repository_is_self_contained_and_never_half_written(artifacts: Path):
    repo = artifacts / "repo_python"
    for model in ("nrp_preprocess", "nrp_postprocess"):
        for source in (repo / model / "1").glob("*.py"):
            assert not re.search(r"^\s*(from|import) nrp_deploy", source.read_text(), re.M), source
    leftovers = [p.name for p in artifacts.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    again = [
        "export",
        "triton",
        "--model",
        str(artifacts / "tiny.onnx"),
        "-o",
        str(repo),
        "--engine",
        "python",
    ]
    assert main(again) == 2  # exists: refused
    assert main([*again, "--overwrite", "--max-batch", "4"]) == 0
    assert "max_batch_size: 4" in (repo / "nrp_model" / "config.pbtxt").read_text()
    assert main([*again, "--overwrite", "--max-batch", "0"]) == 2
    assert "max_batch_size: 4" in (repo / "nrp_model" / "config.pbtxt").read_text()  # kept whole


FORKED_CHILD = """
import multiprocessing, os, signal, time
from nrp_deploy.serving.serve import only_here
calls = []
signal.signal(signal.SIGTERM, only_here(lambda signum, frame: calls.append(signum)))
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,), daemon=True)
child.start()
time.sleep(0.2)
child.terminate()
child.join(10)
os.kill(os.getpid(), signal.SIGTERM)
print(child.exitcode, calls)
"""


def test_the_serve_signal_handler_acts_only_in_its_own_process():
    """A child forked by a library (OpenVINO's usage record) dies on SIGTERM instead of running `nrp serve`'s
    handler; it would otherwise survive the SIGTERM and hold the server's exit until it ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(-signal.SIGTERM), f"[{int(signal.SIGTERM)}]"]


# -- the noise level a server runs: fixed when it is served or exported, honoured by its Python models ----

VENDORED_NAMES = ("nrp_philox", "nrp_prepost", "nrp_protocol", "nrp_errors")


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: list | None = None, error: object = None) -> None:
        self.output_tensors, self.error = output_tensors, error


class _Request:
    def __init__(self, images: np.ndarray, parameters: dict) -> None:
        self.images, self._parameters = images, parameters

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class _TritonError(Exception):
    INVALID_ARG = 3

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)


#: Just what the Python-backend models use of Triton's ``triton_python_backend_utils``, so they run here.
FAKE_PB_UTILS = SimpleNamespace(
    Tensor=_Tensor,
    InferenceResponse=_Response,
    TritonError=_TritonError,
    get_input_tensor_by_name=lambda request, name: _Tensor(name, request.images),
    triton_string_to_numpy=lambda name: {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}[name],
    Logger=SimpleNamespace(log_info=lambda message: None, log_error=lambda message: None),
)


@pytest.fixture
def python_model(monkeypatch):
    """Load a Python-backend ``model.py`` with the fake ``triton_python_backend_utils``, initialised with the
    ``nrp_settings`` of its ``config.pbtxt``; the modules a repository vendors are forgotten afterwards."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FAKE_PB_UTILS)
    monkeypatch.setattr(sys, "path", [*sys.path])

    def load(model_dir: Path, output: dict | None = None) -> object:
        spec = importlib.util.spec_from_file_location(
            f"model_{model_dir.parent.name}", model_dir / "1" / "model.py"
        )
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = {"parameters": {"nrp_settings": {"string_value": _settings_text(model_dir)}}}
        model = module.TritonPythonModel()
        model.initialize(
            {"model_config": json.dumps({**config, "output": [output or {}]}), "model_instance_kind": "CPU"}
        )
        return model

    yield load
    for name in VENDORED_NAMES:
        sys.modules.pop(name, None)


def _settings_text(model_dir: Path) -> str:
    """The ``nrp_settings`` parameter of a model's config.pbtxt: JSON text, quoted there as a JSON string."""
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return json.loads(re.search(r'key: "nrp_settings" value \{ string_value: (".*") \}', text).group(1))


def _nrp_settings(model_dir: Path) -> dict:
    return json.loads(_settings_text(model_dir))


def _answer(model, images: np.ndarray, parameters: dict) -> np.ndarray:
    (response,) = model.execute([_Request(images, parameters)])
    assert response.error is None, response.error
    return response.output_tensors[0].array


def test_an_exported_repository_adds_the_noise_level_it_was_exported_with(
    artifacts: Path, tmp_path, python_model
):
    from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA, apply_dynamic_defense
    from nrp_deploy.runtime.prepost import uint8_to_float

    repo = tmp_path / "repo"
    export = [
        "export",
        "triton",
        "--model",
        str(artifacts / "tiny.onnx"),
        "-o",
        str(repo),
        "--engine",
        "python",
    ]
    assert main([*export, "--noise-sigma", "0.02", "--noise-eps", "0.03"]) == 0
    settings = _nrp_settings(repo / "nrp_preprocess")
    assert (settings["sigma"], settings["eps"]) == (0.02, 0.03)
    assert "sigma 0.02, eps 0.03" in (repo / "README.md").read_text()
    published = _nrp_settings(artifacts / "repo_python" / "nrp_preprocess")
    assert (published["sigma"], published["eps"]) == (PUBLISHED_SIGMA, PUBLISHED_EPS)

    preprocess = python_model(repo / "nrp_preprocess", {"name": "input", "data_type": "TYPE_FP32"})
    images = np.random.default_rng(4).integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    noisy = _answer(preprocess, images, {"dynamic": True, "seed": 5, "start_index": 2})
    x = uint8_to_float(images)
    np.testing.assert_array_equal(noisy, apply_dynamic_defense(x, 0.02, 0.03, 5, start_index=2))
    assert not np.array_equal(
        noisy, apply_dynamic_defense(x, PUBLISHED_SIGMA, PUBLISHED_EPS, 5, start_index=2)
    )


def test_nrp_serve_purifies_at_the_noise_level_it_was_started_with(artifacts: Path, tmp_path, python_model):
    from nrp_deploy.runtime import DynamicDefense, load_purifier
    from nrp_deploy.serving import ServeSettings, write_serve_repository

    tiny = str(artifacts / "tiny.onnx")
    settings = ServeSettings(
        model=tiny, backend="onnxruntime", precision=None, threads=1, noise_sigma=0.02, noise_eps=0.03
    )
    repo = write_serve_repository(tmp_path, settings)
    assert _nrp_settings(repo / "nrp_purifier")["noise_sigma"] == 0.02
    model = python_model(repo / "nrp_purifier")
    images = np.random.default_rng(5).integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    try:
        served = _answer(model, images, {"dynamic": True, "seed": 5, "start_index": 2})
    finally:
        model.finalize()
    with load_purifier(tiny, backend="onnxruntime", threads=1) as purifier:
        expected = purifier(images, dynamic=DynamicDefense(sigma=0.02, eps=0.03, seed=5), start_index=2)
        published = purifier(images, dynamic=DynamicDefense(seed=5), start_index=2)
    np.testing.assert_array_equal(served, expected)
    assert not np.array_equal(served, published)
