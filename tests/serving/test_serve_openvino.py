"""`nrp serve --backend openvino`: the served model runs on OpenVINO and answers what the in-process
OpenVINO purifier returns, byte for byte (the serving environment installs OpenVINO: scripts/setup.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from served import Served, start_serve

from nrp_deploy.runtime import DynamicDefense, load_purifier
from nrp_deploy.serving import PurifierClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def openvino_server(tmp_path_factory, tiny_onnx: Path):
    if find_spec("openvino") is None:
        pytest.fail("OpenVINO is not installed in the serving environment: run scripts/setup.sh")
    served = start_serve(
        tmp_path_factory.mktemp("serve_openvino"),
        tiny_onnx,
        "--backend",
        "openvino",
        "--precision",
        "fp32",
        "--max-pixels",
        "4096",
    )
    yield served
    served.stop()
    assert not served.shm_regions()


@pytest.fixture(scope="module")
def openvino_in_process(tiny_onnx: Path):
    with load_purifier(tiny_onnx, backend="openvino", precision="fp32", threads=1) as purifier:
        yield purifier


def test_openvino_server_output_equals_in_process_openvino_byte_for_byte(
    openvino_server: Served, openvino_in_process
):
    """Same compiled model, one thread, each request's images in one call of the same shape on both sides:
    OpenVINO's CPU plugin gives the same float output, so the uint8 images agree exactly."""
    assert openvino_in_process.backend_name == "openvino-cpu"
    rng = np.random.default_rng(21)
    for scheme in ("http", "grpc"):
        client = PurifierClient(getattr(openvino_server, scheme))
        for count, height, width in [(1, 16, 16), (2, 20, 24), (3, 33, 17)]:
            images = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
            assert np.array_equal(client.purify(images), openvino_in_process(images))
            expected = openvino_in_process(images, dynamic=DynamicDefense(seed=9), start_index=2)
            assert np.array_equal(client.purify(images, dynamic=True, seed=9, start_index=2), expected)
        client.close()


def test_openvino_server_says_it_serves_openvino(openvino_server: Served):
    url = f"{openvino_server.http}/v2/models/nrp_purifier/config"
    with urllib.request.urlopen(url, timeout=10) as reply:
        config = json.loads(reply.read())
    settings = json.loads(config["parameters"]["nrp_settings"]["string_value"])
    assert (settings["backend"], settings["precision"]) == ("openvino", "fp32")
    # each model instance logs the Purifier it opened (Purifier.describe()): the backend that really runs
    log = openvino_server.log.read_text(errors="replace")
    assert "nrp purifier: NRP_resG(in_nc=3, out_nc=3, nf=8, nb=1) from " in log, openvino_server.log_tail()
    assert "tiny.onnx on openvino-cpu (fp32, cpu)" in log, openvino_server.log_tail()


def test_serve_refuses_openvino_where_it_is_not_installed_and_says_what_to_install(tmp_path, tiny_onnx: Path):
    """An `openvino` module that fails to import, first on the path, stands in for an environment without
    OpenVINO: `nrp serve` refuses before any server starts and names the package."""
    (tmp_path / "openvino.py").write_text("raise ImportError('no OpenVINO here')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "nrp_deploy", "serve", "--model", str(tiny_onnx), "--backend", "openvino",
         "--precision", "fp32", "--http-port", "9", "--grpc-port", "9", "--metrics-port", "9"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "backend openvino is unavailable in this environment" in proc.stderr, proc.stderr
    assert "OpenVINO is not installed (no OpenVINO here); pip install 'nrp-deploy[openvino]'" in proc.stderr
    assert "tritonserver" not in proc.stderr, proc.stderr
