"""The torch backend: the eager FP32 baseline, optionally half precision, channels_last or torch.compile.

torch is imported only when this backend is opened, so the runtime stays importable without it. With the
defaults (fp32, contiguous, not compiled) the model runs exactly as ``nrp_deploy.models.eager.EagerPurifier``
runs it, and the shared pre/post-processing reproduces that baseline byte for byte. FP32 is true FP32 on
every GPU: TF32 is switched off around each call (``models.tf32``), as the TensorRT and ONNX Runtime FP32
paths have it.

On CUDA it is a ``DeviceBackend``: ``infer_device`` views the caller's device buffers as tensors (through
the CUDA Array Interface, no copy), runs the module on a stream of the backend's own and writes the output
into the caller's buffer, ordered against the caller's stream through events, in the device's primary
context, which torch shares with the fused kernels. So ``load_purifier(..., backend="torch",
device="cuda")`` takes the fused uint8 path (upload, conversion and noise in one kernel, the module, one
kernel back to uint8) like the TensorRT and ONNX Runtime backends.

Thread safety: an eval-mode module under ``torch.inference_mode`` keeps no state between calls, so
concurrent ``infer`` calls are safe; a compiled module is serialised with a lock, since Dynamo may
recompile on a new shape and its caches are not meant to be filled from several threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.errors import BackendUnavailableError, InputError, ModelError
from nrp_deploy.runtime.backends.base import BaseBackend, engine_unavailable, import_engine
from nrp_deploy.runtime.backends.options import BackendOptions, TorchOptions

INSTALL_HINT = (
    "pip install torch (the CPU or CUDA build for your machine), then pip install 'nrp-deploy[torch]'"
)
_DTYPES = {"fp32": "float32", "fp16": "float16"}


def _torch() -> Any:
    return import_engine("torch", "torch", INSTALL_HINT)


def unavailable_reason() -> str | None:
    """None when torch imports, else why not and what to install."""
    return engine_unavailable("torch", "torch", INSTALL_HINT)


def open_backend(
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> TorchBackend:
    """An inactive torch backend for a checkpoint source; ``device=None`` takes CUDA when torch sees one."""
    options = TorchOptions.coerce(options)
    if source.kind != "checkpoint":
        raise BackendUnavailableError(
            f"the torch backend runs checkpoints (.pth / .safetensors), not the {source.kind} {source.path}"
        )
    precision = precision or "fp32"
    if precision not in _DTYPES:
        raise BackendUnavailableError(
            f"the torch backend runs fp32 or fp16, not {precision}; use onnxruntime or tensorrt for int8"
        )
    torch = _torch()
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"torch {torch.__version__} sees no CUDA device (a CPU build, or no driver / GPU)"
            )
        device = str(torch.device(device)) if ":" in device else f"cuda:{torch.cuda.current_device()}"
    elif device != "cpu":
        raise InputError(f"the torch backend runs on 'cpu' or 'cuda[:N]', not {device!r}")
    return TorchBackend(source, precision=precision, device=device, options=options)


class _CudaArray:
    """A device buffer described by the CUDA Array Interface (v3), which ``torch.as_tensor`` views in place.

    ``stream`` is None: the backend orders the work against the caller's stream itself.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: str) -> None:
        self.__cuda_array_interface__ = {
            "shape": tuple(int(d) for d in shape),
            "typestr": np.dtype(dtype).str,
            "data": (int(ptr), False),
            "strides": None,
            "stream": None,
            "version": 3,
        }


class TorchBackend(BaseBackend):
    """An eval-mode torch module for one checkpoint; see the module docstring."""

    def __init__(
        self,
        source: ModelSource,
        precision: str = "fp32",
        device: str = "cpu",
        options: TorchOptions | None = None,
    ) -> None:
        super().__init__()
        options = options or TorchOptions()
        self.source = source
        self.spec = source.spec
        self.precision = precision
        self.device = device
        self.threads = options.threads
        self.channels_last = options.channels_last
        self.compile = options.compile
        self.name = f"torch-{device.partition(':')[0]}"
        self.thread_safe = not options.compile
        dtype = _DTYPES[precision]
        self._specs = (
            TensorSpec("input", dtype, (-1, 3, -1, -1)),
            TensorSpec("output", dtype, (-1, 3, -1, -1)),
        )
        self._module: Any = None
        self._stream: Any = None  # torch.cuda.Stream of infer_device, on CUDA
        self.stream = 0
        self._lock = threading.Lock()

    @property
    def input_spec(self) -> TensorSpec:
        return self._specs[0]

    @property
    def output_spec(self) -> TensorSpec:
        return self._specs[1]

    @property
    def profile(self) -> ShapeProfile | None:
        return None

    def activate_impl(self) -> None:
        torch = _torch()
        from nrp_deploy.models import load_model

        if self.threads:
            torch.set_num_threads(int(self.threads))  # process-wide: torch has one intra-op pool
        loaded = load_model(self.source.path, device=self.device)
        self.spec = loaded.spec
        module = loaded.module.eval()
        if self.precision == "fp16":
            module = module.half()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = torch.compile(module) if self.compile else module
        if self.device.startswith("cuda"):
            self._stream = torch.cuda.Stream(device=self.device)
            self.stream = int(self._stream.cuda_stream)

    def deactivate_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
            self._stream, self.stream = None, 0
        self._module = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if self.thread_safe:
            return self._forward(x)
        with self._lock:
            return self._forward(x)

    def infer_device_impl(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        """Run on device buffers (DeviceBackend): the module on this backend's stream, after everything
        enqueued so far on ``stream``, and ``stream``'s later work after it; nothing waits on the host."""
        if self._stream is None:
            raise InputError(f"infer_device needs a CUDA device; this torch backend runs on {self.device}")
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise InputError(f"infer_device takes an (N, 3, H, W) shape, got {tuple(shape)}")
        if self.thread_safe:
            self._forward_device(in_ptr, out_ptr, shape, stream)
            return
        with self._lock:
            self._forward_device(in_ptr, out_ptr, shape, stream)

    def _forward_device(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        torch = _torch()
        from nrp_deploy.models.tf32 import tf32_allowed

        own = self._stream
        with torch.cuda.device(self.device), tf32_allowed(False):
            x = torch.as_tensor(_CudaArray(in_ptr, shape, self.input_spec.dtype), device=self.device)
            out = torch.as_tensor(_CudaArray(out_ptr, shape, self.output_spec.dtype), device=self.device)
            caller = None if stream == self.stream else torch.cuda.ExternalStream(stream, device=self.device)
            if caller is not None:
                own.wait_stream(caller)
            with torch.cuda.stream(own), torch.inference_mode():
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = self._module(x)
                if tuple(y.shape) != shape:  # copy_ would broadcast a 1-channel output over 3 silently
                    raise ModelError(
                        f"the model on {self.name} returned shape {tuple(y.shape)} for an input of shape "
                        f"{shape}: a purifier must return an image of its input's size with 3 channels"
                    )
                out.copy_(y)
            if caller is not None:
                caller.wait_stream(own)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        torch = _torch()
        from nrp_deploy.models.tf32 import tf32_allowed

        with torch.inference_mode(), tf32_allowed(False):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            if self.precision == "fp16":
                t = t.half()
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            y = self._module(t)
            return y.float().cpu().numpy()
