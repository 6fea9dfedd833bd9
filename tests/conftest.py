"""Shared test settings.

- `gpu` tests are skipped where no CUDA device is present (checked through the driver, without torch).
- Artifacts that tests export on the fly go to a per-session cache, never the user's ~/.cache.
- torch runs single-threaded: test tensors are tiny, where threads cost more than they give, and CI has
  two cores.
"""

from __future__ import annotations

import functools
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_artifact_cache(tmp_path_factory):
    previous = os.environ.get("NRP_DEPLOY_CACHE")
    os.environ["NRP_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("nrp-cache"))
    yield
    if previous is None:
        os.environ.pop("NRP_DEPLOY_CACHE", None)
    else:
        os.environ["NRP_DEPLOY_CACHE"] = previous


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
