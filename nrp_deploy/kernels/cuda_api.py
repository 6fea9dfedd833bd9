"""Lazy access to NVIDIA's cuda-python bindings (``cuda.bindings``), with errors that say what to install.

Importing ``nrp_deploy.kernels`` must work on machines without CUDA, so nothing here imports
``cuda.bindings`` until a function needs it. cuda-bindings calls return ``(err, *results)``; ``check``
turns a non-success code into an exception that carries the call's name and the error's name.

Two things go wrong on real machines and get their own messages here. NVRTC comes either from a pip
wheel (``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc``) or from the system's CUDA (JetPack ships its
own, and the CUDA 12 wheel is built for Arm servers, not Jetson): ``nvrtc_library`` says which one was
loaded. And each cuda-bindings major needs a driver of the same CUDA major (13.x a 580+ driver), which a
Jetson or a CUDA 12 host does not have: ``init_driver`` names both versions instead of failing obscurely.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nrp_deploy.errors import BackendUnavailableError, NRPDeployError

INSTALL_HINT = (
    "install NVIDIA's cuda-python bindings and NVRTC: pip install 'nrp-deploy[gpu]' (the same as "
    "'nrp-deploy[gpu-cu13]', CUDA 13 driver), 'nrp-deploy[gpu-cu12]' (CUDA 12 driver), 'nrp-deploy[jetson]' "
    "(JetPack 6) or 'nrp-deploy[nvrtc]' (compile only)"
)
NVRTC_HINT = (
    "pip install nvidia-cuda-nvrtc-cu12 (CUDA 12) or nvidia-cuda-nvrtc (CUDA 13), or make the system's "
    "libnvrtc findable (on Jetson: JetPack's CUDA, e.g. export CUDA_HOME=/usr/local/cuda)"
)

#: Oldest Linux driver each cuda-bindings major supports (cuda-python's installation notes: CUDA 12's
#: minor-version-compatibility baseline, and CUDA 13's minimum).
BINDINGS_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}


class CudaError(NRPDeployError):
    """A CUDA driver or NVRTC call that returned an error code."""


@dataclass(frozen=True)
class NvrtcLibrary:
    """The libnvrtc that cuda-bindings loaded: its path, and whether it came from a pip wheel or the system."""

    path: str | None
    source: str  # "wheel", "conda" or "system"
    found_via: str  # how cuda-pathfinder found it (site-packages, conda, system, CUDA_PATH, ...)

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.source}{where}"


def nvrtc_source(path: str | None, found_via: str) -> str:
    """Classify a loaded libnvrtc: 'wheel' inside a Python environment's nvidia/ package, 'conda', else
    'system' (the dynamic loader's search path, CUDA_HOME / CUDA_PATH, a CUDA or JetPack install)."""
    if path:
        parts = os.path.normpath(path).split(os.sep)
        for i, part in enumerate(parts[:-1]):
            if part in ("site-packages", "dist-packages") and parts[i + 1] == "nvidia":
                return "wheel"
    if found_via == "site-packages":
        return "wheel"
    return "conda" if found_via == "conda" else "system"


@functools.cache
def nvrtc_library() -> NvrtcLibrary:
    """Find and load libnvrtc the way cuda-bindings does (cuda-pathfinder: wheels first, then conda, then the
    system), and say which one it is. BackendUnavailableError, naming both routes, when there is none."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    try:
        loaded = load_nvidia_dynamic_lib("nvrtc")
    except Exception as exc:  # DynamicLibNotFoundError and its kin, or a library that fails to load
        raise BackendUnavailableError(
            f"libnvrtc could not be found or loaded, neither from a wheel nor from the system ({exc}); "
            f"{NVRTC_HINT}"
        ) from exc
    found_via = str(getattr(loaded, "found_via", None) or "unknown")
    return NvrtcLibrary(
        path=loaded.abs_path, source=nvrtc_source(loaded.abs_path, found_via), found_via=found_via
    )


@functools.cache
def nvrtc_module() -> ModuleType:
    """``cuda.bindings.nvrtc``, after checking that libnvrtc itself can be found and loaded."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    library = nvrtc_library()
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # a library of another CUDA major than the bindings, or a broken install
        raise BackendUnavailableError(
            f"libnvrtc from the {library.describe()} does not work with cuda-bindings "
            f"{bindings_version()} ({exc}); {NVRTC_HINT}"
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


@contextlib.contextmanager
def context_current(drv: Any, context: Any) -> Iterator[None]:
    """``context`` current on this thread for the block, and the caller's current context restored after.

    It is pushed and popped (nothing is done when it is current already), never set: a call on cuda:1
    must not leave the calling thread's current device, which torch and CuPy read from the current
    context, changed behind the caller's back.
    """
    current = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(current) == int(context):
        yield
        return
    check(drv.cuCtxPushCurrent(context), "cuCtxPushCurrent")
    try:
        yield
    finally:
        check(drv.cuCtxPopCurrent(), "cuCtxPopCurrent")


def bindings_version() -> str:
    """The installed cuda-bindings version ('unknown' when its metadata cannot be read)."""
    try:
        return importlib.metadata.version("cuda-bindings")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def format_cuda_version(version: int) -> str:
    """cuDriverGetVersion's integer (e.g. 12060) as 'major.minor' (12.6)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_too_old(driver_version: int, bindings: str) -> str | None:
    """Why a driver supporting CUDA ``driver_version`` (cuDriverGetVersion) cannot run cuda-bindings
    ``bindings``, or None when it can (the driver's CUDA major is at least the bindings' major)."""
    try:
        major = int(bindings.split(".")[0])
    except ValueError:
        return None
    if driver_version // 1000 >= major:
        return None
    minimum = BINDINGS_MIN_DRIVER.get(major)
    needs = f"a CUDA {major} driver" + (f" (Linux driver >= {minimum})" if minimum else "")
    remedy = "upgrade the driver"
    if major >= 13:
        remedy += (
            ", or install the CUDA 12 bindings: pip install 'nrp-deploy[gpu-cu12]' "
            "('nrp-deploy[jetson]' on JetPack 6)"
        )
    return (
        f"the NVIDIA driver supports CUDA {format_cuda_version(driver_version)}, but the installed "
        f"cuda-bindings {bindings} needs {needs}: {remedy}"
    )


def init_driver() -> ModuleType:
    """``cuda.bindings.driver`` after a successful ``cuInit``; BackendUnavailableError without driver/GPU,
    or with a driver too old for the installed cuda-bindings (both versions named)."""
    driver = driver_module()
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # cuda-pathfinder's DynamicLibNotFoundError when libcuda is absent
        raise BackendUnavailableError(f"the NVIDIA driver (libcuda) could not be loaded: {exc}") from exc
    _check_driver_supports_bindings(driver)
    if int(err) != 0:
        raise BackendUnavailableError(f"cuInit failed ({err.name}): no usable CUDA driver or device")
    return driver


@functools.cache
def _check_driver_supports_bindings(driver: ModuleType) -> None:
    """cuDriverGetVersion works before (and without) a successful cuInit, so a failed cuInit caused by a
    too-old driver is reported as that."""
    try:
        err, version = driver.cuDriverGetVersion()
    except Exception:  # the version query itself unavailable: let cuInit's own result speak
        return
    if int(err) != 0:
        return
    reason = driver_too_old(int(version), bindings_version())
    if reason is not None:
        raise BackendUnavailableError(reason)


def cuda_device_count() -> int:
    """Number of CUDA devices the driver sees; 0 when cuda-python, the driver or a device is missing."""
    try:
        return int(check(init_driver().cuDeviceGetCount(), "cuDeviceGetCount"))
    except (BackendUnavailableError, CudaError):
        return 0
