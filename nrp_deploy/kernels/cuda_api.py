"""Lazy access to NVIDIA's cuda-python bindings (``cuda.bindings``), with errors that say what to install.

Importing ``nrp_deploy.kernels`` must work on machines without CUDA, so nothing here imports
``cuda.bindings`` until a function needs it. cuda-bindings calls return ``(err, *results)``; ``check``
turns a non-success code into an exception that carries the call's name and the error's name.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from nrp_deploy.errors import BackendUnavailableError, NRPDeployError

INSTALL_HINT = (
    "install NVIDIA's cuda-python bindings and NVRTC: pip install 'nrp-deploy[nvrtc]' "
    "(compile only) or 'nrp-deploy[gpu]' (GPU runtime)"
)


class CudaError(NRPDeployError):
    """A CUDA driver or NVRTC call that returned an error code."""


@functools.cache
def nvrtc_module() -> ModuleType:
    """``cuda.bindings.nvrtc``, after checking that libnvrtc itself can be loaded."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # cuda-pathfinder raises its own error types when libnvrtc is missing
        raise BackendUnavailableError(
            f"libnvrtc could not be loaded ({exc}); pip install nvidia-cuda-nvrtc, or {INSTALL_HINT}"
        ) from exc
    return nvrtc


@functools.cache
def driver_module() -> ModuleType:
    """``cuda.bindings.driver`` (needs only the NVIDIA driver's libcuda at call time)."""
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    return driver


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-bindings result tuple: raise on error, return None / the value / the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", str(int(err)))
        raise CudaError(f"{call} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def init_driver() -> ModuleType:
    """``cuda.bindings.driver`` after a successful ``cuInit``; BackendUnavailableError without driver/GPU."""
    driver = driver_module()
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # cuda-pathfinder's DynamicLibNotFoundError when libcuda is absent
        raise BackendUnavailableError(f"the NVIDIA driver (libcuda) could not be loaded: {exc}") from exc
    if int(err) != 0:
        raise BackendUnavailableError(f"cuInit failed ({err.name}): no usable CUDA driver or device")
    return driver


def cuda_device_count() -> int:
    """Number of CUDA devices the driver sees; 0 when cuda-python, the driver or a device is missing."""
    try:
        return int(check(init_driver().cuDeviceGetCount(), "cuDeviceGetCount"))
    except (BackendUnavailableError, CudaError):
        return 0
