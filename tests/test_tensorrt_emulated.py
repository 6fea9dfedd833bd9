"""The TensorRT backend and the fused GPU path, run on the CPU over an emulated CUDA driver and engine.

No GPU is needed: ``FakeCuda`` stands in for ``cuda.bindings.driver`` (device memory is host memory, a
stream's work is deferred until the host synchronises it or an event orders it before another stream's,
capture is per stream in thread-local mode, each thread has its own context stack, graphs replay what
they captured), the fake ONNX Runtime computes on a stream of its own,
``FakeEngine`` for a deserialised TensorRT engine (its execution context computes ``0.5 * x`` from the
addresses bound to it, on the stream it is given), and the fused kernels are their numpy reference applied
to those addresses. Like the real ones, the emulated context re-lays out its internal state when its input
shape changes (a graph captured before then replays garbage), needs the scratch memory it was created
without, and refuses I/O addresses that are not 256-byte aligned. What runs for real is our code: buffer management, pinned staging, bindings, CUDA-graph
capture / replay / fallback, stream ordering, shape checks, the engine cache and the Purifier on top.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from sidecars import write_sidecar

from nrp_deploy import fileutil
from nrp_deploy.artifacts import specs
from nrp_deploy.errors import InputError, MetadataError, ModelError, StaleArtifactError
from nrp_deploy.kernels import cuda_mem
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference
from nrp_deploy.runtime import prepost
from nrp_deploy.runtime.backends import tensorrt as trt_backend
from nrp_deploy.runtime.backends.base import BackendNotActiveError
from nrp_deploy.runtime.backends.options import OrtOptions
from nrp_deploy.runtime.dynamic import DynamicDefense
from nrp_deploy.tensorrt import engine as trt_engine
from nrp_deploy.tensorrt import support as tensorrt_support

ENV = trt_engine.TargetEnvironment("11.4.0.106", "Emulated GPU", (9, 0))
PROFILE = specs.make_profile((1, 8, 8), (2, 16, 16), (4, 32, 32))


class _Graph:
    def __init__(self, work: list) -> None:
        self.work = work

    def __int__(self) -> int:
        return id(self)


class _Wait:
    """Queued by cuStreamWaitEvent: when the waiting stream reaches it, the recorded stream first runs up
    to the point of the record."""

    def __init__(self, cuda: FakeCuda, stream: int, upto: int) -> None:
        self.cuda, self.stream, self.upto = cuda, stream, upto

    def __call__(self) -> None:
        self.cuda.run_until(self.stream, self.upto)


class FakeCuda:
    """The slice of ``cuda.bindings.driver`` our code calls, on host memory; ``log`` records the order.

    Strict where the real driver only misbehaves sometimes: each stream's work is deferred, and runs only
    when the host waits for it (``cuStreamSynchronize``) or when a stream that waits on an event recorded
    after it runs, so a missing synchronise or event shows as stale data. Freeing memory while any stream
    still has work queued fails (the work might touch it). Capture is per stream, as in CUDA (work queued
    on a capturing stream from any thread is recorded), in thread-local mode: an unsafe call (allocation,
    synchronise) from the capturing thread invalidates the capture, and synchronising a capturing stream is
    refused. Each thread has its own context stack, and allocations and stream creation need a current
    context.
    """

    CUstream_flags = types.SimpleNamespace(CU_STREAM_NON_BLOCKING=1)
    CUevent_flags = types.SimpleNamespace(CU_EVENT_DISABLE_TIMING=2)
    CUstreamCaptureMode = types.SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL=1)
    CUstream = CUdeviceptr = int
    PRIMARY = 7  # the primary context's handle, for device 0 (device N: PRIMARY + N)

    def __init__(self) -> None:
        self.memory: dict[int, ctypes.Array] = {}
        self.capturing: dict[int, list] = {}
        self.log: list[tuple[str, int]] = []
        self.refuse_capture = False
        self.retained = 0  # primary-context references held
        self.streams: set[int] = set()  # live streams
        self.alloc_contexts: set[int] = set()  # the contexts current at allocations
        self.failing: set[str] = set()  # driver calls that fail (out of memory)
        self.queues: dict[int, list[tuple[int, Any]]] = {}  # stream -> [(sequence number, work)]
        self.queued: dict[int, int] = {}  # stream -> how many items were ever queued on it
        self.events: dict[int, tuple[int, int]] = {}  # event -> (stream, items queued when recorded)
        self._capture_threads: dict[int, int] = {}  # capturing stream -> the thread that began it
        self._invalidated: set[int] = set()
        self._threads = threading.local()
        self._lock = threading.RLock()
        self._next = 1000

    def _handle(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    # -- deferred work -----------------------------------------------------------------------------------

    def enqueue(self, stream: int, work) -> None:
        stream = int(stream)
        with self._lock:
            if stream in self.capturing:
                self.capturing[stream].append(work)
                return
            number = self.queued.get(stream, 0)
            self.queued[stream] = number + 1
            self.queues.setdefault(stream, []).append((number, work))

    def run_until(self, stream: int, upto: int | None = None) -> None:
        """Run ``stream``'s queued work in order, up to the item numbered ``upto`` (all of it when None)."""
        with self._lock:
            queue = self.queues.get(stream, [])
            while queue and (upto is None or queue[0][0] < upto):
                _, work = queue.pop(0)
                work()

    def pending(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self.queues.values())

    # -- contexts (a stack per thread) ---------------------------------------------------------------------

    @property
    def _stack(self) -> list[int]:
        if not hasattr(self._threads, "stack"):
            self._threads.stack = []
        return self._threads.stack

    def _needs_context(self) -> int:
        return 0 if self._stack and self._stack[-1] else 201  # CUDA_ERROR_INVALID_CONTEXT

    def _unsafe(self) -> int:
        """An unsafe call in thread-local capture mode: it invalidates the captures this thread began."""
        me = threading.get_ident()
        mine = [stream for stream, thread in self._capture_threads.items() if thread == me]
        self._invalidated.update(mine)
        return 900 if mine else 0  # CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED

    def cuDeviceGet(self, ordinal):
        return 0, ordinal

    def cuDevicePrimaryCtxRetain(self, device):
        self.retained += 1
        return 0, self.PRIMARY + int(device)

    def cuDevicePrimaryCtxRelease(self, device):
        self.retained -= 1
        return (0,)

    def cuCtxGetCurrent(self):
        return 0, self._stack[-1] if self._stack else 0

    def cuCtxSetCurrent(self, ctx):
        if self._stack:
            self._stack.pop()
        if int(ctx):
            self._stack.append(int(ctx))
        return (0,)

    def cuCtxPushCurrent(self, ctx):
        self._stack.append(int(ctx))
        return (0,)

    def cuCtxPopCurrent(self):
        if not self._stack:
            return 201, None
        return 0, self._stack.pop()

    # -- streams and events --------------------------------------------------------------------------------

    def cuStreamCreate(self, flags):
        if self._needs_context():
            return self._needs_context(), None
        if "cuStreamCreate" in self.failing:
            return 2, None  # CUDA_ERROR_OUT_OF_MEMORY
        handle = self._handle()
        self.streams.add(handle)
        return 0, handle

    def cuStreamSynchronize(self, stream):
        stream = int(stream)
        if stream in self.capturing:
            self._invalidated.add(stream)
            return (900,)
        if self._unsafe():
            return (900,)
        self.run_until(stream)
        return (0,)

    def cuStreamDestroy(self, stream):
        with self._lock:
            assert not self.queues.get(int(stream)), "stream destroyed with work still queued"
            self.streams.remove(int(stream))
        return (0,)

    def cuEventCreate(self, flags):
        if "cuEventCreate" in self.failing:
            return 2, None
        return 0, self._handle()

    def cuEventRecord(self, event, stream):
        self.log.append(("record", int(stream)))
        with self._lock:
            if int(stream) not in self.capturing:
                self.events[int(event)] = (int(stream), self.queued.get(int(stream), 0))
        return (0,)

    def cuStreamWaitEvent(self, stream, event, flags):
        self.log.append(("wait", int(stream)))
        recorded = self.events.get(int(event))
        if recorded is not None:
            self.enqueue(stream, _Wait(self, *recorded))
        return (0,)

    def cuEventDestroy(self, event):
        self.events.pop(int(event), None)
        return (0,)

    # -- memory --------------------------------------------------------------------------------------------

    def _alloc(self, nbytes: int) -> int:
        buffer = ctypes.create_string_buffer(b"\xaa" * (nbytes + 256), nbytes + 256)  # poisoned
        ptr = (ctypes.addressof(buffer) + 255) & ~255  # cudaMalloc's alignment
        with self._lock:
            self.memory[ptr] = buffer
        return ptr

    def cuMemAlloc(self, nbytes):
        error = self._needs_context() or self._unsafe()
        if error:
            return error, None
        self.alloc_contexts.add(self._stack[-1])
        return 0, self._alloc(nbytes)

    cuMemHostAlloc = lambda self, nbytes, flags: self.cuMemAlloc(nbytes)  # noqa: E731

    def cuMemFree(self, ptr):
        if self._unsafe():
            return (900,)
        with self._lock:
            assert self.pending() == 0, "memory freed while streams still have work queued"
            del self.memory[int(ptr)]
        return (0,)

    cuMemFreeHost = cuMemFree

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), nbytes))
        return (0,)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), nbytes))
        return (0,)

    cuMemcpyDtoDAsync = cuMemcpyDtoHAsync

    # -- graphs --------------------------------------------------------------------------------------------

    def cuStreamBeginCapture(self, stream, mode):
        with self._lock:
            self.capturing[int(stream)] = []
            self._capture_threads[int(stream)] = threading.get_ident()
        return (0,)

    def cuStreamEndCapture(self, stream):
        with self._lock:
            work = self.capturing.pop(int(stream))
            self._capture_threads.pop(int(stream))
            invalidated = int(stream) in self._invalidated
            self._invalidated.discard(int(stream))
        if self.refuse_capture or invalidated:
            return 901, None  # CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        return 0, _Graph(work)

    def cuGraphInstantiate(self, graph, flags):
        return 0, graph

    def cuGraphLaunch(self, graph, stream):
        self.log.append(("graph", int(stream)))
        for work in graph.work:
            self.enqueue(stream, work)
        return (0,)

    def cuGraphExecDestroy(self, graph):
        return (0,)

    cuGraphDestroy = cuGraphExecDestroy


def _array(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype).reshape(shape)


def make_runtime_trt(
    cuda: FakeCuda | None, in_dtype="float32", out_dtype="float32", compute=None
) -> types.ModuleType:
    """A stand-in ``tensorrt`` whose engines compute 0.5 * x on ``cuda``; ``trt.enqueues`` counts
    execute_async_v3. ``compute(stream, shape, src, dst)``, when given, enqueues the engine's work instead
    (on a real GPU, with ``cuda`` None: a real kernel)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = ENV.tensorrt_version
    trt.enqueues = 0
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(
        STATIC="STATIC", USER_MANAGED="USER_MANAGED"
    )
    scratch_bytes = 4096

    class ILogger:
        Severity = types.SimpleNamespace(ERROR="ERROR", INTERNAL_ERROR="INTERNAL_ERROR")

        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self, strategy: str) -> None:
            self.shape: tuple[int, ...] = ()
            self.addresses: dict[str, int] = {}
            self.layout = object()  # the internal state TensorRT re-lays out when the input shape changes
            self.scratch = None if strategy == "USER_MANAGED" else "own"

        def set_device_memory(self, ptr, size):
            assert size >= scratch_bytes and (cuda is None or int(ptr) in cuda.memory)
            self.scratch = int(ptr)

        def set_input_shape(self, name, shape):
            if tuple(shape) != self.shape:
                self.shape, self.layout = tuple(shape), object()
            return True

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            if int(ptr) % 256:
                return False
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            if self.scratch is None:
                return False  # created without device memory and never given any
            shape, src, dst = self.shape, self.addresses["input"], self.addresses["output"]
            layout = self.layout
            trt.enqueues += 1
            if compute is not None:
                compute(stream, shape, src, dst)
                return True

            def run() -> None:
                y = (_array(src, shape, in_dtype).astype(np.float32) * np.float32(0.5)).astype(out_dtype)
                if layout is not self.layout:  # replayed over state laid out for another shape
                    y[...] = np.nan
                _array(dst, shape, out_dtype)[...] = y

            cuda.enqueue(stream, run)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "output")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, index):
            return [(b, 3, h, w) for b, h, w in (PROFILE.min, PROFILE.opt, PROFILE.max)]

        device_memory_size_v2 = scratch_bytes

        def create_execution_context(self, strategy="STATIC"):
            return Context(strategy)

    class Runtime:
        def __init__(self, logger) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            return None if bytes(data).startswith(b"corrupt") else Engine()

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


class FakeKernels:
    """``FusedKernels`` on the emulated device: the numpy reference applied at the given addresses."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.calls: list[dict] = []

    def preprocess(
        self,
        src_ptr,
        dst_ptr,
        n,
        h,
        w,
        out_dtype="float16",
        sigma=0.0,
        eps=0.0,
        seed=0,
        start_index=0,
        stream=0,
    ):
        self.calls.append(dict(sigma=sigma, eps=eps, seed=seed, start_index=start_index, stream=stream))

        def run() -> None:
            images = _array(src_ptr, (n, h, w, 3), np.uint8)
            _array(dst_ptr, (n, 3, h, w), out_dtype)[...] = preprocess_reference(
                images, out_dtype, sigma, eps, seed, start_index
            )

        self.cuda.enqueue(stream, run)

    def postprocess(self, src_ptr, dst_ptr, n, h, w, src_dtype="float16", stream=0, *, nonfinite_ptr=0):
        def run() -> None:
            x = _array(src_ptr, (n, 3, h, w), src_dtype)
            with np.errstate(invalid="ignore"):  # NaN's byte is undefined here; the flag is what counts
                _array(dst_ptr, (n, h, w, 3), np.uint8)[...] = postprocess_reference(x)
            if nonfinite_ptr and not np.isfinite(x).all():
                _array(nonfinite_ptr, (1,), np.uint32)[0] = 1

        self.cuda.enqueue(stream, run)


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(cuda_mem, "init_driver", lambda: fake)
    return fake


@pytest.fixture
def fake_trt(monkeypatch, cuda):
    def install(**kwargs) -> types.ModuleType:
        module = make_runtime_trt(cuda, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        tensorrt_support.import_tensorrt.cache_clear()
        tensorrt_support.tensorrt_logger.cache_clear()
        return module

    yield install
    tensorrt_support.import_tensorrt.cache_clear()
    tensorrt_support.tensorrt_logger.cache_clear()


def _metadata(engine: Path, onnx: Path, **changes) -> trt_engine.EngineMetadata:
    values = dict(
        engine_sha256=fileutil.sha256_file(engine),
        onnx_path=str(onnx),
        onnx_sha256=fileutil.sha256_file(onnx) if onnx.exists() else "0" * 64,
        precision="fp32",
        profile=specs.profile_to_dict(PROFILE),
        input_name="input",
        input_dtype="float32",
        output_name="output",
        output_dtype="float32",
        tensorrt_version=ENV.tensorrt_version,
        gpu_name=ENV.gpu_name,
        compute_capability=list(ENV.compute_capability),
        platform=ENV.platform,
        optimization_level=3,
        workspace_mib=64,
        tf32=False,
    )
    values.update(changes)
    return trt_engine.EngineMetadata(**values)


def _backend(tmp_path: Path, content: bytes = b"PLAN", **kwargs) -> trt_backend.TensorRTBackend:
    engine = tmp_path / "m.engine"
    engine.write_bytes(content)
    meta_changes = {k: kwargs.pop(k) for k in ("input_dtype", "output_dtype") if k in kwargs}
    return trt_backend.TensorRTBackend(
        engine, _metadata(engine, tmp_path / "m.onnx", **meta_changes), **kwargs
    )


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# -- the emulated driver itself ---------------------------------------------------------------------------


def test_the_emulated_driver_is_as_strict_as_the_real_one(cuda):
    """Work waits for the host or an event; capture is per stream with thread-local unsafe calls; each
    thread has its own current context: what the tests below rely on to show ordering bugs."""
    cuda.cuCtxSetCurrent(cuda.PRIMARY)
    first, second = cuda_mem.Stream(), cuda_mem.Stream()
    box = cuda_mem.PinnedBuffer((1,), np.float32)
    box.array[0] = 0
    cuda.enqueue(first.handle, lambda: box.array.__setitem__(0, 1))
    assert box.array[0] == 0  # queued, not run
    second.wait_for(first.handle)
    cuda.enqueue(second.handle, lambda: box.array.__setitem__(0, box.array[0] + 1))
    second.synchronize()  # runs the first stream's work first, through the event
    assert box.array[0] == 2 and cuda.pending() == 0

    def capture(unsafe) -> cuda_mem.Graph | None:
        return cuda_mem.capture_graph(first, lambda: (cuda.enqueue(first.handle, lambda: None), unsafe()))

    def allocate_in_another_thread() -> None:
        def allocate() -> None:
            cuda.cuCtxSetCurrent(cuda.PRIMARY)
            buffers.append(cuda_mem.DeviceBuffer(4))

        worker = threading.Thread(target=allocate)
        worker.start(), worker.join()

    buffers: list[cuda_mem.DeviceBuffer] = []
    assert capture(lambda: None) is not None
    assert capture(allocate_in_another_thread) is not None and len(buffers) == 1  # thread-local mode
    assert capture(lambda: cuda_mem.DeviceBuffer(4)) is None  # the capturing thread may not allocate
    buffers[0].close()
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(cuda.cuCtxGetCurrent()))
    thread.start(), thread.join()
    assert elsewhere == [(0, 0)] and cuda.cuCtxGetCurrent() == (0, cuda.PRIMARY)  # a stack per thread
    box.close(), first.close(), second.close()


# -- the backend ------------------------------------------------------------------------------------------


def test_host_path_captures_once_then_replays(fake_trt, cuda, tmp_path):
    trt = fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    assert backend.profile == PROFILE and backend.stream != 0
    for seed in range(3):  # new data each call through the same buffers: the replayed graph must see it
        x = prepost.uint8_to_float(_images(2, 16, 16, seed))
        np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert trt.enqueues == 2  # one warm-up enqueue, one captured; later calls replay the graph
    assert [e for e in cuda.log if e[0] == "graph"] == [("graph", backend.stream)] * 2
    backend.deactivate()
    assert cuda.memory == {}  # every buffer freed


def test_graphs_of_several_shapes_replay_on_contexts_that_keep_their_shape(fake_trt, cuda, tmp_path):
    """A graph captured for one shape must not be replayed on a context whose shape has changed since."""
    trt = fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    shapes = [(2, 16, 16), (1, 8, 12), (2, 16, 16), (1, 8, 12), (2, 16, 16)]
    for call, (n, h, w) in enumerate(shapes):
        x = prepost.uint8_to_float(_images(n, h, w, seed=call))
        np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert trt.enqueues == 4  # per shape: one warm-up, one captured; every later call replays
    assert sorted(b.replays for b in backend._bindings.values()) == [1, 2]
    contexts = [b.context for b in backend._bindings.values()]
    assert len({id(c) for c in contexts}) == 2 and all(c.scratch == backend._scratch.ptr for c in contexts)
    backend.deactivate()
    assert cuda.memory == {}


def test_device_pointers_must_be_aligned(fake_trt, cuda, tmp_path):
    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    shape = (1, 3, 8, 8)
    cuda.cuCtxSetCurrent(cuda.PRIMARY)  # the test's own buffers, in the backend's context
    src, dst = cuda_mem.DeviceBuffer(4 * 192 + 256), cuda_mem.DeviceBuffer(4 * 192 + 256)
    for args, role in [((src.ptr + 4, dst.ptr), "input"), ((src.ptr, dst.ptr + 128), "output")]:
        with pytest.raises(InputError, match=f"{role} device pointer .* 256-byte aligned"):
            backend.infer_device(*args, shape, backend.stream)
    backend.infer_device(src.ptr, dst.ptr, shape, backend.stream)  # aligned: runs
    cuda_mem.synchronize(backend.stream)
    src.close(), dst.close()
    backend.deactivate()


def _infer_with_altered_contexts(tmp_path, monkeypatch, alter) -> None:
    """One inference on an emulated engine whose execution contexts ``alter`` changes once created."""
    backend = _backend(tmp_path)
    backend.activate()
    original = backend._engine.create_execution_context

    def altered(strategy="STATIC"):
        context = original(strategy)
        alter(context)
        return context

    monkeypatch.setattr(backend._engine, "create_execution_context", altered)
    try:
        backend.infer(np.zeros((1, 3, 8, 8), np.float32))
    finally:
        backend.deactivate()


def test_an_address_tensorrt_refuses_is_an_input_error(fake_trt, cuda, tmp_path, monkeypatch):
    fake_trt()

    def refuse_addresses(context):
        context.set_tensor_address = lambda name, ptr: False

    with pytest.raises(InputError, match=r"TensorRT refused address .* 'input'"):
        _infer_with_altered_contexts(tmp_path, monkeypatch, refuse_addresses)


def test_an_engine_that_changes_the_shape_is_a_model_error(fake_trt, cuda, tmp_path, monkeypatch):
    fake_trt()

    def halve_the_output_height(context):
        context.get_tensor_shape = lambda name: (*context.shape[:2], context.shape[2] // 2, context.shape[3])

    with pytest.raises(ModelError, match=r"maps \(1, 3, 8, 8\) to \(1, 3, 4, 8\)"):
        _infer_with_altered_contexts(tmp_path, monkeypatch, halve_the_output_height)


def test_plain_enqueue_without_graphs_and_when_capture_fails(fake_trt, cuda, tmp_path):
    trt = fake_trt()
    backend = _backend(tmp_path, cuda_graph=False)
    backend.activate()
    x = prepost.uint8_to_float(_images(1, 8, 12))
    for _ in range(3):
        np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert trt.enqueues == 3 and not any(e[0] == "graph" for e in cuda.log)
    backend.deactivate()

    cuda.refuse_capture = True
    trt.enqueues = 0
    backend = _backend(tmp_path)
    backend.activate()
    for _ in range(3):
        np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert trt.enqueues == 1 + 1 + 2  # warm-up, failed capture, then plain enqueues (no second capture)
    backend.deactivate()


def test_fp16_engine_io_is_converted_on_the_host_path(fake_trt, tmp_path):
    fake_trt(in_dtype="float16", out_dtype="float16")
    backend = _backend(tmp_path, input_dtype="float16", output_dtype="float16")
    backend.activate()
    x = prepost.uint8_to_float(_images(1, 8, 8))
    y = backend.infer(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, (x.astype(np.float16).astype(np.float32) * 0.5).astype(np.float16))
    backend.deactivate()


def test_shapes_outside_the_profile_are_refused(fake_trt, tmp_path):
    fake_trt()
    backend = _backend(tmp_path)
    with pytest.raises(BackendNotActiveError, match="not active"):
        backend.infer(np.zeros((1, 3, 8, 8), np.float32))
    backend.activate()
    for shape, message in [
        ((5, 3, 16, 16), "batch 1..4"),
        ((1, 3, 33, 16), "outside the engine's profile"),
        ((1, 3, 4, 16), "outside the engine's profile"),
        ((1, 1, 16, 16), r"\(N, 3, H, W\)"),
    ]:
        with pytest.raises(InputError, match=message):
            backend.infer(np.zeros(shape, np.float32))
    backend.deactivate()


def test_corrupt_engine_is_a_clear_error_and_frees_everything(fake_trt, cuda, tmp_path):
    fake_trt()
    backend = _backend(tmp_path, content=b"corrupt plan")
    with pytest.raises(StaleArtifactError, match=r"could not deserialise .*m\.engine.*nrp build"):
        backend.activate()
    assert cuda.memory == {} and backend.stream == 0


def test_device_entry_point_orders_against_the_callers_stream(fake_trt, cuda, tmp_path):
    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    x = prepost.uint8_to_float(_images(2, 16, 16))
    cuda.cuCtxSetCurrent(cuda.PRIMARY)  # the test's own buffers, in the backend's context
    src, dst = cuda_mem.DeviceBuffer(x.nbytes), cuda_mem.DeviceBuffer(x.nbytes)
    _array(src.ptr, x.shape, np.float32)[...] = x
    caller = 4242
    cuda.log.clear()
    backend.infer_device(src.ptr, dst.ptr, x.shape, caller)
    assert not np.array_equal(_array(dst.ptr, x.shape, np.float32), x * np.float32(0.5))  # not yet run
    cuda_mem.synchronize(caller)  # the caller's stream runs after the engine's work, through events
    np.testing.assert_array_equal(_array(dst.ptr, x.shape, np.float32), x * np.float32(0.5))
    own = backend.stream
    assert cuda.log == [("record", caller), ("wait", own), ("record", own), ("wait", caller)]
    cuda.log.clear()
    backend.infer_device(src.ptr, dst.ptr, x.shape, own)  # on the backend's own stream: no events at all
    cuda_mem.synchronize(own)
    assert cuda.log == [("graph", own)]
    src.close(), dst.close()
    backend.deactivate()


def test_calls_leave_the_callers_current_context_alone(fake_trt, cuda, tmp_path):
    """The backend and the fused path work in the device's primary context and restore whatever the
    calling thread had current (torch's or CuPy's device: here another context), on every thread."""
    from concurrent.futures import ThreadPoolExecutor

    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    fake_trt()
    other = 99
    cuda.cuCtxSetCurrent(other)
    backend = _backend(tmp_path)
    backend.activate()
    assert cuda.cuCtxGetCurrent() == (0, other)
    x = prepost.uint8_to_float(_images(1, 8, 8))
    np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert cuda.cuCtxGetCurrent() == (0, other)
    with ThreadPoolExecutor(1) as pool:  # a fresh thread: nothing current before, nothing after
        assert pool.submit(lambda: (backend.infer(x), cuda.cuCtxGetCurrent())[1]).result() == (0, 0)
    with DevicePipeline(backend, FakeKernels(cuda)) as pipeline:
        images = _images(2, 16, 16)
        np.testing.assert_array_equal(pipeline(images), _host_reference(images, None, 0, 0))
        assert cuda.cuCtxGetCurrent() == (0, other)
    assert cuda.cuCtxGetCurrent() == (0, other)
    assert cuda.alloc_contexts == {cuda.PRIMARY}  # and everything was allocated in the device's context
    backend.deactivate()
    assert cuda.cuCtxGetCurrent() == (0, other) and cuda.retained == 0


def test_buffers_and_graphs_of_old_shapes_are_freed(fake_trt, cuda, tmp_path):
    fake_trt()
    backend = _backend(tmp_path, max_shapes=2)
    backend.activate()
    for side in (8, 12, 16, 20):
        x = prepost.uint8_to_float(_images(1, side, side))
        np.testing.assert_array_equal(backend.infer(x), x * np.float32(0.5))
    assert list(backend._slots) == [(1, 3, 16, 16), (1, 3, 20, 20)]
    live = set(cuda.memory)
    assert all(ptr in live for key in backend._bindings for ptr in key[1:])
    backend.deactivate()
    assert cuda.memory == {}


# -- the fused GPU path -----------------------------------------------------------------------------------


def _host_reference(images: np.ndarray, dynamic: DynamicDefense | None, seed: int, start: int) -> np.ndarray:
    x = prepost.uint8_to_float(images)
    if dynamic is not None:
        x = dynamic.apply(x, seed, start)
    return prepost.float_to_uint8(x * np.float32(0.5))


@pytest.mark.parametrize("dynamic", [None, DynamicDefense(sigma=0.05, eps=16 / 255)])
def test_pipeline_matches_the_host_path(fake_trt, cuda, tmp_path, dynamic):
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    kernels = FakeKernels(cuda)
    with DevicePipeline(backend, kernels) as pipeline:
        assert pipeline.stream not in (0, backend.stream)  # its own stream, ordered by events
        for call in range(2):
            images = _images(3, 16, 24, seed=call)
            got = pipeline(images, dynamic, seed=99, start_index=5)
            expected = _host_reference(images, dynamic, 99, 5)
            assert np.abs(got.astype(int) - expected).max() <= 1
            assert (got == expected).mean() > 0.99
        assert kernels.calls[-1] == dict(
            sigma=dynamic.sigma if dynamic else 0.0,
            eps=dynamic.eps if dynamic else 0.0,
            seed=99,
            start_index=5,
            stream=pipeline.stream,
        )
    backend.deactivate()
    assert cuda.memory == {}


def test_pipeline_work_is_not_swallowed_by_a_capture_in_another_thread(fake_trt, cuda, tmp_path):
    """While one thread's host-path call captures a CUDA graph on the engine's stream, another thread's
    fused call enqueues its upload and preprocessing: they must run, not be recorded into that graph."""
    import threading

    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    capturing, preprocessed = threading.Event(), threading.Event()
    begin_capture = cuda.cuStreamBeginCapture

    def slow_capture(stream, mode):
        result = begin_capture(stream, mode)
        capturing.set()
        preprocessed.wait(5)  # hold the capture open until the other thread has enqueued its kernel
        return result

    cuda.cuStreamBeginCapture = slow_capture
    kernels = FakeKernels(cuda)
    original_preprocess = kernels.preprocess

    def preprocess(*args, **kwargs):
        original_preprocess(*args, **kwargs)
        preprocessed.set()

    kernels.preprocess = preprocess
    images = _images(2, 16, 16, seed=4)
    x = prepost.uint8_to_float(_images(1, 8, 8, seed=5))
    with DevicePipeline(backend, kernels) as pipeline:
        host = threading.Thread(target=lambda: backend.infer(x))
        host.start()
        assert capturing.wait(5)
        got = pipeline(images)
        host.join(5)
        np.testing.assert_array_equal(got, _host_reference(images, None, 0, 0))
        np.testing.assert_array_equal(
            backend.infer(x), x * np.float32(0.5)
        )  # its graph holds only its own work
    backend.deactivate()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_pipeline_refuses_nonfinite_model_outputs(fake_trt, cuda, tmp_path, bad):
    """A model output holding NaN or infinity (which the clamp would write as black or white pixels) is
    refused as on the host path; the flag is reset, so the next clean batch goes through."""
    from nrp_deploy.errors import ModelError
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    kernels = FakeKernels(cuda)
    original_preprocess = kernels.preprocess
    poison = {"on": True}

    def preprocess(src_ptr, dst_ptr, n, h, w, out_dtype="float16", **kwargs):
        original_preprocess(src_ptr, dst_ptr, n, h, w, out_dtype, **kwargs)
        if poison["on"]:  # one engine input element non-finite: the engine's 0.5 * x keeps it so
            cuda.enqueue(
                kwargs["stream"], lambda: _array(dst_ptr, (n * 3 * h * w,), out_dtype).__setitem__(-1, bad)
            )

    kernels.preprocess = preprocess
    images = _images(2, 16, 16, seed=6)
    with DevicePipeline(backend, kernels) as pipeline:
        with pytest.raises(
            ModelError, match=r"tensorrt on cuda:0 returned NaN or infinite values for a batch of 2 16x16"
        ):
            pipeline(images)
        poison["on"] = False
        np.testing.assert_array_equal(pipeline(images), _host_reference(images, None, 0, 0))
    backend.deactivate()
    assert cuda.memory == {}


def test_pipeline_unloads_the_kernels_it_loaded_and_only_those(fake_trt, cuda, tmp_path, monkeypatch):
    import nrp_deploy.kernels as kernels_package
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    class CountingKernels(FakeKernels):
        loaded: ClassVar[list] = []

        def __init__(self, ordinal: int) -> None:
            super().__init__(cuda)
            self.closed = False
            CountingKernels.loaded.append(self)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(kernels_package, "FusedKernels", CountingKernels)
    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    pipeline = DevicePipeline(backend)
    images = _images(1, 8, 8)
    np.testing.assert_array_equal(pipeline(images), _host_reference(images, None, 0, 0))
    pipeline.close()
    assert [k.closed for k in CountingKernels.loaded] == [True]
    pipeline.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        pipeline(images)
    mine = FakeKernels(cuda)
    mine.close = lambda: pytest.fail("a pipeline must not unload kernels it was given")
    DevicePipeline(backend, mine).close()
    backend.deactivate()
    assert cuda.memory == {}


@pytest.mark.parametrize("failing", ["cuStreamCreate", "cuEventCreate"])
def test_a_pipeline_that_cannot_start_releases_its_context_and_kernels(
    fake_trt, cuda, tmp_path, monkeypatch, failing
):
    import nrp_deploy.kernels as kernels_package
    from nrp_deploy.kernels.cuda_api import CudaError
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    loaded: list[FakeKernels] = []

    class ClosingKernels(FakeKernels):
        def __init__(self, ordinal: int) -> None:
            super().__init__(cuda)
            self.closed = False
            loaded.append(self)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(kernels_package, "FusedKernels", ClosingKernels)
    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    held, streams = cuda.retained, set(cuda.streams)
    cuda.failing.add(failing)
    with pytest.raises(CudaError, match=failing):
        DevicePipeline(backend)
    assert [k.closed for k in loaded] == [True]
    assert cuda.retained == held and cuda.streams == streams  # nothing kept by the failed start
    cuda.failing.clear()
    backend.deactivate()
    assert cuda.retained == 0 and cuda.streams == set()


def test_pipeline_refuses_what_it_cannot_run(fake_trt, cuda, tmp_path):
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    with DevicePipeline(backend, FakeKernels(cuda)) as pipeline:
        with pytest.raises(InputError, match="uint8 NHWC"):
            pipeline(np.zeros((1, 16, 16, 3), np.float32))
        with pytest.raises(InputError, match="outside the backend's profile"):
            pipeline(np.zeros((1, 64, 64, 3), np.uint8))
    backend.deactivate()
    cpu = types.SimpleNamespace(name="onnxruntime-cpu", device="cpu")
    with pytest.raises(InputError, match="CUDA device backend"):
        DevicePipeline(cpu, FakeKernels(cuda))


def _emulated_build_host(monkeypatch) -> list[tuple[Path, trt_engine.BuildOptions]]:
    """One emulated GPU whose TensorRT builds write a stand-in plan; returns the (onnx, options) of each
    build, in order."""
    from nrp_deploy.kernels import cuda_api

    builds: list[tuple[Path, trt_engine.BuildOptions]] = []

    def fake_build(onnx: Path, engine: Path, options: trt_engine.BuildOptions) -> trt_engine.EngineMetadata:
        builds.append((onnx, options))
        engine.parent.mkdir(parents=True, exist_ok=True)
        engine.write_bytes(b"PLAN " + onnx.read_bytes())
        meta = _metadata(engine, onnx, profile=specs.profile_to_dict(options.profile))
        trt_engine.write_engine_metadata(engine, meta)
        return meta

    monkeypatch.setattr(cuda_api, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(trt_backend, "current_environment", lambda device=0: ENV)
    monkeypatch.setattr(trt_backend, "engine_builder", lambda **kw: fake_build)
    return builds


# -- load_purifier(..., backend="tensorrt") end to end ----------------------------------------------------


def test_load_purifier_builds_caches_tiles_and_rebuilds(fake_trt, cuda, tmp_path, monkeypatch):
    """The runtime's Purifier over the TensorRT backend: engine built once and cached, images beyond the
    profile tiled, batches beyond it split, and an engine from another TensorRT release rebuilt."""
    from nrp_deploy.runtime import load_purifier

    fake_trt()
    builds = _emulated_build_host(monkeypatch)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not parsed by the stand-in")
    options = {"profile": PROFILE, "cache_dir": tmp_path / "engines"}

    with load_purifier(onnx, backend="tensorrt", options=options) as purifier:
        assert purifier.backend_name == "tensorrt" and purifier.backend.device == "cuda:0"
        images = _images(6, 40, 20)  # taller than the profile's 32 and a batch above its 4: tiled and split
        np.testing.assert_array_equal(purifier(images), _host_reference(images, None, 0, 0))
    with load_purifier(onnx, backend="tensorrt", options=options) as purifier:
        small = _images(1, 16, 16)
        np.testing.assert_array_equal(purifier(small), _host_reference(small, None, 0, 0))
    assert len(builds) == 1 and builds[0][1].profile == PROFILE

    engine = purifier.backend.path
    meta = trt_engine.read_engine_metadata(engine)
    trt_engine.write_engine_metadata(
        engine, trt_engine.EngineMetadata(**{**meta.to_dict(), "tensorrt_version": "11.3.0"})
    )
    with load_purifier(engine, backend="tensorrt") as purifier:  # the engine itself: rebuilt from its ONNX
        assert purifier.backend.metadata.tensorrt_version == ENV.tensorrt_version
    assert len(builds) == 2 and builds[1][1].profile == PROFILE  # the rebuild kept the engine's profile


def test_threads_share_one_context_safely(fake_trt, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    fake_trt()
    backend = _backend(tmp_path)
    backend.activate()
    inputs = [prepost.uint8_to_float(_images(1 + k % 3, 8 + 4 * (k % 4), 16, seed=k)) for k in range(24)]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(backend.infer, inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * np.float32(0.5))
    backend.deactivate()


class _StreamlessBackend:
    """A device backend that enqueues on no stream of its own (ONNX Runtime without a user stream)."""

    name, device, precision, spec, thread_safe, stream = "onnxruntime-cuda", "cuda:0", "fp32", None, True, 0
    profile = None
    input_spec = output_spec = types.SimpleNamespace(dtype="float32")

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.streams: list[int] = []

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, x):
        return x * np.float32(0.5)

    def infer_device(self, in_ptr, out_ptr, shape, stream):
        self.streams.append(stream)

        def run() -> None:
            _array(out_ptr, shape, np.float32)[...] = _array(in_ptr, shape, np.float32) * np.float32(0.5)

        self.cuda.enqueue(stream, run)


def test_pipeline_brings_its_own_stream_when_the_backend_has_none(cuda):
    from nrp_deploy.runtime.gpu_pipeline import DevicePipeline

    backend = _StreamlessBackend(cuda)
    with DevicePipeline(backend, FakeKernels(cuda)) as pipeline:
        assert pipeline.stream not in (0, None)
        images = _images(2, 20, 12)
        np.testing.assert_array_equal(pipeline(images), _host_reference(images, None, 0, 0))
        assert backend.streams == [pipeline.stream]
    assert cuda.memory == {}


# -- ONNX Runtime's CUDA execution provider in CUDA-graph mode ----------------------------------------------


def make_fake_ort(cuda: FakeCuda) -> types.SimpleNamespace:
    """A stand-in ``onnxruntime`` (CUDA build) whose model computes 0.5 * x on emulated device memory. As
    ONNX Runtime documents for ``enable_cuda_graph``, the first run captures, and every later run replays
    the addresses bound at capture, whatever is bound now. A run enqueues its work on the session's compute
    stream (the ``user_compute_stream`` it was given, else one of its own) and waits for that stream
    before it returns, as ONNX Runtime's Run does; like any runtime-API library, a session makes the
    device's primary context current on the thread that creates or runs it. ``OrtValue`` copies are
    synchronous."""

    class Arg:
        name, type, shape = "input", "tensor(float)", ["N", 3, "H", "W"]

    class OutArg(Arg):
        name = "output"

    class OrtValue:
        def __init__(self, shape, dtype) -> None:
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)
            self.ptr = cuda._alloc(int(np.prod(shape)) * self.dtype.itemsize)

        @classmethod
        def ortvalue_from_shape_and_type(cls, shape, dtype, device, device_id):
            assert device == "cuda"
            return cls(shape, dtype)

        def data_ptr(self) -> int:
            return self.ptr

        def update_inplace(self, x) -> None:
            _array(self.ptr, self.shape, self.dtype)[...] = x

        def numpy(self):
            return _array(self.ptr, self.shape, self.dtype).copy()

    class IOBinding:
        def __init__(self) -> None:
            self.bound: dict[str, tuple[int, tuple[int, ...]]] = {}

        def bind_input(self, name, device, device_id, dtype, shape, ptr):
            self.bound[name] = (int(ptr), tuple(shape))

        bind_output = bind_input

        def bind_ortvalue_input(self, name, value):
            self.bound[name] = (value.ptr, value.shape)

        bind_ortvalue_output = bind_ortvalue_input

    def runtime_api_context() -> None:
        if not cuda.cuCtxGetCurrent()[1]:
            cuda.cuCtxSetCurrent(cuda.PRIMARY)

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=()) -> None:
            cuda_options = next(
                p[1] for p in providers if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider"
            )
            self.graph = cuda_options.get("enable_cuda_graph") == "1"
            self.stream = int(cuda_options.get("user_compute_stream", 0)) or cuda._handle()
            self.captured: tuple[tuple[int, tuple[int, ...]], ...] | None = None
            runtime_api_context()

        def get_inputs(self):
            return [Arg()]

        def get_outputs(self):
            return [OutArg()]

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def io_binding(self):
            return IOBinding()

        def run_with_iobinding(self, binding) -> None:
            io = (binding.bound["input"], binding.bound["output"])
            if self.graph:
                self.captured = self.captured or io
                io = self.captured
            (src, shape), (dst, _) = io
            runtime_api_context()

            def run() -> None:
                _array(dst, shape, np.float32)[...] = _array(src, shape, np.float32) * np.float32(0.5)

            cuda.enqueue(self.stream, run)
            cuda.run_until(self.stream)

    return types.SimpleNamespace(
        InferenceSession=InferenceSession,
        OrtValue=OrtValue,
        SessionOptions=types.SimpleNamespace,
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL=99),
        ExecutionMode=types.SimpleNamespace(ORT_SEQUENTIAL=0),
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )


def test_ort_cuda_graph_session_serves_host_and_device_callers_alike(cuda, tmp_path, monkeypatch):
    """Host calls and device calls, in any order, with new data each time, all see their own results."""
    from nrp_deploy.runtime.backends import ort as ort_backend

    monkeypatch.setattr(ort_backend, "_ort", lambda: make_fake_ort(cuda))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"stand-in")
    backend = ort_backend.OrtBackend(
        onnx, device="cuda:0", options=OrtOptions(cuda_graph=True, fixed_shape=(2, 8, 8))
    )
    backend.activate()
    shape = (2, 3, 8, 8)
    src, dst = (cuda_mem.DeviceBuffer(4 * int(np.prod(shape))) for _ in range(2))
    caller = cuda_mem.Stream()
    for call in range(6):
        x = prepost.uint8_to_float(_images(2, 8, 8, seed=call))
        if call % 2:  # on the session's stream, then on another one
            _array(src.ptr, shape, np.float32)[...] = x
            stream = backend.stream if call < 3 else caller.handle
            backend.infer_device(src.ptr, dst.ptr, shape, stream)
            cuda_mem.synchronize(stream)
            y = _array(dst.ptr, shape, np.float32).copy()
        else:
            y = backend.infer(x)
        np.testing.assert_array_equal(y, x * np.float32(0.5))
    with pytest.raises(InputError, match="runs shape"):
        backend.infer_device(src.ptr, dst.ptr, (1, 3, 8, 8), caller.handle)
    backend.deactivate()
    src.close(), dst.close(), caller.close()


@pytest.mark.parametrize("user_stream", [False, True])
def test_ort_cuda_graph_device_call_is_not_overwritten_by_the_next_call(
    cuda, tmp_path, monkeypatch, user_stream
):
    """A device call copies its result out of the session's one captured output buffer on the caller's
    stream; the next call (from any thread) replays into that buffer, so it must not run before the copy
    has. Here the caller waits for its stream only after another call has run."""
    from nrp_deploy.runtime.backends import ort as ort_backend

    monkeypatch.setattr(ort_backend, "_ort", lambda: make_fake_ort(cuda))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"stand-in")
    cuda.cuCtxSetCurrent(cuda.PRIMARY)
    session_stream = cuda_mem.Stream()
    options = OrtOptions(
        cuda_graph=True, fixed_shape=(2, 8, 8), stream=session_stream.handle if user_stream else None
    )
    backend = ort_backend.OrtBackend(onnx, device="cuda:0", options=options)
    backend.activate()
    shape = (2, 3, 8, 8)
    src, dst = (cuda_mem.DeviceBuffer(4 * int(np.prod(shape))) for _ in range(2))
    caller = cuda_mem.Stream()
    mine, theirs = (prepost.uint8_to_float(_images(2, 8, 8, seed=k)) for k in (1, 2))
    _array(src.ptr, shape, np.float32)[...] = mine
    backend.infer_device(src.ptr, dst.ptr, shape, caller.handle)
    np.testing.assert_array_equal(backend.infer(theirs), theirs * np.float32(0.5))
    caller.synchronize()
    np.testing.assert_array_equal(_array(dst.ptr, shape, np.float32), mine * np.float32(0.5))
    backend.deactivate()
    src.close(), dst.close(), caller.close(), session_stream.close()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_device_path_errors_are_model_errors(cuda, tmp_path, monkeypatch, cuda_graph):
    """ONNX Runtime's own exceptions from a run on device buffers (a wrong output shape, a failed kernel)
    end as ModelError naming the model, as on the host path, not as a traceback."""
    from nrp_deploy.runtime.backends import ort as ort_backend

    fake = make_fake_ort(cuda)

    class RuntimeException(Exception):  # onnxruntime's own, not an NRPDeployError
        pass

    def fail(self, binding):
        raise RuntimeException("output shape mismatch\nmore detail")

    monkeypatch.setattr(fake.InferenceSession, "run_with_iobinding", fail)
    monkeypatch.setattr(ort_backend, "_ort", lambda: fake)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"stand-in")
    options = OrtOptions(cuda_graph=True, fixed_shape=(2, 8, 8)) if cuda_graph else OrtOptions()
    backend = ort_backend.OrtBackend(onnx, device="cuda:0", options=options)
    backend.activate()
    shape = (2, 3, 8, 8)
    src, dst = (cuda_mem.DeviceBuffer(4 * int(np.prod(shape))) for _ in range(2))
    message = (
        r"ONNX Runtime failed to run .*m\.onnx on an input of shape \(2, 3, 8, 8\).*output shape mismatch$"
    )
    with pytest.raises(ModelError, match=message):
        backend.infer_device(src.ptr, dst.ptr, shape, backend.stream)
    if cuda_graph:
        with pytest.raises(ModelError, match=message):
            backend.infer(np.zeros(shape, np.float32))
    backend.deactivate()
    src.close(), dst.close()


@pytest.mark.parametrize(("name", "channels", "expected"), [("images", 1, "1"), ("x", "C", "3")])
def test_tensorrt_ep_profile_names_the_models_input(tmp_path, name, channels, expected):
    """The TensorRT EP's profile strings carry the model's own input name and channel count."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from nrp_deploy.runtime.backends.ort import OrtBackend

    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        "identity",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, "H", "W"])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    backend = OrtBackend(
        path, device="cuda:0", options=OrtOptions(execution_provider="tensorrt", fixed_shape=(2, 16, 24))
    )
    options = backend._trt_options()
    for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert options[key] == f"{name}:2x{expected}x16x24"


@pytest.mark.parametrize("passed", [False, True])
def test_engine_with_a_failed_fidelity_verdict_is_refused_unless_allowed(
    fake_trt, cuda, tmp_path, monkeypatch, passed
):
    """The rule ONNX artifacts follow: an engine whose sidecar records a FAIL verdict (that of the ONNX it was
    built from) is not used unless the caller allows it; a PASS is used as is."""
    from nrp_deploy.errors import FidelityError
    from nrp_deploy.kernels import cuda_api
    from nrp_deploy.runtime import load_purifier

    fake_trt()
    monkeypatch.setattr(cuda_api, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(trt_backend, "current_environment", lambda device=0: ENV)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    line = f"{'PASS' if passed else 'FAIL'} fp16 m.onnx: PSNR 12.0 dB < 50.0 dB vs FP32 torch"
    verdict = {"passed": passed, "line": line}
    trt_engine.write_engine_metadata(
        engine, _metadata(engine, tmp_path / "m.onnx", source={"verdict": verdict})
    )
    images = _images(1, 16, 16)
    if not passed:
        with pytest.raises(
            FidelityError, match=rf"{engine} failed its fidelity check.*{line}.*--allow-failed"
        ):
            load_purifier(engine, backend="tensorrt")
    with load_purifier(engine, backend="tensorrt", allow_failed=not passed) as purifier:
        np.testing.assert_array_equal(purifier(images), _host_reference(images, None, 0, 0))


def test_a_stale_engine_is_not_rebuilt_from_an_onnx_that_failed_its_fidelity_check(
    fake_trt, cuda, tmp_path, monkeypatch
):
    from nrp_deploy.errors import FidelityError
    from nrp_deploy.runtime import load_purifier

    fake_trt()
    builds = _emulated_build_host(monkeypatch)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not parsed by the stand-in")
    write_sidecar(onnx, psnr_db=12.0, precision="fp16", min_psnr_db=50.0)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    stale = _metadata(engine, onnx, tensorrt_version="11.3.0")  # built by another release: to rebuild
    trt_engine.write_engine_metadata(engine, stale)
    with pytest.raises(FidelityError, match=r"m.onnx failed its fidelity check.*FAIL fp16"):
        load_purifier(engine, backend="tensorrt")
    assert builds == [] and engine.read_bytes() == b"PLAN"  # refused before any build
    with load_purifier(engine, backend="tensorrt", allow_failed=True) as purifier:
        assert purifier.backend.metadata.tensorrt_version == ENV.tensorrt_version
    assert [source for source, _ in builds] == [onnx]


def test_malformed_verdict_in_an_engine_sidecar_is_named(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    trt_engine.write_engine_metadata(
        engine, _metadata(engine, tmp_path / "m.onnx", source={"verdict": "FAIL"})
    )
    with pytest.raises(MetadataError, match=r"m\.engine\.json: malformed engine metadata"):
        trt_engine.read_engine_metadata(engine)
