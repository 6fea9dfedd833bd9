"""Serving tests: real Triton servers on free loopback ports, run in the serving environment.

They need nvidia-pytriton (numpy<2), so they run in `.venv-serving`; tests/test_serving.py starts them
there from the main suite and hands over a tiny exported model through NRP_SERVING_TEST_DIR. Collected
only where pytriton and tritonclient import.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

collect_ignore_glob = [] if find_spec("pytriton") and find_spec("tritonclient") else ["test_*.py"]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The folder tests/test_serving.py prepared: tiny.onnx (+ .json) and exported Triton repositories."""
    folder = os.environ.get("NRP_SERVING_TEST_DIR")
    if not folder:
        pytest.fail("NRP_SERVING_TEST_DIR is not set: run these tests through tests/test_serving.py")
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_onnx(artifacts: Path) -> Path:
    return artifacts / "tiny.onnx"


@pytest.fixture(scope="session")
def in_process(tiny_onnx: Path):
    from nrp_deploy.runtime import load_purifier

    with load_purifier(tiny_onnx, threads=1) as purifier:
        yield purifier
