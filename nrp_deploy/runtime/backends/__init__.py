"""The backend registry: which backends exist, which work here, and opening one by name.

Each backend lives in its own module that provides:

- ``INSTALL_HINT``: what to install when it is missing;
- ``unavailable_reason() -> str | None``: a cheap check (imports, devices) without loading any model;
- ``open_backend(source: ModelSource, precision: str | None, device: str | None, options) -> Backend``:
  an inactive backend (a ``BaseBackend``), or ``BackendUnavailableError`` saying why it cannot run this
  source here. ``precision`` None means "not asked" (the artifact's own, fp32 for a checkpoint); ``device``
  None means the backend's best device here; ``options`` are the backend's typed options
  (``backends.options``: ``TensorRTOptions``, ``OrtOptions``, ``TorchOptions``, or the common
  ``BackendOptions``), or a mapping of the same names (unknown ones are an ``InputError``).

``AUTO_ORDER`` is the preference of ``backend="auto"`` on GPU machines and with ``NRP_DEPLOY_AUTO=order``:
native TensorRT, then ONNX Runtime (which takes its CUDA provider when a GPU is usable, else the CPU), then
eager torch. On a CPU, ``runtime.auto`` times the CPU backends instead (OpenVINO included). Importing a
backend module imports none of its engine (TensorRT, ONNX Runtime, OpenVINO, torch): that happens when it
is checked or opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from nrp_deploy.artifacts.metadata import PRECISIONS
from nrp_deploy.artifacts.sources import ModelSource
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.runtime.backends import openvino, ort, tensorrt, torch_eager
from nrp_deploy.runtime.backends.base import Backend, BackendNotActiveError, BaseBackend, DeviceBackend
from nrp_deploy.runtime.backends.options import (
    BackendOptions,
    OpenVinoOptions,
    OrtOptions,
    TensorRTOptions,
    TorchOptions,
)

_MODULES: dict[str, ModuleType] = {
    "tensorrt": tensorrt,
    "onnxruntime": ort,
    "torch": torch_eager,
    "openvino": openvino,
}
BACKENDS = tuple(_MODULES)
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendNotActiveError",
    "BackendOptions",
    "BaseBackend",
    "DeviceBackend",
    "ModelSource",
    "OpenVinoOptions",
    "OrtOptions",
    "ShapeProfile",
    "TensorRTOptions",
    "TensorSpec",
    "TorchOptions",
    "available_backends",
    "backend_module",
    "open_backend",
]


def backend_module(name: str) -> ModuleType:
    """The module implementing backend ``name``; BackendUnavailableError for an unknown name."""
    if name not in _MODULES:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return _MODULES[name]


def available_backends() -> dict[str, str | None]:
    """Each backend name -> None when it can run here, else the reason (with what to install)."""
    result: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            result[name] = backend_module(name).unavailable_reason()
        except BackendUnavailableError as exc:
            result[name] = str(exc)
    return result


def open_backend(
    name: str,
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> Backend:
    """Open backend ``name`` (not ``auto``) for ``source``; raises BackendUnavailableError with the reason."""
    module = backend_module(name)
    reason = module.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name} is unavailable: {reason}")
    return module.open_backend(source, precision, device, options)
