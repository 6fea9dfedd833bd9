"""The serving tests, run from the main suite in the serving environment (.venv-serving).

nvidia-pytriton requires numpy<2, so `nrp serve` and its tests live in their own environment, made by
scripts/setup.sh. This module exports the tiny model they serve (torch is here, not there), writes the
Triton repositories under test, and runs each module of tests/serving/ with that environment's
interpreter. Without the environment the tests skip locally and fail under CI=true, where they must run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

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
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return SERVING_PYTHON


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serving")
    torch.manual_seed(3)
    checkpoint = folder / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), checkpoint)
    export_onnx(str(checkpoint), folder / "tiny.onnx")
    return folder


@pytest.mark.parametrize("module", ["test_serve.py"])
def test_serving_suite(serving_python: Path, artifacts: Path, module: str):
    env = {**os.environ, "NRP_SERVING_TEST_DIR": str(artifacts), "PYTHONPATH": str(ROOT)}
    command = [str(serving_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/serving/{module}"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, (
        f"{module} failed in the serving environment:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    )
    assert " passed" in proc.stdout and " skipped" not in proc.stdout
