"""Kernel launches through ``FusedKernels`` equal the numpy reference, on a GPU and, without one, emulated.

Two platforms run the same tests:
- ``gpu`` (marked ``gpu``, skipped without a CUDA device): the NVRTC-compiled kernels on the device, memory
  handled with cuda.bindings directly (no torch).
- ``emulated``: the very same nrp_kernels.cu built for the host with g++ behind a small CUDA shim, and a fake
  ``cuda.bindings.driver`` whose cuLaunchKernel runs the grid serially. This exercises, on any CPU, the
  loader's kernel choice and argument marshalling (including the by-value NrpNoise struct), the kernels'
  index maths and their host-side element maths; only the device-only instructions (PTX cvt, PRMT,
  intrinsics) need the GPU run.

Outputs are poisoned before every launch so an element a kernel fails to write cannot pass by accident.
Without noise results must be bit-exact; with noise, float32 within 2e-6 (device log/sin/cos differ from
numpy's by a few ulps; with fast_sincos by ~1e-6 before the sigma scaling) and float16 within one
half-precision ulp, almost always exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pytest

from nrp_deploy.kernels import cuda_mem, loader
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference

SEED = 0x5EED_1234_ABCD_0042
SIGMA, EPS = 0.05, 16 / 255

# Host stand-ins for the CUDA built-ins the kernels use; then the kernels themselves, and one emu_<name>
# per kernel that unpacks cuLaunchKernel's argument-pointer array and runs the grid thread by thread.
SHIM = r"""
#include <algorithm>
struct nrp_dim3 { unsigned x, y, z; };
static nrp_dim3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
struct float4 { float x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
template <class T> inline T __ldg(const T* p) { return *p; }
using std::min;
#include "nrp_kernels.cu"

#define GRID for (blockIdx.y = 0; blockIdx.y < gy; ++blockIdx.y) \
    for (blockIdx.x = 0; blockIdx.x < gx; ++blockIdx.x) \
    for (blockDim.x = bx, threadIdx.x = 0; threadIdx.x < bx; ++threadIdx.x)
#define A(i, T) (*static_cast<T*>(a[i]))
#define EMU(NAME, CALL) extern "C" void emu_##NAME(void** a, unsigned gx, unsigned gy, unsigned bx) { GRID CALL; }
#define PRE(NAME, T) \
    EMU(nrp_pre_u8x4_##NAME, nrp_pre_u8x4_##NAME(A(0, const unsigned char*), A(1, T*), A(2, nrp_u32), A(3, NrpNoise))) \
    EMU(nrp_pre_u8_##NAME, nrp_pre_u8_##NAME(A(0, const unsigned char*), A(1, T*), A(2, nrp_u32), A(3, nrp_u32), \
                                             A(4, NrpNoise))) \
    EMU(nrp_pre_f32_##NAME, nrp_pre_f32_##NAME(A(0, const float*), A(1, T*), A(2, nrp_u32), A(3, int), A(4, NrpNoise)))
PRE(f16, unsigned short)
PRE(f32, float)
PRE(f16_noise, unsigned short)
PRE(f32_noise, float)
#define POST(SRC, T) \
    EMU(nrp_post_##SRC##_u8x4, nrp_post_##SRC##_u8x4(A(0, const T*), A(1, unsigned char*), A(2, nrp_u32), \
                                                     A(3, nrp_u32*))) \
    EMU(nrp_post_##SRC##_u8, nrp_post_##SRC##_u8(A(0, const T*), A(1, unsigned char*), A(2, nrp_u32), A(3, nrp_u32), \
                                                 A(4, nrp_u32*)))
POST(f16, unsigned short)
POST(f32, float)
"""


class FakeDriver:
    """Just enough of ``cuda.bindings.driver`` for FusedKernels; launches run the host-built kernels."""

    class CUdevice_attribute:  # named like cuda.bindings.driver's enum
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.current = 0
        self.pushed: list[int] = []  # the contexts below the current one on the (one thread's) stack
        self.launched: list[str] = []
        self.launch_contexts: set[int] = set()  # the contexts current at launches

    def cuDeviceGet(self, ordinal):
        return 0, ordinal

    def cuDeviceGetAttribute(self, attr, device):
        return 0, 9 if attr == 75 else 0

    def cuDevicePrimaryCtxRetain(self, device):
        return 0, 4242

    def cuCtxGetCurrent(self):
        return 0, self.current

    def cuCtxSetCurrent(self, ctx):
        self.current = int(ctx)
        return (0,)

    def cuCtxPushCurrent(self, ctx):
        self.pushed.append(self.current)
        self.current = int(ctx)
        return (0,)

    def cuCtxPopCurrent(self):
        popped, self.current = self.current, self.pushed.pop()
        return 0, popped

    def cuModuleLoadData(self, image):
        return 0, 1

    def cuModuleGetFunction(self, module, name):
        return 0, (name.decode(), getattr(self.lib, "emu_" + name.decode()))

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        assert (gz, by, bz, shared, extra) == (1, 1, 1, 0, 0) and gy <= 65535
        name, emu = fn
        self.launched.append(name)
        self.launch_contexts.add(self.current)
        emu(ctypes.c_void_p(params), ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(bx))
        return (0,)

    def cuModuleUnload(self, module):
        return (0,)

    def cuDevicePrimaryCtxRelease(self, device):
        return (0,)


class HostBuffer:
    """Plain host memory standing in for device memory on the emulated platform."""

    def __init__(self, nbytes: int) -> None:
        self._raw = np.zeros(nbytes + 128, dtype=np.uint8)
        self._start = -self._raw.ctypes.data % 64  # 64-byte aligned like a device allocation
        self.base = self._raw.ctypes.data + self._start

    def _view(self, offset: int, nbytes: int) -> np.ndarray:
        return self._raw[self._start + offset : self._start + offset + nbytes]

    def upload(self, host: np.ndarray, offset: int = 0) -> int:
        self._view(offset, host.nbytes)[:] = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        return self.base + offset

    def download(self, like: np.ndarray, offset: int = 0) -> np.ndarray:
        return self._view(offset, like.nbytes).copy().view(like.dtype).reshape(like.shape)

    def poison(self, byte: int = 0xFF) -> None:
        self._raw[:] = byte

    def free(self) -> None:
        pass


class DeviceBuffer:
    """A cuMemAlloc'd buffer with slack, so tests can offset pointers to break alignment."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import driver

        from nrp_deploy.kernels.cuda_api import check

        self._drv, self._check = driver, check
        self.nbytes = nbytes + 64
        self.base = int(check(driver.cuMemAlloc(self.nbytes), "cuMemAlloc"))

    def upload(self, host: np.ndarray, offset: int = 0) -> int:
        host = np.ascontiguousarray(host)
        self._check(self._drv.cuMemcpyHtoD(self.base + offset, host.ctypes.data, host.nbytes), "cuMemcpyHtoD")
        return self.base + offset

    def download(self, like: np.ndarray, offset: int = 0) -> np.ndarray:
        out = np.empty_like(like)
        self._check(self._drv.cuCtxSynchronize(), "cuCtxSynchronize")
        self._check(self._drv.cuMemcpyDtoH(out.ctypes.data, self.base + offset, out.nbytes), "cuMemcpyDtoH")
        return out

    def poison(self, byte: int = 0xFF) -> None:
        self._check(self._drv.cuMemsetD8(self.base, byte, self.nbytes), "cuMemsetD8")

    def free(self) -> None:
        self._check(self._drv.cuMemFree(self.base), "cuMemFree")


@dataclass
class Platform:
    kernels: Any
    buffer_type: type
    fake: FakeDriver | None = None
    buffers: list[Any] = field(default_factory=list)

    def buffer(self, nbytes: int) -> Any:
        self.buffers.append(self.buffer_type(nbytes))
        return self.buffers[-1]

    def last_kernel(self) -> str | None:
        return self.fake.launched[-1] if self.fake else None


def _emulated_kernels(tmp_path) -> tuple[Any, FakeDriver]:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    (tmp_path / "emu.cpp").write_text(SHIM)
    kernel_dir = resources.files("nrp_deploy.kernels")
    cmd = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing"]
    cmd += [f"-I{kernel_dir}", str(tmp_path / "emu.cpp"), "-o", str(tmp_path / "emu.so")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fake = FakeDriver(ctypes.CDLL(str(tmp_path / "emu.so")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "init_driver", lambda: fake)
        mp.setattr(loader, "target_for", lambda major, minor: f"sm_{major}{minor}")
        mp.setattr(loader, "cached_kernels", lambda target, fast_sincos: b"")
        return loader.FusedKernels(0), fake


GPU = pytest.mark.gpu


@pytest.fixture(
    scope="module", params=["emulated", pytest.param("gpu", marks=GPU), pytest.param("gpu-fast", marks=GPU)]
)
def platform(request, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        if request.param == "emulated":
            kernels, fake = _emulated_kernels(tmp_path_factory.mktemp("emu"))
            plat = Platform(kernels, HostBuffer, fake)
        else:
            # the test's own buffers are allocated and copied in the primary context, on this thread (the
            # kernels make it current only for their own calls)
            stack.enter_context(cuda_mem.current_device(0))
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("NRP_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
                plat = Platform(loader.FusedKernels(0, fast_sincos=request.param == "gpu-fast"), DeviceBuffer)
        yield plat
        for buf in plat.buffers:
            buf.free()
        plat.kernels.close()


def _assert_matches(got: np.ndarray, ref: np.ndarray, noisy: bool) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.all(np.isfinite(got)), "unwritten (poisoned) elements"
    if not noisy:
        np.testing.assert_array_equal(got, ref)
        return
    diff = np.abs(got.astype(np.float32) - ref.astype(np.float32))
    if got.dtype == np.float32:
        assert diff.max() <= 2e-6, diff.max()
    else:
        assert diff.max() <= 2.0**-11 + 1e-7, diff.max()  # one float16 ulp in [0.5, 1)
        assert np.mean(diff > 0) < 1e-3


def _run_pre(plat: Platform, src: np.ndarray, out_dtype: str, noisy: bool, misalign: bool, start: int = 0):
    nchw = (src.shape[0], src.shape[3], src.shape[1], src.shape[2]) if src.dtype == np.uint8 else src.shape
    sigma = SIGMA if noisy else 0.0
    ref = preprocess_reference(src, out_dtype, sigma, EPS, SEED, start)
    sbuf, dbuf = plat.buffer(src.nbytes), plat.buffer(ref.nbytes)
    src_ptr = sbuf.upload(src, src.itemsize * 4 + (1 if misalign else 0))
    dst_off = ref.itemsize if misalign else 0
    dbuf.poison()
    plat.kernels.preprocess(
        src_ptr, dbuf.base + dst_off, nchw[0], nchw[2], nchw[3], out_dtype, sigma, EPS, SEED, start,
        src_dtype=str(src.dtype), channels=nchw[1],
    )  # fmt: skip
    return dbuf.download(ref, dst_off), ref


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "noise"])
@pytest.mark.parametrize(
    ("shape", "misalign", "kernel"),
    [
        ((4, 224, 224, 3), False, "nrp_pre_u8x4"),
        ((3, 64, 48, 3), True, "nrp_pre_u8_"),
        ((2, 37, 53, 3), False, "nrp_pre_u8_"),
        ((2, 9, 7, 1), False, "nrp_pre_u8_"),
    ],
    ids=["fast", "misaligned", "odd-size", "one-channel"],
)
def test_preprocess_uint8_matches_reference(platform, shape, misalign, kernel, noisy, out_dtype):
    src = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    src.reshape(-1)[:6] = [0, 255, 0, 255, 128, 1]
    got, ref = _run_pre(platform, src, out_dtype, noisy, misalign, start=7)
    _assert_matches(got, ref, noisy)
    if platform.last_kernel():
        assert platform.last_kernel().startswith(kernel)
        assert platform.last_kernel().endswith("_noise") == noisy


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "noise"])
@pytest.mark.parametrize(
    ("shape", "misalign"),
    [((3, 3, 64, 64), False), ((2, 3, 64, 64), True), ((2, 3, 5, 7), False)],
    ids=["vector", "misaligned", "odd-size"],
)
def test_preprocess_float_matches_reference(platform, shape, misalign, noisy, out_dtype):
    src = np.random.default_rng(sum(shape)).uniform(-0.1, 1.1, size=shape).astype(np.float32)
    got, ref = _run_pre(platform, src, out_dtype, noisy, misalign)
    _assert_matches(got, ref, noisy)


def test_chunked_launches_equal_one_launch(platform):
    src = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    per_image = 3 * 32 * 32
    sbuf, whole, parts = (
        platform.buffer(src.nbytes),
        platform.buffer(4 * src.size),
        platform.buffer(4 * src.size),
    )
    sbuf.upload(src)
    platform.kernels.preprocess(
        sbuf.base, whole.base, 5, 32, 32, "float32", SIGMA, EPS, SEED, start_index=100
    )
    for first, count in [(0, 2), (2, 3)]:
        platform.kernels.preprocess(
            sbuf.base + first * per_image, parts.base + 4 * first * per_image, count, 32, 32, "float32",
            SIGMA, EPS, SEED, start_index=100 + first,
        )  # fmt: skip
    like = np.empty((5, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(whole.download(like), parts.download(like))


@pytest.mark.parametrize("src_dtype", ["float16", "float32"])
@pytest.mark.parametrize(
    ("shape", "misalign", "kernel"),
    [
        ((4, 3, 224, 224), False, "_u8x4"),
        ((2, 3, 32, 32), True, "_u8"),
        ((2, 3, 7, 9), False, "_u8"),
        ((1, 2, 8, 8), False, "_u8"),
    ],
    ids=["fast", "misaligned", "odd-size", "two-channel"],
)
def test_postprocess_matches_numpy(platform, shape, misalign, kernel, src_dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)
    ties = (np.arange(512, dtype=np.float32) / np.float32(2)) / np.float32(255)  # k + 0.5 after * 255
    x.reshape(-1)[: min(512, x.size)] = ties[: x.size]
    x = x.astype(src_dtype)
    ref = postprocess_reference(x)
    sbuf, dbuf = platform.buffer(x.nbytes), platform.buffer(ref.nbytes)
    src_ptr = sbuf.upload(x, x.itemsize if misalign else 0)
    dst_off = 1 if misalign else 0
    for poison in (0x00, 0xFF):  # every byte value is a valid output: two poisons catch unwritten ones
        dbuf.poison(poison)
        platform.kernels.postprocess(
            src_ptr, dbuf.base + dst_off, shape[0], shape[2], shape[3], src_dtype, channels=shape[1]
        )
        np.testing.assert_array_equal(dbuf.download(ref, dst_off), ref)
    if platform.last_kernel():
        assert platform.last_kernel().endswith(kernel)


@pytest.mark.parametrize("src_dtype", ["float16", "float32"])
@pytest.mark.parametrize(("shape", "kernel"), [((2, 3, 8, 8), "_u8x4"), ((2, 3, 7, 9), "_u8")])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_postprocess_reports_nonfinite_values(platform, shape, kernel, src_dtype, bad):
    """The flag is left alone for finite outputs and set by any NaN or infinity, wherever it is."""
    x = np.random.default_rng(3).uniform(-0.2, 1.2, size=shape).astype(src_dtype)
    if bad is not None:
        x[-1, -1, -1, -1] = bad  # the last element: the last thread of the last image
    sbuf, dbuf, flag = platform.buffer(x.nbytes), platform.buffer(x.size), platform.buffer(4)
    for before in (0, 7):
        flag.upload(np.array([before], np.uint32))
        platform.kernels.postprocess(
            sbuf.upload(x), dbuf.base, shape[0], shape[2], shape[3], src_dtype, nonfinite_ptr=flag.base
        )
        assert flag.download(np.empty(1, np.uint32))[0] == (before if bad is None else 1)
        if platform.last_kernel():
            assert platform.last_kernel().endswith(kernel)
    if bad is None:
        np.testing.assert_array_equal(dbuf.download(postprocess_reference(x)), postprocess_reference(x))


def test_batches_beyond_grid_y_are_split(platform, monkeypatch):
    monkeypatch.setattr(loader, "_MAX_GRID_Y", 2)  # 5 images -> launches of 2, 2 and 1
    src = np.random.default_rng(8).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    got, ref = _run_pre(platform, src, "float32", noisy=True, misalign=False, start=3)
    _assert_matches(got, ref, noisy=True)


def test_launches_leave_the_callers_current_context_alone(platform):
    """The kernels run in their device's primary context and restore whatever the calling thread had
    current (torch's or CuPy's device), rather than leaving theirs current."""
    if platform.fake is None:
        pytest.skip("the emulated driver records the context of each launch")
    src = np.random.default_rng(5).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    sbuf, dbuf = platform.buffer(src.nbytes), platform.buffer(4 * src.size)
    platform.fake.current = 55  # another device's context, current on this thread
    platform.fake.launch_contexts.clear()
    platform.kernels.preprocess(sbuf.upload(src), dbuf.base, 1, 8, 8, "float32")
    assert platform.fake.launch_contexts == {4242} and platform.fake.current == 55
    platform.fake.current = 0


@pytest.mark.gpu
def test_launch_on_a_stream_from_another_thread(platform):
    if platform.fake is not None:
        pytest.skip("streams and threads need the real driver")
    from cuda.bindings import driver

    from nrp_deploy.kernels.cuda_api import check

    src = np.random.default_rng(4).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    ref = preprocess_reference(src, "float16")
    sbuf, dbuf = platform.buffer(src.nbytes), platform.buffer(ref.nbytes)
    sbuf.upload(src)
    dbuf.poison()
    stream = check(driver.cuStreamCreate(0), "cuStreamCreate")
    errors: list[BaseException] = []

    def work() -> None:
        try:  # a fresh thread has no current context: the launch makes the primary one current, then not
            platform.kernels.preprocess(sbuf.base, dbuf.base, 2, 16, 16, "float16", stream=int(stream))
            assert int(check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")) == 0
            with cuda_mem.current_device(0):
                check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    check(driver.cuStreamDestroy(stream), "cuStreamDestroy")
    assert not errors, errors
    np.testing.assert_array_equal(dbuf.download(ref), ref)
