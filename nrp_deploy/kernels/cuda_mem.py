"""Device memory, pinned host memory, streams and CUDA graphs through the driver API (torch-free).

GPU backends need a little of what torch or cupy would give them: buffers allocated once and reused,
page-locked host staging buffers (for truly asynchronous copies), a non-default stream, events to order
work across streams, and capture / replay of CUDA graphs. cuda-python's driver bindings give all of it in
the device's primary context, the one TensorRT, ONNX Runtime, torch and the NVRTC kernels share, so every
pointer here can be handed to any of them. Each object frees what it holds on ``close()``.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nrp_deploy.kernels.cuda_api import CudaError, check, context_current, init_driver


class PrimaryContext:
    """Retains device ``ordinal``'s primary context; work on it runs inside ``with context.current():``."""

    def __init__(self, ordinal: int = 0) -> None:
        self._drv = init_driver()
        self.ordinal = ordinal
        self.device = check(self._drv.cuDeviceGet(ordinal), "cuDeviceGet")
        self._context = check(self._drv.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")

    def current(self) -> contextlib.AbstractContextManager[None]:
        """The context current on this thread for the block; the caller's current one is restored after."""
        if self._context is None:
            raise CudaError("the CUDA context was released")
        return context_current(self._drv, self._context)

    def close(self) -> None:
        if self._context is not None:
            check(self._drv.cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")
            self._context = None


@contextlib.contextmanager
def current_device(ordinal: int) -> Iterator[None]:
    """Make device ``ordinal``'s primary context current on this thread for the block, then restore the
    context that was current before. Libraries on the runtime API (TensorRT's builder) work on the device
    whose context is current, so this is how they are pointed at a device other than 0."""
    context = PrimaryContext(ordinal)
    try:
        with context.current():
            yield
    finally:
        context.close()


class Stream:
    """A non-blocking stream (it never synchronises implicitly with the legacy default stream)."""

    def __init__(self) -> None:
        drv = self._drv = init_driver()
        self._stream = check(
            drv.cuStreamCreate(int(drv.CUstream_flags.CU_STREAM_NON_BLOCKING)), "cuStreamCreate"
        )
        self.handle = int(self._stream)
        # One event serves every cross-stream order: cuStreamWaitEvent waits for the record made before it.
        try:
            self._event = check(
                drv.cuEventCreate(int(drv.CUevent_flags.CU_EVENT_DISABLE_TIMING)), "cuEventCreate"
            )
        except BaseException:
            drv.cuStreamDestroy(self._stream)
            raise

    def synchronize(self) -> None:
        check(self._drv.cuStreamSynchronize(self._stream), "cuStreamSynchronize")

    def wait_for(self, other: int) -> None:
        """Order this stream's later work after everything enqueued so far on stream handle ``other``."""
        if other != self.handle:
            self._order(self._drv.CUstream(other), self._stream)

    def signal(self, other: int) -> None:
        """Order stream handle ``other``'s later work after everything enqueued so far on this stream."""
        if other != self.handle:
            self._order(self._stream, self._drv.CUstream(other))

    def _order(self, first: Any, then: Any) -> None:
        check(self._drv.cuEventRecord(self._event, first), "cuEventRecord")
        check(self._drv.cuStreamWaitEvent(then, self._event, 0), "cuStreamWaitEvent")

    def close(self) -> None:
        if self._stream is not None:
            check(self._drv.cuEventDestroy(self._event), "cuEventDestroy")
            check(self._drv.cuStreamDestroy(self._stream), "cuStreamDestroy")
            self._stream = None


def synchronize(stream: int) -> None:
    """Wait on the host until stream handle ``stream`` has run everything enqueued on it."""
    drv = init_driver()
    check(drv.cuStreamSynchronize(drv.CUstream(stream)), "cuStreamSynchronize")


def copy_device(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Enqueue a device-to-device copy of ``nbytes`` on stream handle ``stream``."""
    drv = init_driver()
    check(
        drv.cuMemcpyDtoDAsync(drv.CUdeviceptr(dst), drv.CUdeviceptr(src), nbytes, drv.CUstream(stream)),
        "cuMemcpyDtoDAsync",
    )


class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr`` (an int, as TensorRT and the kernels take it)."""

    def __init__(self, nbytes: int) -> None:
        self._drv = init_driver()
        self.nbytes = int(nbytes)
        self._ptr = check(self._drv.cuMemAlloc(max(1, self.nbytes)), "cuMemAlloc")
        self.ptr = int(self._ptr)

    def close(self) -> None:
        if self._ptr is not None:
            check(self._drv.cuMemFree(self._ptr), "cuMemFree")
            self._ptr = None


class PinnedBuffer:
    """Page-locked host memory viewed as a numpy array of ``shape`` and ``dtype``.

    Copies between pinned memory and the device run asynchronously on a stream (from pageable memory
    the driver stages them synchronously), which is what lets copies, kernels and the engine overlap.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self._drv = init_driver()
        dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.ptr: int | None = int(check(self._drv.cuMemHostAlloc(max(1, self.nbytes), 0), "cuMemHostAlloc"))
        raw = (ctypes.c_byte * max(1, self.nbytes)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=self.nbytes).view(dtype).reshape(shape)

    def copy_to_device(self, device_ptr: int, stream: int) -> None:
        drv = self._drv
        check(
            drv.cuMemcpyHtoDAsync(drv.CUdeviceptr(device_ptr), self.ptr, self.nbytes, drv.CUstream(stream)),
            "cuMemcpyHtoDAsync",
        )

    def copy_from_device(self, device_ptr: int, stream: int) -> None:
        drv = self._drv
        check(
            drv.cuMemcpyDtoHAsync(self.ptr, drv.CUdeviceptr(device_ptr), self.nbytes, drv.CUstream(stream)),
            "cuMemcpyDtoHAsync",
        )

    def close(self) -> None:
        if self.ptr is not None:
            self.array = np.empty(0, dtype=self.array.dtype)  # no view may outlive the memory
            check(self._drv.cuMemFreeHost(self.ptr), "cuMemFreeHost")
            self.ptr = None


class Graph:
    """An instantiated CUDA graph, replayed with ``launch(stream)``."""

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self._drv = init_driver()
        self._graph = graph
        self._exec = graph_exec

    def launch(self, stream: int) -> None:
        check(self._drv.cuGraphLaunch(self._exec, self._drv.CUstream(stream)), "cuGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            check(self._drv.cuGraphExecDestroy(self._exec), "cuGraphExecDestroy")
            check(self._drv.cuGraphDestroy(self._graph), "cuGraphDestroy")
            self._exec = self._graph = None


def capture_graph(stream: Stream, enqueue: Callable[[], None]) -> Graph | None:
    """Record what ``enqueue`` puts on ``stream`` into a graph; None if the work cannot be captured.

    Capture runs in thread-local mode, so other threads' unsafe API calls (synchronous allocations and the
    like) do not invalidate it. It does not keep their work out: anything any thread enqueues on ``stream``
    while it is capturing is recorded into the graph rather than run, so ``stream`` must be private to the
    caller for the duration (the backends capture on their own stream, under their lock, and nobody else
    enqueues there). The caller must have run ``enqueue`` once already: first-call initialisation (allocations, lazy
    module loads) is not capturable. On failure the capture is ended and the stream left usable, so the
    caller can fall back to plain enqueues.
    """
    drv = init_driver()
    mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    handle = drv.CUstream(stream.handle)
    check(drv.cuStreamBeginCapture(handle, mode), "cuStreamBeginCapture")
    try:
        enqueue()
        captured = True
    except Exception:  # whatever refused to be captured; the caller's plain enqueue will report real errors
        captured = False
    err, graph = drv.cuStreamEndCapture(handle)  # always end it, so the stream is usable again
    ended = int(err) == 0 and graph is not None and int(graph) != 0
    if not (captured and ended):
        if ended:
            check(drv.cuGraphDestroy(graph), "cuGraphDestroy")
        return None
    err, graph_exec = drv.cuGraphInstantiate(graph, 0)
    if int(err) != 0:
        check(drv.cuGraphDestroy(graph), "cuGraphDestroy")
        return None
    return Graph(graph, graph_exec)
