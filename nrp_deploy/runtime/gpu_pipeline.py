"""The fused GPU path: uint8 images in pinned memory -> fused kernels -> engine -> fused kernels -> uint8 out.

What the host path does in numpy (uint8 -> float, the dynamic defence's noise, projection and clamps; then
clamp, *255, round, uint8) runs here as two NVRTC kernels on the device (``kernels.FusedKernels``): the
preprocessing kernel writes straight into the engine's input buffer, in the engine's input dtype (float16
for an FP16 engine with FP16 I/O), and the postprocessing kernel reads the engine's output buffer. Only
uint8 crosses the bus (a quarter of float32), through pinned buffers, and everything is enqueued on the
pipeline's own stream and waited for once. Any ``DeviceBackend`` serves: the native TensorRT backend
(which replays a CUDA graph per binding), ONNX Runtime's CUDA execution provider through I/O binding, and
the torch backend on CUDA.

The stream is the pipeline's own, never the backend's: a backend may be capturing a CUDA graph on its
stream for another thread's call, and everything enqueued on a capturing stream, from any thread, is
recorded into that graph instead of being run. ``infer_device`` orders the backend's work after the
pipeline's and the pipeline's after it through events, so nothing waits on the host in between.

The model's output is checked as on the host path, without copying it back: the postprocessing kernel
sets a 4-byte flag when it meets NaN or infinity (which its clamp would write as black or white pixels),
and that flag travels with the uint8 result, so a call refuses non-finite outputs (``ModelError``) for
two extra 4-byte copies. The output's shape is fixed by the buffers, and another one is refused where the
model runs: TensorRT's when the buffers are bound, ONNX Runtime's by the run itself (a bound output of
another shape), the torch backend's before it copies the output.

Buffers are allocated once per (batch, height, width) and reused; the least recently used shapes beyond
``max_shapes`` are freed. The noise keys are the host path's (seed, image index), so a seeded GPU run
draws the numpy reference's Philox words bit for bit; the normals made from them agree within 2e-6 (one
unit for a float16 engine input), not exactly, since the GPU's log/sin/cos are not numpy's float32 ones,
which themselves differ between CPUs. Calls are serialised by a lock: the buffers of a shape are shared.
Each call pushes the device's primary context and pops it after, leaving the caller's current context
alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from nrp_deploy.errors import InputError, ModelError
from nrp_deploy.runtime.backends.base import DeviceBackend
from nrp_deploy.runtime.dynamic import DynamicDefense

CHANNELS = 3
MAX_SHAPES = 4


@dataclass
class _Slot:
    """The buffers of one batch shape."""

    host_in: Any  # pinned uint8 NHWC
    host_out: Any  # pinned uint8 NHWC
    dev_images: Any  # uint8 NHWC
    dev_x: Any  # engine input, NCHW in its dtype
    dev_y: Any  # engine output, NCHW in its dtype
    dev_out: Any  # uint8 NHWC
    host_flag: Any  # pinned uint32: the postprocessing kernel's non-finite flag, zeroed before each call
    dev_flag: Any

    def close(self) -> None:
        for buffer in fields(self):
            getattr(self, buffer.name).close()


class DevicePipeline:
    """Purify uint8 NHWC batches on the GPU through an active ``DeviceBackend``; see the module docstring.

    ``kernels`` defaults to the fused kernels compiled for the backend's device, which ``close()`` then
    unloads; kernels passed in stay the caller's. The pipeline enqueues on a stream of its own (see the
    module docstring), which the backend orders against.
    """

    def __init__(
        self, backend: DeviceBackend, kernels: Any | None = None, max_shapes: int = MAX_SHAPES
    ) -> None:
        from nrp_deploy.kernels.cuda_mem import PrimaryContext, Stream

        if not isinstance(backend, DeviceBackend) or not backend.device.startswith("cuda"):
            raise InputError(
                f"the GPU path needs a CUDA device backend, not {backend.name} on {backend.device}"
            )
        self.backend = backend
        self.ordinal = int(backend.device.partition(":")[2] or 0)
        self._cuda = PrimaryContext(self.ordinal)
        self.in_dtype = backend.input_spec.dtype
        self.out_dtype = backend.output_spec.dtype
        self._own_kernels = None
        try:  # on any failure, release what was taken so far: nothing else would (no finalizer)
            for dtype in (self.in_dtype, self.out_dtype):
                if dtype not in ("float16", "float32"):
                    raise InputError(f"the fused kernels read and write float16 or float32, not {dtype}")
            if kernels is None:
                from nrp_deploy.kernels import FusedKernels

                kernels = self._own_kernels = FusedKernels(self.ordinal)
            with self._cuda.current():
                self._stream = Stream()
        except BaseException:
            if self._own_kernels is not None:
                self._own_kernels.close()
            self._cuda.close()
            raise
        self.kernels = kernels
        self.stream = self._stream.handle
        self.max_shapes = max_shapes
        self._slots: OrderedDict[tuple[int, int, int], _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(
        self, images: np.ndarray, dynamic: DynamicDefense | None = None, seed: int = 0, start_index: int = 0
    ) -> np.ndarray:
        """Purified copy of a uint8 NHWC batch (3 channels), optionally through the dynamic defence.

        The batch must fit the backend's shape profile, if it has one (the Purifier tiles and splits
        anything else on the host path). ``seed`` keys the noise when ``dynamic`` is given.
        """
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != CHANNELS:
            raise InputError(
                f"the GPU path takes uint8 NHWC batches with 3 channels, got {images.dtype} {images.shape}"
            )
        n, h, w, _ = images.shape
        profile = self.backend.profile
        if profile is not None and not all(
            lo <= v <= hi for lo, v, hi in zip(profile.min, (n, h, w), profile.max, strict=True)
        ):
            raise InputError(f"batch of {n} {h}x{w} images is outside the backend's profile {profile}")
        with self._lock:
            if self._stream is None:
                raise InputError("this DevicePipeline was closed")
            with self._cuda.current():
                return self._run(images, dynamic, seed, start_index)

    def _run(
        self, images: np.ndarray, dynamic: DynamicDefense | None, seed: int, start_index: int
    ) -> np.ndarray:
        """One call's work, under the lock with the context current."""
        n, h, w, _ = images.shape
        sigma, eps = (dynamic.sigma, dynamic.eps) if dynamic is not None else (0.0, 0.0)
        slot = self._slot((n, h, w))
        np.copyto(slot.host_in.array, images)
        slot.host_flag.array[0] = 0
        slot.host_in.copy_to_device(slot.dev_images.ptr, self.stream)
        slot.host_flag.copy_to_device(slot.dev_flag.ptr, self.stream)
        self.kernels.preprocess(
            slot.dev_images.ptr,
            slot.dev_x.ptr,
            n,
            h,
            w,
            out_dtype=self.in_dtype,
            sigma=sigma,
            eps=eps,
            seed=seed,
            start_index=start_index,
            stream=self.stream,
        )
        self.backend.infer_device(slot.dev_x.ptr, slot.dev_y.ptr, (n, CHANNELS, h, w), self.stream)
        self.kernels.postprocess(
            slot.dev_y.ptr,
            slot.dev_out.ptr,
            n,
            h,
            w,
            src_dtype=self.out_dtype,
            stream=self.stream,
            nonfinite_ptr=slot.dev_flag.ptr,
        )
        slot.host_out.copy_from_device(slot.dev_out.ptr, self.stream)
        slot.host_flag.copy_from_device(slot.dev_flag.ptr, self.stream)
        self._stream.synchronize()
        if slot.host_flag.array[0]:
            raise ModelError(
                f"the model on {self.backend.name} on {self.backend.device} returned NaN or infinite "
                f"values for a batch of {n} {h}x{w} images (non-finite weights, or an overflow at "
                "reduced precision); refusing to write them as an image"
            )
        return slot.host_out.array.copy()

    def close(self) -> None:
        """Free every buffer, the stream and the kernels the pipeline loaded; the backend stays open."""
        with self._lock:
            if self._stream is None:
                return
            with self._cuda.current():
                self._stream.synchronize()
                for slot in self._slots.values():
                    slot.close()
                self._slots.clear()
                self._stream.close()
                self._stream = None
            if self._own_kernels is not None:
                self._own_kernels.close()
                self._own_kernels = None
            self._cuda.close()

    def __enter__(self) -> DevicePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _slot(self, shape: tuple[int, int, int]) -> _Slot:
        from nrp_deploy.kernels.cuda_mem import DeviceBuffer, PinnedBuffer

        slot = self._slots.get(shape)
        if slot is not None:
            self._slots.move_to_end(shape)
            return slot
        n, h, w = shape
        pixels = n * h * w * CHANNELS
        slot = _Slot(
            host_in=PinnedBuffer((n, h, w, CHANNELS), np.uint8),
            host_out=PinnedBuffer((n, h, w, CHANNELS), np.uint8),
            dev_images=DeviceBuffer(pixels),
            dev_x=DeviceBuffer(pixels * np.dtype(self.in_dtype).itemsize),
            dev_y=DeviceBuffer(pixels * np.dtype(self.out_dtype).itemsize),
            dev_out=DeviceBuffer(pixels),
            host_flag=PinnedBuffer((1,), np.uint32),
            dev_flag=DeviceBuffer(4),
        )
        self._slots[shape] = slot
        if len(self._slots) > self.max_shapes:
            self._stream.synchronize()
            self._slots.popitem(last=False)[1].close()
        return slot
