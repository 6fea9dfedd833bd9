"""How the Purifier routes work between the fused GPU path and the host path (no GPU needed).

The fused path itself (kernels, buffers, streams) is tested by the kernels and TensorRT suites; here a
stand-in pipeline computes the kernels' numpy reference, so the routing, chunking and noise indices of the
Purifier are checked against the host path exactly.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference
from nrp_deploy.runtime import DeviceBackend, DynamicDefense, Purifier, TileConfig, gpu_pipeline
from nrp_deploy.runtime.backends import ShapeProfile, TensorSpec


class FakeGpuBackend:
    """A DeviceBackend-shaped backend on 'cuda:0' whose model is a fixed affine map (computed on the host)."""

    name, device, precision, spec, thread_safe, stream = "fake-gpu", "cuda:0", "fp32", None, True, 0
    input_spec = TensorSpec("input", "float32", (-1, 3, -1, -1))
    output_spec = TensorSpec("output", "float32", (-1, 3, -1, -1))

    def __init__(self, profile: ShapeProfile | None = None) -> None:
        self.profile = profile

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x * np.float32(1.5) - np.float32(0.25)

    def infer_device(self, in_ptr, out_ptr, shape, stream) -> None:
        raise AssertionError("the stand-in pipeline never touches device memory")


class FakePipeline:
    """Stands in for DevicePipeline: the kernels' numpy reference around the backend's model."""

    calls: ClassVar[list[tuple[tuple[int, ...], int]]] = []

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, images, dynamic=None, seed=0, start_index=0):
        FakePipeline.calls.append((images.shape, start_index))
        sigma, eps = (dynamic.sigma, dynamic.eps) if dynamic else (0.0, 0.0)
        x = preprocess_reference(images, "float32", sigma, eps, seed, start_index)
        return postprocess_reference(self.backend.infer(x))

    def close(self) -> None: ...


@pytest.fixture()
def fake_pipeline(monkeypatch):
    FakePipeline.calls = []
    monkeypatch.setattr(gpu_pipeline, "DevicePipeline", FakePipeline)
    return FakePipeline


def test_fake_backend_is_a_device_backend():
    assert isinstance(FakeGpuBackend(), DeviceBackend)


def test_uint8_batches_take_the_fused_path_in_chunks_with_their_noise_indices(fake_pipeline):
    backend = FakeGpuBackend(ShapeProfile((1, 8, 8), (2, 32, 32), (2, 64, 64)))
    fused, host = Purifier(backend), Purifier(backend, fused=False)
    assert "fused GPU path" in fused.describe() and "fused" not in host.describe()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 20, 24, 3), dtype=np.uint8)
    dynamic = DynamicDefense(seed=42)
    got = fused(images, dynamic=dynamic, start_index=10)
    assert fake_pipeline.calls == [((2, 20, 24, 3), 10), ((2, 20, 24, 3), 12), ((1, 20, 24, 3), 14)]
    np.testing.assert_array_equal(got, host(images, dynamic=dynamic, start_index=10))


def test_float_input_and_tiled_images_take_the_host_path(fake_pipeline):
    purifier = Purifier(FakeGpuBackend(), tile=TileConfig(32, overlap=4))
    x = np.random.default_rng(1).random((1, 3, 20, 20), dtype=np.float32)
    np.testing.assert_allclose(purifier(x), np.clip(x * 1.5 - 0.25, 0, 1), atol=1e-6)
    big = np.random.default_rng(2).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    purifier(big)
    assert fake_pipeline.calls == []
    purifier(big[:30, :30])
    assert fake_pipeline.calls == [((1, 30, 30, 3), 0)]


def test_lists_of_mixed_sizes_use_consecutive_runs_when_noisy(fake_pipeline):
    backend = FakeGpuBackend()
    fused, host = Purifier(backend), Purifier(backend, fused=False)
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8) for _ in range(2))
    c = rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    images = [a, b, c, a]
    dynamic = DynamicDefense(seed=1)
    got = fused(images, dynamic=dynamic)
    assert sorted(fake_pipeline.calls, key=lambda call: call[1]) == [
        ((2, 12, 16, 3), 0),
        ((1, 10, 10, 3), 2),
        ((1, 12, 16, 3), 3),
    ]
    for g, h in zip(got, host(images, dynamic=dynamic), strict=True):
        np.testing.assert_array_equal(g, h)
    fake_pipeline.calls.clear()
    fused(images)
    assert sorted(call[0] for call in fake_pipeline.calls) == [(1, 10, 10, 3), (3, 12, 16, 3)]


def test_without_cuda_the_fused_path_falls_back_or_refuses(caplog):
    with caplog.at_level("WARNING", logger="nrp_deploy.runtime"):
        purifier = Purifier(FakeGpuBackend())
    if "fused GPU path unavailable" not in caplog.text:
        pytest.skip("a CUDA device and the kernels are present here: no fallback to observe")
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert purifier(image).shape == (8, 8, 3)
    with pytest.raises(NRPDeployError):
        Purifier(FakeGpuBackend(), fused=True)
    with pytest.raises(InputError, match="needs a CUDA device backend"):
        Purifier(_CpuBackend(), fused=True)


class _CpuBackend(FakeGpuBackend):
    device = "cpu"
