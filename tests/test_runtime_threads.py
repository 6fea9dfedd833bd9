"""One Purifier called from eight threads gives exactly the results of sequential calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from nrp_deploy.artifacts.cache import CACHE_ENV
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import DynamicDefense, load_purifier

THREADS, CALLS = 8, 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("threads") / "model.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_eight_threads_match_sequential_calls(backend, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    purifier = load_purifier(checkpoint, backend=backend, threads=1, tile=24, overlap=4)
    rng = np.random.default_rng(5)
    # Mixed sizes (some tiled), seeded dynamic defence on every other call, per-call start indices.
    jobs = []
    for k in range(THREADS * CALLS):
        size = (16, 20) if k % 3 else (40, 30)
        images = rng.integers(0, 256, size=(2, *size, 3), dtype=np.uint8)
        dynamic = DynamicDefense(seed=k) if k % 2 else None
        jobs.append((images, dynamic, k))

    def run(job):
        images, dynamic, k = job
        return purifier(images, dynamic=dynamic, start_index=k)

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        concurrent = list(pool.map(run, jobs))
    for expected, got in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(got, expected)
