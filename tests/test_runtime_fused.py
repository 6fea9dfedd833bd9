"""How the Purifier routes work between the fused GPU path and the host path, and the torch backend on it.

The fused path itself (kernels, buffers, streams) is tested by the kernels and TensorRT suites; here a
stand-in pipeline computes the kernels' numpy reference, so the routing, chunking and noise indices of the
Purifier are checked against the host path exactly (no GPU needed). The torch backend's device entry point
is checked on the CPU for what it refuses, and on a GPU (``gpu`` marker) end to end: the fused path over
torch on CUDA equals torch's host path, and its ordering against a caller's stream holds.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from nrp_deploy.errors import BackendUnavailableError, InputError, NRPDeployError
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference
from nrp_deploy.runtime import DeviceBackend, DynamicDefense, Purifier, TileConfig, gpu_pipeline
from nrp_deploy.runtime.backends import ShapeProfile, TensorSpec
from nrp_deploy.runtime.backends.base import BackendNotActiveError


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


class FixedBatchBackend(FakeGpuBackend):
    """A backend that runs one batch size only (a static-batch engine, a CUDA-graph session)."""

    def infer(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self.profile.min[0]:
            raise InputError(f"batch {len(x)} is outside the profile {self.profile}")
        return super().infer(x)


class ProfileCheckingPipeline(FakePipeline):
    """The stand-in pipeline, refusing batches outside the backend's profile as DevicePipeline does."""

    def __call__(self, images, dynamic=None, seed=0, start_index=0):
        if len(images) != self.backend.profile.min[0]:
            raise InputError(f"batch of {len(images)} is outside the backend's profile")
        return super().__call__(images, dynamic, seed, start_index)


@pytest.mark.parametrize("fused", [True, False])
def test_a_fixed_batch_backend_takes_any_image_count(monkeypatch, fused):
    """The last chunk is padded up to the profile's batch (its last image repeated) and the padding's
    outputs dropped; each real image keeps its noise index."""
    FakePipeline.calls = []
    monkeypatch.setattr(gpu_pipeline, "DevicePipeline", ProfileCheckingPipeline)
    backend = FixedBatchBackend(ShapeProfile((2, 8, 8), (2, 32, 32), (2, 32, 32)))
    purifier = Purifier(backend, fused=fused)
    images = np.random.default_rng(7).integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8)
    dynamic = DynamicDefense(seed=5)
    got = purifier(images, dynamic=dynamic, start_index=4)
    assert got.shape == images.shape
    model = FakeGpuBackend()
    one_by_one = [
        postprocess_reference(
            model.infer(
                preprocess_reference(images[k : k + 1], "float32", dynamic.sigma, dynamic.eps, 5, 4 + k)
            )
        )
        for k in range(3)
    ]
    np.testing.assert_array_equal(got, np.concatenate(one_by_one))
    if fused:
        assert [call[1] for call in FakePipeline.calls] == [4, 6]
    x = np.random.default_rng(8).random((1, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(purifier(x), np.clip(x * 1.5 - 0.25, 0, 1), atol=1e-6)


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


# -- the torch backend as a DeviceBackend ----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from nrp_deploy.models.spec import ModelSpec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_resg.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 2}).build().state_dict(), path)
    return path


def test_torch_backend_on_the_cpu_stays_on_the_host_path(checkpoint):
    from nrp_deploy.runtime import load_purifier

    with load_purifier(checkpoint, backend="torch", device="cpu") as purifier:
        backend = purifier.backend
        assert isinstance(backend, DeviceBackend) and backend.stream == 0
        assert "fused" not in purifier.describe()
        with pytest.raises(InputError, match="needs a CUDA device"):
            backend.infer_device(0, 0, (1, 3, 8, 8), 0)
    with pytest.raises(BackendNotActiveError, match="not active"):
        backend.infer_device(0, 0, (1, 3, 8, 8), 0)
    with pytest.raises(InputError, match="'cpu' or 'cuda"):
        load_purifier(checkpoint, backend="torch", device="mps")


def test_torch_backend_on_cuda_without_a_gpu_says_why(checkpoint):
    import torch

    from nrp_deploy.runtime import load_purifier

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    with pytest.raises(BackendUnavailableError, match="sees no CUDA device"):
        load_purifier(checkpoint, backend="torch", device="cuda")


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", False), ("fp16", True)])
@pytest.mark.parametrize("dynamic", [None, DynamicDefense(seed=7)])
def test_torch_cuda_takes_the_fused_path_and_matches_its_host_path(
    checkpoint, precision, channels_last, dynamic
):
    _torch_cuda()
    from nrp_deploy.runtime import load_purifier

    options = {"channels_last": channels_last}
    with load_purifier(
        checkpoint, backend="torch", precision=precision, device="cuda", options=options
    ) as fused:
        assert fused.backend.device == "cuda:0" and fused.backend.stream != 0
        assert "fused GPU path" in fused.describe()
        host = Purifier(fused.backend, fused=False)
        for call in range(2):
            images = np.random.default_rng(call).integers(0, 256, size=(3, 32, 48, 3), dtype=np.uint8)
            diff = np.abs(fused(images, dynamic=dynamic).astype(int) - host(images, dynamic=dynamic))
            assert diff.max() <= (1 if precision == "fp32" else 2)
            assert (diff == 0).mean() > (0.995 if precision == "fp32" else 0.97)


@pytest.mark.gpu
def test_torch_cuda_device_entry_point_is_ordered_on_the_callers_stream(checkpoint):
    torch = _torch_cuda()
    from nrp_deploy.runtime import load_purifier

    with load_purifier(checkpoint, backend="torch", device="cuda", fused=False) as purifier:
        backend = purifier.backend
        x = torch.zeros((2, 3, 32, 32), device="cuda")
        out = torch.full_like(x, float("nan"))
        data = torch.rand(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(20_000_000)  # the caller's stream is busy, so a missing wait would read zeros
            x.copy_(data)
            backend.infer_device(x.data_ptr(), out.data_ptr(), tuple(x.shape), side.cuda_stream)
            result = out.clone()  # on the caller's stream: must see the output
        torch.cuda.synchronize()
        np.testing.assert_allclose(result.cpu().numpy(), backend.infer(data.cpu().numpy()), atol=1e-5)
        with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
            backend.infer_device(x.data_ptr(), out.data_ptr(), (2, 3, 32), side.cuda_stream)


@pytest.mark.gpu
def test_torch_cuda_outputs_of_another_shape_or_not_finite_are_refused(checkpoint):
    """What the host path refuses, the fused path refuses too: NaN / infinity through the postprocessing
    kernel's flag, another output shape in the device entry point (where copy_ would broadcast it)."""
    torch = _torch_cuda()
    from nrp_deploy.errors import ModelError
    from nrp_deploy.runtime import load_purifier

    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    with load_purifier(checkpoint, backend="torch", device="cuda") as purifier:
        assert "fused GPU path" in purifier.describe()
        module = purifier.backend._module
        purifier.backend._module = lambda x: module(x) / torch.zeros((), device=x.device)  # inf and NaN
        with pytest.raises(ModelError, match=r"returned NaN or infinite values for a batch of 2 32x32"):
            purifier(images)
        purifier.backend._module = lambda x: module(x)[:, :1]
        with pytest.raises(ModelError, match=r"returned shape \(2, 1, 32, 32\) for an input of shape"):
            purifier(images)
        purifier.backend._module = module
        assert purifier(images).shape == images.shape
