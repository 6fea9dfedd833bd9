"""The native TensorRT backend: a strongly typed engine run on device buffers, torch-free.

``open_backend`` finds or builds the engine through the engine cache (``nrp_deploy.tensorrt.cache``): a
checkpoint or ONNX source builds its engine once and reuses it; an engine that another TensorRT release,
another GPU or a changed ONNX made is rebuilt, or refused with the reasons when no ONNX is at hand.

Running: cuda-python's driver API holds the memory and the stream (a non-blocking stream of its own), the
device buffers of each input shape are allocated once and reused, host copies go through pinned buffers,
and TensorRT runs with ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``. Each binding
(input shape, input address, output address) gets an execution context of its own, set up once and never
changed: TensorRT changes a context's internal state when its input shape changes, so a CUDA graph stays
valid only on a context that keeps the shape and addresses it was captured with (TensorRT developer guide,
"CUDA graphs": one context per captured graph). The contexts share one scratch allocation
(``ExecutionContextAllocationStrategy.USER_MANAGED``, sized by ``device_memory_size_v2``), which is safe
because every call runs on the one stream under the one lock. With ``cuda_graph`` (the default) a
binding's first call is a plain enqueue, which lets TensorRT finish its lazy initialisation; its work is
then captured into a CUDA graph in thread-local mode and replayed from the next call on; work that cannot
be captured falls back to plain enqueues. ``infer_device`` is the entry point of the fused GPU path: the
preprocessing kernel writes the engine's input buffer, the engine runs, and the postprocessing kernel
reads its output, all ordered on streams through events without a host round trip. Its pointers must be
256-byte aligned device memory (TensorRT's requirement for I/O addresses); others are refused.

Shapes: the engine accepts the (batch, height, width) range of its optimisation profile (``profile``); the
Purifier tiles larger images at the profile's optimal shape, pads smaller ones, and splits larger batches.

Thread safety: calls are serialised by a lock (``thread_safe`` is True); they share the scratch memory,
and the GPU runs one engine call at a time anyway. Each call pushes the device's primary context and pops
it after, so any thread may call, and the calling thread's current device (torch's, CuPy's) is left as
it was.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.metadata import check_verdict, read_metadata, sidecar_path
from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec, outside_profile
from nrp_deploy.errors import BackendUnavailableError, InputError, ModelError, StaleArtifactError
from nrp_deploy.kernels import cuda_api, cuda_mem
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime.backends.base import BaseBackend
from nrp_deploy.runtime.backends.options import BackendOptions, TensorRTOptions
from nrp_deploy.runtime.on_demand import onnx_for
from nrp_deploy.tensorrt.builder import engine_builder
from nrp_deploy.tensorrt.cache import ensure_engine
from nrp_deploy.tensorrt.engine import EngineMetadata
from nrp_deploy.tensorrt.support import INSTALL_HINT, current_environment, import_tensorrt, tensorrt_logger

__all__ = ["INSTALL_HINT", "TensorRTBackend", "open_backend", "unavailable_reason"]

log = logging.getLogger(__name__)

#: Input shapes whose host-path buffers are kept per engine (least recently used ones are freed); twice
#: as many bindings (execution context + graph) are kept, for the host path's and device callers' buffers.
MAX_SHAPES = 4
CHANNELS = 3
#: TensorRT requires I/O tensor addresses aligned to 256 bytes.
ADDRESS_ALIGNMENT = 256


def unavailable_reason() -> str | None:
    """None when TensorRT imports and a CUDA device is usable; otherwise why not and what to install."""
    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    if cuda_api.cuda_device_count() == 0:
        return (
            "TensorRT is installed but no CUDA device is usable here (check the NVIDIA driver, cuda-python)"
        )
    return None


def _device_ordinal(device: str | None) -> int:
    if device is None:
        return 0
    name, _, index = device.partition(":")
    if name != "cuda" or not (index == "" or index.isdigit()):
        raise BackendUnavailableError(f"TensorRT runs on a CUDA device ('cuda' or 'cuda:N'), not {device!r}")
    return int(index or 0)


def open_backend(
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> TensorRTBackend:
    """An inactive backend over the engine for ``source``, built or rebuilt first when needed (see
    ``TensorRTOptions``)."""
    options = TensorRTOptions.coerce(options)
    ordinal = _device_ordinal(device)
    env = current_environment(ordinal)
    build = engine_builder(device=ordinal, verbose=options.verbose)
    build_options = options.build_options()
    cache = Path(options.cache_dir) if options.cache_dir else None
    if source.kind == "engine":
        choice = ensure_engine(
            env=env,
            build=build,
            engine=source.path,
            options=build_options,
            check_onnx=partial(_check_onnx_verdict, allow_failed=source.allow_failed),
        )
    else:
        onnx = onnx_for(source, precision or source.precision or "fp32")
        choice = ensure_engine(
            env=env,
            build=build,
            onnx=onnx,
            engine=options.engine,
            options=build_options,
            directory=cache,
        )
    if choice.built:
        log.warning("built TensorRT engine %s (%s)", choice.path, "; ".join(choice.reasons))
    verdict = choice.metadata.verdict
    if verdict is not None:
        check_verdict(choice.path, verdict, source.allow_failed)
    if precision is not None and choice.metadata.precision != precision:
        raise InputError(
            f"TensorRT engine {choice.path} is {choice.metadata.precision}, but {precision} was asked for"
        )
    spec = source.spec
    if spec is None and choice.metadata.source.get("model"):
        spec = ModelSpec.from_dict(choice.metadata.source["model"])
    return TensorRTBackend(
        choice.path,
        choice.metadata,
        device=f"cuda:{ordinal}",
        cuda_graph=options.cuda_graph,
        spec=spec,
    )


def _check_onnx_verdict(onnx: Path, allow_failed: bool) -> None:
    """Refuse to rebuild an engine from an ONNX whose export FAILed its fidelity check (the engine would
    inherit the verdict and be refused after the build)."""
    if sidecar_path(onnx).is_file():
        check_verdict(onnx, read_metadata(onnx).verdict, allow_failed)


@dataclass
class _Binding:
    """One execution context fixed to one (shape, input address, output address), and its CUDA graph."""

    context: Any
    graph: Any = None  # cuda_mem.Graph once captured
    capture_tried: bool = False
    replays: int = 0

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None


@dataclass
class _HostSlot:
    """The buffers of one input shape on the host path: pinned staging and device input / output."""

    host_in: Any
    host_out: Any
    dev_in: Any
    dev_out: Any

    def close(self) -> None:
        for buffer in (self.host_in, self.host_out, self.dev_in, self.dev_out):
            buffer.close()


class TensorRTBackend(BaseBackend):
    """One deserialised engine, an execution context per binding, one stream; see the module docstring."""

    name = "tensorrt"
    thread_safe = True  # an internal lock serialises the calls

    def __init__(
        self,
        engine_path: str | Path,
        metadata: EngineMetadata,
        device: str = "cuda:0",
        *,
        cuda_graph: bool = True,
        spec: ModelSpec | None = None,
        max_shapes: int = MAX_SHAPES,
    ) -> None:
        super().__init__()
        self.path = Path(engine_path)
        self.metadata = metadata
        self.device = device
        self.ordinal = _device_ordinal(device)
        self.precision = metadata.precision
        self.spec = spec
        self.cuda_graph = cuda_graph
        self.max_shapes = max_shapes
        self.stream = 0
        self._lock = threading.RLock()
        self._cuda: Any = None
        self._stream: Any = None
        self._trt_runtime: Any = None
        self._engine: Any = None
        self._scratch: Any = None
        self._profile = metadata.shape_profile
        self._slots: OrderedDict[tuple[int, ...], _HostSlot] = OrderedDict()
        self._bindings: OrderedDict[tuple[Any, ...], _Binding] = OrderedDict()

    # -- Backend protocol ------------------------------------------------------------------------------

    @property
    def input_spec(self) -> TensorSpec:
        return TensorSpec(self.metadata.input_name, self.metadata.input_dtype, (-1, CHANNELS, -1, -1))

    @property
    def output_spec(self) -> TensorSpec:
        return TensorSpec(self.metadata.output_name, self.metadata.output_dtype, (-1, CHANNELS, -1, -1))

    @property
    def profile(self) -> ShapeProfile:
        return self._profile

    def activate_impl(self) -> None:
        with self._lock:
            try:
                self._cuda = cuda_mem.PrimaryContext(self.ordinal)
                with self._cuda.current():
                    self._load()
            except BaseException:
                self._release()
                raise

    def deactivate_impl(self) -> None:
        with self._lock:
            self._release()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW host batch -> float32 NCHW output, through pinned buffers and the engine's stream."""
        with self._lock, self._cuda.current():
            shape = self._checked_shape(x.shape)
            slot = self._host_slot(shape)
            np.copyto(slot.host_in.array, x, casting="same_kind")
            slot.host_in.copy_to_device(slot.dev_in.ptr, self.stream)
            self._enqueue(shape, slot.dev_in.ptr, slot.dev_out.ptr)
            slot.host_out.copy_from_device(slot.dev_out.ptr, self.stream)
            self._stream.synchronize()
            return slot.host_out.array.astype(np.float32)

    def infer_device_impl(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        """Run on device buffers (DeviceBackend): ordered after ``stream``'s pending work, and before its
        later work, through events; nothing waits on the host. Both pointers must be 256-byte aligned."""
        for role, ptr in (("input", in_ptr), ("output", out_ptr)):
            if ptr % ADDRESS_ALIGNMENT:
                raise InputError(
                    f"the {role} device pointer {ptr:#x} is not {ADDRESS_ALIGNMENT}-byte aligned, "
                    "as TensorRT requires of I/O buffers (allocations are; offsets into them may not be)"
                )
        with self._lock, self._cuda.current():
            checked = self._checked_shape(shape)
            self._stream.wait_for(stream)
            self._enqueue(checked, in_ptr, out_ptr)
            self._stream.signal(stream)

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        trt = import_tensorrt()
        logger = tensorrt_logger()
        logger.take_errors()
        trt_runtime = self._trt_runtime = trt.Runtime(logger)
        if self.metadata.version_compatible:
            trt_runtime.engine_host_code_allowed = True
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise StaleArtifactError(f"cannot read TensorRT engine {self.path}: {exc}") from exc
        engine = self._engine = trt_runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise StaleArtifactError(
                f"TensorRT {trt.__version__} could not deserialise {self.path} ({logger.take_errors()}): "
                "the file is corrupt, or was built by another TensorRT release or for another GPU; "
                "rebuild it with `nrp build` from its ONNX"
            )
        self._check_io(trt, engine)
        self._scratch = cuda_mem.DeviceBuffer(int(engine.device_memory_size_v2))
        self._stream = cuda_mem.Stream()
        self.stream = self._stream.handle

    def _check_io(self, trt: Any, engine: Any) -> None:
        """The engine must be the one-input, one-output purifier its metadata describes."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        expected = ([self.metadata.input_name], [self.metadata.output_name])
        if (inputs, outputs) != expected:
            raise StaleArtifactError(
                f"{self.path} has inputs {inputs} and outputs {outputs}, but its metadata describes "
                f"{expected[0]} and {expected[1]}: rebuild it with `nrp build`"
            )
        lo, opt, hi = (tuple(d) for d in engine.get_tensor_profile_shape(inputs[0], 0))
        self._profile = ShapeProfile(
            min=(lo[0], lo[2], lo[3]), opt=(opt[0], opt[2], opt[3]), max=(hi[0], hi[2], hi[3])
        )

    def _release(self) -> None:
        if self._cuda is None:
            return
        with self._cuda.current():
            self._free()
        self._cuda.close()
        self._cuda = None

    def _free(self) -> None:
        """Everything but the context, which is current: the engine and contexts are destroyed in it."""
        if self._stream is not None:
            self._stream.synchronize()
        for binding in self._bindings.values():
            binding.close()
        for slot in self._slots.values():
            slot.close()
        self._bindings.clear()
        self._slots.clear()
        self._engine = self._trt_runtime = None
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        if self._stream is not None:
            self._stream.close()
            self._stream, self.stream = None, 0

    # -- running ---------------------------------------------------------------------------------------

    def _checked_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The NCHW shape, if it is within the engine's profile; else InputError."""
        if len(shape) != 4 or shape[1] != CHANNELS:
            raise InputError(f"the engine takes (N, {CHANNELS}, H, W) batches, got shape {tuple(shape)}")
        n, _, h, w = (int(d) for d in shape)
        problem = outside_profile(self._profile, n, h, w)
        if problem is not None:
            raise InputError(f"{problem} (the Purifier tiles, pads and splits images to fit)")
        return (n, CHANNELS, h, w)

    def _host_slot(self, shape: tuple[int, int, int, int]) -> _HostSlot:
        slot = self._slots.get(shape)
        if slot is not None:
            self._slots.move_to_end(shape)
            return slot
        in_dtype, out_dtype = np.dtype(self.metadata.input_dtype), np.dtype(self.metadata.output_dtype)
        count = int(np.prod(shape))
        slot = _HostSlot(
            host_in=cuda_mem.PinnedBuffer(shape, in_dtype),
            host_out=cuda_mem.PinnedBuffer(shape, out_dtype),
            dev_in=cuda_mem.DeviceBuffer(count * in_dtype.itemsize),
            dev_out=cuda_mem.DeviceBuffer(count * out_dtype.itemsize),
        )
        self._slots[shape] = slot
        if len(self._slots) > self.max_shapes:
            self._stream.synchronize()
            self._forget_pointers(self._slots.popitem(last=False)[1])
        return slot

    def _forget_pointers(self, slot: _HostSlot) -> None:
        """Free a slot and the bindings on its buffers (their addresses may be reused)."""
        for key in [k for k in self._bindings if k[1] == slot.dev_in.ptr or k[2] == slot.dev_out.ptr]:
            self._bindings.pop(key).close()
        slot.close()

    def _binding(self, shape: tuple[int, int, int, int], in_ptr: int, out_ptr: int) -> _Binding:
        """The execution context of this (shape, input, output), created and set up on first use."""
        key = (shape, in_ptr, out_ptr)
        binding = self._bindings.get(key)
        if binding is not None:
            self._bindings.move_to_end(key)
            return binding
        trt = import_tensorrt()
        context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path} "
                f"({tensorrt_logger().take_errors()}); the GPU may be out of memory"
            )
        context.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        if not context.set_input_shape(self.metadata.input_name, shape):
            raise InputError(f"TensorRT rejected input shape {shape} for {self.path}")
        out_shape = tuple(context.get_tensor_shape(self.metadata.output_name))
        if out_shape != shape:
            raise ModelError(f"{self.path} maps {shape} to {out_shape}; a purifier keeps the input's shape")
        for name, ptr in ((self.metadata.input_name, in_ptr), (self.metadata.output_name, out_ptr)):
            if not context.set_tensor_address(name, ptr):
                raise InputError(
                    f"TensorRT refused address {ptr:#x} for tensor {name!r} of {self.path}: it must be "
                    f"{ADDRESS_ALIGNMENT}-byte aligned device memory ({tensorrt_logger().take_errors()})"
                )
        binding = self._bindings[key] = _Binding(context)
        if len(self._bindings) > 2 * self.max_shapes:
            self._stream.synchronize()  # the evicted context's work must be done before it is destroyed
            self._bindings.popitem(last=False)[1].close()
        return binding

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream):
            raise BackendUnavailableError(
                f"TensorRT failed to enqueue {self.path}: {tensorrt_logger().take_errors()}"
            )

    def _enqueue(self, shape: tuple[int, int, int, int], in_ptr: int, out_ptr: int) -> None:
        """Run the engine on the given buffers, replaying the binding's CUDA graph once it has one."""
        binding = self._binding(shape, in_ptr, out_ptr)
        if binding.graph is not None:
            binding.graph.launch(self.stream)
            binding.replays += 1
            return
        self._execute(binding.context)  # a binding's first enqueue may initialise, which no graph may capture
        if self.cuda_graph and not binding.capture_tried:
            binding.capture_tried = True
            binding.graph = cuda_mem.capture_graph(self._stream, lambda: self._execute(binding.context))
            if binding.graph is None:
                log.info(
                    "TensorRT engine %s: CUDA-graph capture failed for %s; using plain enqueues",
                    self.path,
                    shape,
                )
