"""Load the fused kernels into the device's primary context and launch them on a caller's stream.

The kernels live in the primary context, the one torch, TensorRT and ONNX Runtime use, so the device
pointers those libraries hand out can be passed straight in, and a launch on their stream orders correctly
with their work. Pointers and streams are plain integers (``tensor.data_ptr()``, ``stream.cuda_stream``,
``int(CUstream)``), so this module needs neither torch nor any array library.

Kernel choice: the fast kernels (4 pixels per thread, vector loads and stores) need 3 channels, H*W a
multiple of 4 and aligned pointers; anything else runs the generic kernels, which give the same numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from typing import Any

from nrp_deploy.errors import InputError, NRPDeployError
from nrp_deploy.kernels.compiler import cached_kernels, compile_kernels, nvrtc_version, target_for
from nrp_deploy.kernels.cuda_api import check, context_current, init_driver
from nrp_deploy.kernels.philox import seed_key

__all__ = ["FusedKernels", "compile_kernels", "nvrtc_version"]

BLOCK = 128  # threads per block: 98 blocks for one 224x224 image, enough to spread over an SM array
_MAX_GRID_Y = 65535  # images per launch (grid.y); larger batches are split into several launches
_DTYPES = ("float16", "float32")
_ITEMSIZE = {"uint8": 1, "float16": 2, "float32": 4}


class _Noise(ctypes.Structure):
    """Mirror of the kernels' ``NrpNoise`` (passed by value)."""

    _fields_ = [
        ("sigma", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("key0", ctypes.c_uint32),
        ("key1", ctypes.c_uint32),
        ("image0", ctypes.c_uint32),
    ]


def _stream_handle(stream: Any) -> int:
    """Integer CUstream from an int, a cuda-bindings CUstream, or an object with ``cuda_stream``."""
    handle = getattr(stream, "cuda_stream", stream)
    return int(handle) if handle is not None else 0


class FusedKernels:
    """The compiled kernels of one device, ready to launch (thread-safe; one instance per device suffices).

    Construction compiles for the device's architecture (or loads the cached binary), retains the primary
    context and makes it current on the calling thread; launches make it current on their thread too.
    ``fast_sincos=True`` trades the noise's sin/cos accuracy (~1e-6 absolute, as cuRAND) for speed.
    """

    def __init__(self, device_ordinal: int = 0, *, fast_sincos: bool = False) -> None:
        drv = init_driver()
        self._drv = drv
        self.device = check(drv.cuDeviceGet(device_ordinal), "cuDeviceGet")
        attr = drv.CUdevice_attribute
        self.compute_capability = tuple(
            int(check(drv.cuDeviceGetAttribute(a, self.device), "cuDeviceGetAttribute"))
            for a in (
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )
        )
        self.target = target_for(*self.compute_capability)
        self._context = check(drv.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._lock = threading.Lock()
        self._module = None
        try:
            binary = cached_kernels(self.target, fast_sincos)
            with self._current():
                self._module = check(drv.cuModuleLoadData(binary), "cuModuleLoadData")
        except BaseException:
            self.close()
            raise
        self._functions: dict[str, Any] = {}

    # -- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Unload the module and release the primary context (the context lives on while others hold it)."""
        if self._context is None:
            return
        if self._module is not None:
            with self._current():
                check(self._drv.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None
        check(self._drv.cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")
        self._context = None

    def __enter__(self) -> FusedKernels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public launches ------------------------------------------------------------------------------

    def preprocess(
        self,
        src_ptr: int,
        dst_ptr: int,
        n: int,
        h: int,
        w: int,
        out_dtype: str = "float16",
        sigma: float = 0.0,
        eps: float = 0.0,
        seed: int = 0,
        start_index: int = 0,
        stream: Any = 0,
        *,
        src_dtype: str = "uint8",
        channels: int = 3,
    ) -> None:
        """Enqueue src -> dst: uint8 NHWC (``src_dtype="uint8"``) or float32 NCHW -> ``out_dtype`` NCHW.

        With sigma > 0 the dynamic defence's noise (keyed by seed and image ``start_index + i``) is added and
        projected to the eps-ball around the input; the result is always clamped to [0, 1]. Asynchronous
        on ``stream``: the buffers must stay alive until the stream has run the kernel.
        """
        if out_dtype not in _DTYPES or src_dtype not in ("uint8", "float32"):
            raise InputError(
                f"src_dtype must be uint8/float32 and out_dtype float16/float32, got {src_dtype}, {out_dtype}"
            )
        if not (math.isfinite(sigma) and sigma >= 0 and math.isfinite(eps) and eps >= 0):
            raise InputError(f"sigma and eps must be finite and >= 0, got sigma={sigma}, eps={eps}")
        hw = _check_shape(n, channels, h, w)
        if not 0 <= start_index <= (1 << 32) - n:
            raise InputError(f"start_index must be in [0, 2**32 - n], got {start_index}")
        key0, key1 = seed_key(seed)
        suffix = ("_f16" if out_dtype == "float16" else "_f32") + ("_noise" if sigma > 0 else "")
        in_image = channels * hw * _ITEMSIZE[src_dtype]
        out_image = channels * hw * _ITEMSIZE[out_dtype]
        out_align = 4 * _ITEMSIZE[out_dtype]
        for first, count in _batches(n):
            src = src_ptr + first * in_image
            dst = dst_ptr + first * out_image
            noise = _Noise(sigma, eps, key0, key1, start_index + first)
            if (
                src_dtype == "uint8"
                and channels == 3
                and hw % 4 == 0
                and src % 4 == 0
                and dst % out_align == 0
            ):
                args = [ctypes.c_uint64(src), ctypes.c_uint64(dst), ctypes.c_uint32(hw), noise]
                self._launch("nrp_pre_u8x4" + suffix, hw // 4, count, args, stream)
            elif src_dtype == "uint8":
                args = [
                    ctypes.c_uint64(src),
                    ctypes.c_uint64(dst),
                    ctypes.c_uint32(channels),
                    ctypes.c_uint32(hw),
                    noise,
                ]
                self._launch("nrp_pre_u8" + suffix, _groups(channels * hw), count, args, stream)
            else:
                chw = channels * hw
                vec = chw % 4 == 0 and src % 16 == 0 and dst % out_align == 0
                args = [
                    ctypes.c_uint64(src),
                    ctypes.c_uint64(dst),
                    ctypes.c_uint32(chw),
                    ctypes.c_int(vec),
                    noise,
                ]
                self._launch("nrp_pre_f32" + suffix, _groups(chw), count, args, stream)

    def postprocess(
        self,
        src_ptr: int,
        dst_ptr: int,
        n: int,
        h: int,
        w: int,
        src_dtype: str = "float16",
        stream: Any = 0,
        *,
        channels: int = 3,
        nonfinite_ptr: int = 0,
    ) -> None:
        """Enqueue float16/float32 NCHW -> uint8 NHWC: clamp to [0, 1], * 255, round half to even.

        ``nonfinite_ptr``: the device address of a uint32 that the kernel sets to 1 if any input value is
        NaN or infinite (which the clamp would otherwise write as black or white), and leaves alone
        otherwise; the caller zeroes it first. 0: no check.
        """
        if src_dtype not in _DTYPES:
            raise InputError(f"src_dtype must be float16 or float32, got {src_dtype!r}")
        hw = _check_shape(n, channels, h, w)
        prefix = "nrp_post_f16" if src_dtype == "float16" else "nrp_post_f32"
        in_image = channels * hw * _ITEMSIZE[src_dtype]
        flag = ctypes.c_uint64(nonfinite_ptr)
        for first, count in _batches(n):
            src = src_ptr + first * in_image
            dst = dst_ptr + first * channels * hw
            if channels == 3 and hw % 4 == 0 and src % (4 * _ITEMSIZE[src_dtype]) == 0 and dst % 4 == 0:
                args = [ctypes.c_uint64(src), ctypes.c_uint64(dst), ctypes.c_uint32(hw), flag]
                self._launch(prefix + "_u8x4", hw // 4, count, args, stream)
            else:
                args = [
                    ctypes.c_uint64(src),
                    ctypes.c_uint64(dst),
                    ctypes.c_uint32(channels),
                    ctypes.c_uint32(hw),
                    flag,
                ]
                self._launch(prefix + "_u8", hw, count, args, stream)

    # -- internals ------------------------------------------------------------------------------------

    def _current(self) -> contextlib.AbstractContextManager[None]:
        """The kernels' context current for the block; the calling thread's own is restored after."""
        return context_current(self._drv, self._context)

    def _function(self, name: str) -> Any:
        with self._lock:
            fn = self._functions.get(name)
            if fn is None:
                fn = check(self._drv.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction")
                self._functions[name] = fn
            return fn

    def _launch(self, name: str, threads: int, images: int, args: list[Any], stream: Any) -> None:
        if self._module is None:
            raise NRPDeployError("FusedKernels was closed; create a new one")
        # cuLaunchKernel takes an array of pointers to the argument values; ``args`` keeps them alive.
        pointers = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
        blocks = -(-threads // BLOCK)
        with self._current():
            fn = self._function(name)
            check(
                self._drv.cuLaunchKernel(
                    fn,
                    blocks,
                    images,
                    1,
                    BLOCK,
                    1,
                    1,
                    0,
                    _stream_handle(stream),
                    ctypes.addressof(pointers),
                    0,
                ),
                f"cuLaunchKernel({name})",
            )


def _check_shape(n: int, channels: int, h: int, w: int) -> int:
    """Validate the batch geometry; return H*W."""
    if min(n, channels, h, w) < 1:
        raise InputError(f"n, channels, h and w must be >= 1, got {n}, {channels}, {h}, {w}")
    if channels * h * w >= 1 << 31:
        raise InputError(f"one image must have fewer than 2**31 elements, got {channels}x{h}x{w}")
    return h * w


def _groups(elements: int) -> int:
    return -(-elements // 4)


def _batches(n: int) -> list[tuple[int, int]]:
    """(first image, count) of each launch: grid.y holds at most 65535 images."""
    return [(first, min(_MAX_GRID_Y, n - first)) for first in range(0, n, _MAX_GRID_Y)]
