"""Shared test settings.

- `gpu` tests are skipped where no CUDA device is present (checked through the driver, without torch).
- Artifacts that tests export on the fly go to a per-session cache, never the user's ~/.cache, and the
  registry's models folder is an empty per-session one: what a user or a checkout keeps there (their own
  manifest, published weights) never changes what a test sees.
- ``backend="auto"`` takes its preference order (``NRP_DEPLOY_AUTO=order``), not the timed choice: which
  backend a test gets must not hang on timing noise. tests/test_runtime_auto.py sets ``timed`` to test that.
- torch runs single-threaded: test tensors are tiny, where threads cost more than they give, and CI has
  two cores.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session", autouse=True)
def _session_user_folders(tmp_path_factory):
    folders = {"NRP_DEPLOY_CACHE": "nrp-cache", "NRP_DEPLOY_MODELS_DIR": "nrp-models"}
    previous = {name: os.environ.get(name) for name in (*folders, "NRP_DEPLOY_AUTO")}
    for name, folder in folders.items():
        os.environ[name] = str(tmp_path_factory.mktemp(folder))
    os.environ["NRP_DEPLOY_AUTO"] = "order"
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: a fresh module of ``scripts/<name>.py`` (the scripts are not in the package),
    registered in ``sys.modules`` because their dataclasses look their module up while the file executes."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tf32_switches():
    """Reads and sets torch's two TF32 switches (cuDNN, cuBLAS) as a pair; restores them after the test."""
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul

    def switches(value: bool | None = None) -> tuple[bool, bool]:
        if value is not None:
            cudnn.allow_tf32 = matmul.allow_tf32 = value
        return (cudnn.allow_tf32, matmul.allow_tf32)

    saved = switches()
    yield switches
    cudnn.allow_tf32, matmul.allow_tf32 = saved


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@functools.cache
def cuda_device_count() -> int:
    try:
        from cuda.bindings import driver
    except ImportError:
        return 0
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return 0
        err, count = driver.cuDeviceGetCount()
        return count if err == driver.CUresult.CUDA_SUCCESS else 0
    except Exception:
        return 0


def pytest_collection_modifyitems(config, items):
    if cuda_device_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        # the marker itself, not ``"gpu" in item.keywords``: keywords hold every parent node's name too,
        # so a checkout in a directory called ``gpu`` would skip the whole suite
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
