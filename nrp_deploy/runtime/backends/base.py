"""The protocol every inference backend implements, in the spirit of Polygraphy's runners.

A backend wraps one inference engine for one model: ``activate()`` loads it (session, engine, module),
``deactivate()`` frees it, ``infer()`` maps a float32 NCHW host array to the float32 NCHW output. The
Purifier does everything else (validation, pre/post-processing, the dynamic defence, tiling, batching), so a
backend stays small and all backends share that one path.

GPU backends also implement ``DeviceBackend.infer_device`` on device buffers, so that the fused CUDA
pre/post-processing kernels can write the engine's input and read its output without a host round trip.

``BaseBackend`` is what the backends here share (after Polygraphy's ``BaseRunner``): its public methods
check the backend's state once, in one place, and call the subclass's ``activate_impl``,
``deactivate_impl``, ``infer_impl`` and ``infer_device_impl``. Using a backend that is not active raises
``BackendNotActiveError``: a mistake in the calling code, not bad input. ``Backend`` and
``DeviceBackend`` stay protocols, so an engine wrapped elsewhere (the benchmark's OpenVINO) fits too.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nrp_deploy.artifacts import metadata, sources
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.deprecation import moved_names
from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.models.spec import ModelSpec

#: ``PRECISIONS`` and ``ModelSource`` lived here; they are artifact facts now.
__getattr__ = moved_names(__name__, {"PRECISIONS": metadata, "ModelSource": sources})


@runtime_checkable
class Backend(Protocol):
    """One engine for one model; see the module docstring.

    ``name`` is the concrete choice (``onnxruntime-cpu``, ``onnxruntime-cuda``, ``torch-cpu``, ``tensorrt``);
    ``device`` is ``cpu`` or ``cuda:N``; ``precision`` what it runs (fp32 / fp16 / int8); ``spec`` the
    architecture when the backend learnt it (checkpoint, artifact metadata), else None. ``thread_safe``
    says whether ``infer`` may run from several threads at once; the Purifier serialises calls with a lock
    when it is False.
    """

    name: str
    device: str
    precision: str
    spec: ModelSpec | None
    thread_safe: bool

    @property
    def input_spec(self) -> TensorSpec: ...

    @property
    def output_spec(self) -> TensorSpec: ...

    @property
    def profile(self) -> ShapeProfile | None: ...

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW host array in [0, 1] -> float32 NCHW host array (unclamped model output)."""
        ...


@runtime_checkable
class DeviceBackend(Backend, Protocol):
    """A GPU backend that also runs on device buffers.

    ``infer_device`` reads ``shape`` (N, C, H, W) elements of ``input_spec.dtype`` at device pointer
    ``in_ptr`` and writes the output (``output_spec.dtype``, same shape) to ``out_ptr``. The work is ordered
    after everything already enqueued on the CUDA stream ``stream`` (a ``cudaStream_t`` as an int; 0 is the
    legacy default stream), and the output is complete for anything enqueued on ``stream`` after the call
    returns. ``stream`` (the attribute) is the stream the backend itself enqueues on; a caller that launches
    its kernels there avoids any cross-stream synchronisation. All pointers live in the device's primary
    context, which TensorRT, ONNX Runtime, torch and the NVRTC kernels share.
    """

    stream: int

    def infer_device(
        self, in_ptr: int, out_ptr: int, shape: tuple[int, int, int, int], stream: int
    ) -> None: ...


def import_engine(module: str, name: str, install_hint: str) -> Any:
    """The inference library ``module`` a backend runs on, imported on first use; when it is missing, a
    ``BackendUnavailableError`` naming it (``name``) and what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{name} is not installed ({exc}); {install_hint}") from exc


def engine_unavailable(module: str, name: str, install_hint: str) -> str | None:
    """A backend's ``unavailable_reason`` when its only requirement is its library: None when ``module``
    imports, else why not and what to install."""
    try:
        import_engine(module, name, install_hint)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


class BackendNotActiveError(RuntimeError):
    """A backend used before ``activate()`` or after ``deactivate()``: a programming error in the caller, not
    bad input (hence not an ``InputError``, nor an ``NRPDeployError`` a user is expected to catch)."""


class BaseBackend(ABC):
    """The state every backend keeps, checked once here; subclasses implement the ``*_impl`` methods.

    ``activate()`` twice, or ``deactivate()`` of an inactive backend, does nothing. ``infer`` and
    ``infer_device`` raise ``BackendNotActiveError`` unless the backend is active. A backend without a device
    path leaves ``infer_device_impl`` as it is (an ``InputError`` saying so).
    """

    name: str
    device: str
    precision: str
    spec: ModelSpec | None
    thread_safe: bool = True
    #: The CUDA stream the backend enqueues on (0 when it has none).
    stream: int = 0

    def __init__(self) -> None:
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def check_active(self, why: str = "call activate() first") -> None:
        if not self._active:
            raise BackendNotActiveError(f"backend {self.name} is not active: {why}")

    def activate(self) -> None:
        if self._active:
            return
        self.activate_impl()
        self._active = True

    def deactivate(self) -> None:
        if not self._active:
            return
        try:
            self.deactivate_impl()
        finally:
            self._active = False

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW host array in [0, 1] -> float32 NCHW host array (unclamped model output)."""
        self.check_active()
        return self.infer_impl(x)

    def infer_device(self, in_ptr: int, out_ptr: int, shape: tuple[int, int, int, int], stream: int) -> None:
        """Run on device buffers (``DeviceBackend``); see ``infer_device_impl`` of each backend."""
        self.check_active()
        self.infer_device_impl(int(in_ptr), int(out_ptr), tuple(shape), int(stream))

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def infer_device_impl(self, in_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        raise InputError(f"backend {self.name} runs on the host: infer_device needs a GPU backend")
