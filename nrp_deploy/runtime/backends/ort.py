"""The ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

CPU: one session with full graph optimisation (NCHWc layout transforms, conv + activation fusion),
sequential execution and ``threads`` intra-op threads. ``InferenceSession.run`` is thread-safe, so one
session serves every thread of a Purifier.

CUDA (the ``onnxruntime-gpu`` wheel): inputs and outputs go through I/O binding, so the output stays on the
device until it is copied out once; the provider options that matter for these all-convolution networks
are set: exhaustive cuDNN algorithm search (the first call per shape is slow, the rest fast), the maximum
cuDNN workspace, TF32 off for FP32 (fidelity against the FP32 reference), and NHWC kernels for FP16/INT8
models (tensor cores). ``cuda_graph=True`` with a ``fixed_shape`` captures the whole run in a CUDA graph
over persistent device buffers: that session serves one shape only (the Purifier tiles and pads to it) and
is serialised with a lock. A captured session replays the addresses it captured and ignores later
bindings, so both entry points go through the same persistent buffers: ``infer`` copies the host batch in
and out, ``infer_device`` copies from and to the caller's device buffers. ``execution_provider="tensorrt"`` puts ONNX Runtime's TensorRT EP first (it
needs TensorRT's libraries; the native ``tensorrt`` backend is the better route where TensorRT exists).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.cache import cache_dir
from nrp_deploy.artifacts.sources import ModelSource, artifact_spec
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.errors import BackendUnavailableError, InputError, ModelError
from nrp_deploy.kernels import cuda_api, cuda_mem
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime.backends.base import BaseBackend, engine_unavailable, import_engine
from nrp_deploy.runtime.backends.options import BackendOptions, OrtOptions
from nrp_deploy.runtime.on_demand import onnx_for

INSTALL_HINT = (
    "pip install 'nrp-deploy[cpu]' (ONNX Runtime for CPU) or 'nrp-deploy[gpu]' (ONNX Runtime CUDA 13; "
    "'[gpu-cu12]' for CUDA 12 drivers, NVIDIA's Jetson wheel on JetPack)"
)
_CPU, _CUDA, _TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def _ort() -> Any:
    return import_engine("onnxruntime", "ONNX Runtime", INSTALL_HINT)


def unavailable_reason() -> str | None:
    """None when ONNX Runtime imports, else why not and what to install."""
    return engine_unavailable("onnxruntime", "ONNX Runtime", INSTALL_HINT)


def gpu_usable() -> bool:
    """Whether the CUDA execution provider is built in and the driver sees a device."""
    return _CUDA in _ort().get_available_providers() and cuda_api.cuda_device_count() > 0


def open_backend(
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> OrtBackend:
    """An inactive ONNX Runtime backend for ``source`` (a checkpoint is exported to a cached ONNX first).

    ``precision=None`` means the artifact's own precision (fp32 for a checkpoint); ``device=None`` takes
    CUDA when it is usable here, else the CPU.
    """
    options = OrtOptions.coerce(options)
    if source.kind == "engine":
        raise BackendUnavailableError(f"ONNX Runtime cannot run the TensorRT engine {source.path}")
    ort = _ort()
    if device is None:
        device = "cuda:0" if gpu_usable() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"onnxruntime runs on 'cpu' or 'cuda[:N]', not {device!r}")
    if device.startswith("cuda") and _CUDA not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"this ONNX Runtime build has no CUDA execution provider (it has {ort.get_available_providers()}); "
            "pip uninstall onnxruntime && pip install 'nrp-deploy[gpu]'"
        )
    precision = precision or source.precision or "fp32"
    # INT8: ONNX Runtime's own static quantisation runs faster on CPUs; ModelOpt's Q/DQ suits the GPU.
    path = onnx_for(source, precision, int8_method="ort" if device == "cpu" else "modelopt")
    spec = source.spec or artifact_spec(path)
    return OrtBackend(path, precision=precision, device=device, spec=spec, options=options)


class OrtBackend(BaseBackend):
    """ONNX Runtime session for one ONNX file; see the module docstring and ``OrtOptions``."""

    def __init__(
        self,
        onnx_path: str | Path,
        precision: str = "fp32",
        device: str = "cpu",
        spec: ModelSpec | None = None,
        options: OrtOptions | None = None,
    ) -> None:
        super().__init__()
        options = options or OrtOptions()
        threads, execution_provider = options.threads, options.execution_provider
        cuda_graph, fixed_shape = options.cuda_graph, options.fixed_shape
        self.path = Path(onnx_path)
        self.precision = precision
        self.device = device
        self.spec = spec
        self.threads = threads
        self.device_id = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        self.on_gpu = device.startswith("cuda")
        if execution_provider not in (None, "cpu", "cuda", "tensorrt"):
            raise InputError(f"execution_provider must be cpu, cuda or tensorrt, not {execution_provider!r}")
        self.execution_provider = execution_provider or ("cuda" if self.on_gpu else "cpu")
        if self.execution_provider != "cpu" and not self.on_gpu:
            raise InputError(f"execution_provider {self.execution_provider!r} needs a cuda device")
        if cuda_graph and (not self.on_gpu or fixed_shape is None):
            raise InputError("cuda_graph=True needs a cuda device and a fixed_shape (batch, height, width)")
        self.cuda_graph = cuda_graph
        self.fixed_shape = tuple(fixed_shape) if fixed_shape else None
        self.stream = int(options.stream or 0)
        self.extra_provider_options = dict(options.provider_options or {})
        self.name = "onnxruntime-" + self.execution_provider
        # Session.run is thread-safe; a CUDA-graph session replays one set of buffers, so it is not.
        self.thread_safe = not cuda_graph
        self._session: Any = None
        self._input: TensorSpec | None = None
        self._output: TensorSpec | None = None
        self._model_profile: ShapeProfile | None = None
        self._graph_lock = threading.Lock()
        self._graph_buffers: tuple[Any, Any, Any] | None = None

    # -- Backend protocol ------------------------------------------------------------------------------

    def activate_impl(self) -> None:
        ort = _ort()
        if not self.path.is_file():
            raise InputError(f"ONNX model {self.path} does not exist")
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=self._session_options(), providers=self._providers()
            )
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
            raise BackendUnavailableError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"{self.path}: a purifier has one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        self._input, self._output = (self._spec(arg) for arg in (inputs[0], outputs[0]))
        try:
            self._model_profile = _check_purifier_io(self._input, self._output)
        except ModelError as exc:
            self._session = None
            raise ModelError(f"{self.path}: {exc}") from None
        if self.on_gpu:
            self._check_provider_active()

    def deactivate_impl(self) -> None:
        self._session = None
        self._graph_buffers = None

    @property
    def input_spec(self) -> TensorSpec:
        return self._specs()[0]

    @property
    def output_spec(self) -> TensorSpec:
        return self._specs()[1]

    @property
    def profile(self) -> ShapeProfile | None:
        if self.fixed_shape is None:
            return self._model_profile
        return ShapeProfile(self.fixed_shape, self.fixed_shape, self.fixed_shape)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        session = self._session
        x = np.ascontiguousarray(x, dtype=self.input_spec.dtype)
        if self.cuda_graph:
            with self._graph_lock:
                return self._infer_graph(x)
        inp, out = self._specs()
        with self._run_errors(x.shape):
            if self.on_gpu:
                binding = session.io_binding()
                binding.bind_cpu_input(inp.name, x)
                binding.bind_output(out.name, "cuda", self.device_id)
                session.run_with_iobinding(binding)
                y = binding.copy_outputs_to_cpu()[0]
            else:
                y = session.run([out.name], {inp.name: x})[0]
        return y.astype(np.float32, copy=False)

    def infer_device_impl(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        """Run on device buffers (DeviceBackend). ONNX Runtime's Run waits for its compute stream before
        returning, so the output is complete for any later work; the caller's stream is synchronised
        first unless it is the user compute stream this session was given, so its pending writes are
        visible (without one, the session computes on a non-blocking stream of its own, which not even the
        legacy default stream orders). In CUDA-graph mode the caller's buffers are copied into and out of
        the captured ones, and the copy out is waited for before the next call may replay over it."""
        session = self._session
        if not self.on_gpu:
            raise InputError("infer_device needs the CUDA execution provider; this session runs on the CPU")
        if self.cuda_graph:
            with self._graph_lock:
                self._infer_graph_device(in_ptr, out_ptr, shape, stream)
            return
        if not self._computes_on(stream):
            cuda_mem.synchronize(stream)
        binding = session.io_binding()
        for bind, spec, ptr in (
            (binding.bind_input, self.input_spec, in_ptr),
            (binding.bind_output, self.output_spec, out_ptr),
        ):
            bind(spec.name, "cuda", self.device_id, np.dtype(spec.dtype), list(shape), ptr)
        with self._run_errors(shape):
            session.run_with_iobinding(binding)

    # -- internals -------------------------------------------------------------------------------------

    def _computes_on(self, stream: int) -> bool:
        """Whether ``stream`` is the session's compute stream, so work on it is ordered with its runs."""
        return bool(self.stream) and stream == self.stream

    @contextlib.contextmanager
    def _run_errors(self, shape: tuple[int, ...]) -> Iterator[None]:
        """ONNX Runtime's own error types (Fail, InvalidArgument, RuntimeException: a wrong output shape, a
        failed kernel) raised by a run, as a ``ModelError`` naming the model and the shapes."""
        try:
            yield
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise ModelError(
                f"ONNX Runtime failed to run {self.path} on an input of shape {tuple(shape)} (the model takes "
                f"{_shape_text(self.input_spec.shape)}): {type(exc).__name__}: {first_line}"
            ) from exc

    def _specs(self) -> tuple[TensorSpec, TensorSpec]:
        self.check_active("its tensor specs are known after activate()")
        assert self._input is not None and self._output is not None  # set by every activation
        return self._input, self._output

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        dtype = _NUMPY_DTYPES.get(arg.type)
        if dtype is None:
            raise InputError(f"tensor {arg.name!r} has type {arg.type}; a purifier takes float or float16")
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, dtype, shape)

    def _session_options(self) -> Any:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.inter_op_num_threads = 1  # a purifier is one chain of convolutions: no parallel branches to run
        if self.cuda_graph:
            # CUDA-graph capture needs every node on the GPU; memory patterns are pointless for one shape.
            opts.enable_mem_pattern = False
        return opts

    def _providers(self) -> list[Any]:
        if not self.on_gpu:
            return [_CPU]
        cuda = {
            "device_id": self.device_id,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
            "use_tf32": "0" if self.precision == "fp32" else "1",
            "prefer_nhwc": "0" if self.precision == "fp32" else "1",
            "enable_cuda_graph": "1" if self.cuda_graph else "0",
        }
        if self.stream:
            cuda.update(has_user_compute_stream="1", user_compute_stream=str(self.stream))
        if self.execution_provider == "tensorrt":
            return [(_TRT, {**self._trt_options(), **self.extra_provider_options}), (_CUDA, cuda), _CPU]
        return [(_CUDA, {**cuda, **self.extra_provider_options}), _CPU]

    def _trt_options(self) -> dict[str, Any]:
        cache = cache_dir() / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        opts: dict[str, Any] = {
            "device_id": self.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_cuda_graph_enable": self.cuda_graph,
        }
        if self.fixed_shape:
            n, h, w = self.fixed_shape
            name, channels = self._model_input()
            shape = f"{name}:{n}x{channels}x{h}x{w}"
            opts.update(
                trt_profile_min_shapes=shape, trt_profile_opt_shapes=shape, trt_profile_max_shapes=shape
            )
        if self.stream:
            opts.update(has_user_compute_stream=True, user_compute_stream=str(self.stream))
        return opts

    def _model_input(self) -> tuple[str, int]:
        """The ONNX model's input name and channel count (3 where the model leaves it dynamic), read by a
        CPU session without graph optimisation: the TensorRT EP's profile strings need them up front."""
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            arg = ort.InferenceSession(str(self.path), sess_options=opts, providers=[_CPU]).get_inputs()[0]
        except Exception as exc:  # onnxruntime's own Fail / InvalidGraph types
            raise BackendUnavailableError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        channels = arg.shape[1] if len(arg.shape) == 4 else None
        return arg.name, channels if isinstance(channels, int) and channels > 0 else 3

    def _check_provider_active(self) -> None:
        wanted = _TRT if self.execution_provider == "tensorrt" else _CUDA
        active = self._session.get_providers()
        if wanted not in active:
            self._session = None
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {wanted} on {self.device} (active: {active}); check the CUDA "
                "driver and libraries" + (" and that TensorRT is installed" if wanted == _TRT else "")
            )

    def _graph_io(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """The persistent input / output buffers and binding the CUDA graph is captured over."""
        n, h, w = self.fixed_shape or (0, 0, 0)
        if tuple(shape) != (n, 3, h, w):
            raise InputError(f"this CUDA-graph session runs shape {(n, 3, h, w)} only, got {tuple(shape)}")
        if self._graph_buffers is None:
            ort = _ort()
            inp, out = self._specs()
            x_dev, y_dev = (
                ort.OrtValue.ortvalue_from_shape_and_type(
                    list(shape), np.dtype(spec.dtype), "cuda", self.device_id
                )
                for spec in (inp, out)
            )
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(inp.name, x_dev)
            binding.bind_ortvalue_output(out.name, y_dev)
            self._graph_buffers = (x_dev, y_dev, binding)
        return self._graph_buffers

    def _infer_graph(self, x: np.ndarray) -> np.ndarray:
        """CUDA-graph run: copy into the persistent input buffer, replay, copy the output out."""
        x_dev, y_dev, binding = self._graph_io(x.shape)
        x_dev.update_inplace(x)
        with self._run_errors(x.shape):
            self._session.run_with_iobinding(binding)
        return y_dev.numpy().astype(np.float32, copy=False)

    def _infer_graph_device(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        """CUDA-graph run from and to device buffers, through the persistent ones, ordered on ``stream``."""
        x_dev, y_dev, binding = self._graph_io(shape)
        count = int(np.prod(shape))
        cuda_mem.copy_device(
            x_dev.data_ptr(), in_ptr, count * np.dtype(self.input_spec.dtype).itemsize, stream
        )
        ordered = self._computes_on(stream)
        if not ordered:
            cuda_mem.synchronize(stream)
        with self._run_errors(shape):
            self._session.run_with_iobinding(binding)
        cuda_mem.copy_device(
            out_ptr, y_dev.data_ptr(), count * np.dtype(self.output_spec.dtype).itemsize, stream
        )
        if not ordered:  # the next replay (under the lock, on the session's stream) overwrites y_dev
            cuda_mem.synchronize(stream)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("?" if d < 0 else str(d) for d in shape) + ")"


def _check_purifier_io(inp: TensorSpec, out: TensorSpec) -> ShapeProfile | None:
    """Check that a model's input and output can be NCHW RGB images of one size; return the shape profile
    its fixed dimensions imply (None when batch, height and width are all dynamic), so that the Purifier
    tiles and pads images to a fixed-shape model instead of handing it shapes it cannot take."""
    for role, spec in (("input", inp), ("output", out)):
        if len(spec.shape) != 4:
            raise ModelError(
                f"its {role} {spec.name!r} has shape {_shape_text(spec.shape)}; a purifier's {role} is an NCHW "
                "image batch (4 dimensions)"
            )
        if spec.shape[1] not in (-1, 3):
            raise ModelError(
                f"its {role} {spec.name!r} has {spec.shape[1]} channels (shape {_shape_text(spec.shape)}); a "
                "purifier takes and returns 3 (RGB) channels in NCHW order"
            )
    for axis, word in ((0, "batch size"), (2, "height"), (3, "width")):
        a, b = inp.shape[axis], out.shape[axis]
        if a >= 0 and b >= 0 and a != b:
            raise ModelError(f"its output {word} {b} differs from its input {word} {a}")
    n, _, h, w = inp.shape
    if n < 0 and h < 0 and w < 0:
        return None
    if n > 1 or 0 in (n, h, w):
        raise ModelError(
            f"its input shape {_shape_text(inp.shape)} is fixed in a way a purifier cannot use: give it a "
            "dynamic (or 1) batch size and nonzero height and width"
        )
    big = 1 << 30
    side = max(h, w) if max(h, w) > 0 else 512  # a fixed side sets the tile when the other one is dynamic
    dims = [(1, 1, 1) if n == 1 else (1, 1, big)]
    dims += [(d, d, d) if d > 0 else (1, side, big) for d in (h, w)]
    lo, mid, hi = (tuple(d[k] for d in dims) for k in range(3))
    return ShapeProfile(lo, mid, hi)
