"""What the TensorRT builder and backend share: importing TensorRT lazily, its logger, the machine's identity.

TensorRT is optional and heavy, so nothing imports it at module level: ``import_tensorrt`` does, on first
use, and turns a missing package or missing libraries into ``BackendUnavailableError`` saying what to
install. The code supports TensorRT 10.x (10.3 is what JetPack 6 ships) and 11.x; 11 removed the weak
typing API (precision builder flags, calibrators, ``device_memory_size``) and always builds strongly typed
networks. Version-dependent names are looked up by name, never hard-coded (the strongly-typed flag's bit
is 1 in 10.x and 0 in 11.x).

TensorRT below 10 (JetPack 6.0 ships 8.6) lacks the strongly typed network our builds rely on, so
``import_tensorrt`` refuses it with what to install; ``check_build_options`` refuses, before any build,
options the GPU at hand cannot honour (hardware compatibility on Jetson's integrated GPUs).

Every TensorRT name our code touches is checked against the real bindings of 10.3, 10.16, 11.0 and 11.4 by
tests/test_tensorrt_api.py, which reads the code's syntax tree: ``trt.X.Y`` chains, plus attributes of
local variables named as in ``TRT_OBJECTS`` (so name every variable bound to a TensorRT object after that
table). A name that exists only in some releases must be reached through ``getattr(obj, "name", None)``,
which the check treats as optional.
"""

from __future__ import annotations

import functools
import platform
from types import ModuleType
from typing import Any

from nrp_deploy.errors import BackendUnavailableError, InputError
from nrp_deploy.kernels.cuda_api import check, init_driver
from nrp_deploy.tensorrt.engine import BuildOptions, TargetEnvironment

INSTALL_HINT = (
    "install NVIDIA TensorRT 10.x or 11.x with its Python bindings (x86-64: pip install tensorrt-cu12 or "
    "tensorrt-cu13 from NVIDIA's index, see docs.nvidia.com/deeplearning/tensorrt; Jetson: JetPack 6.1/6.2's "
    "TensorRT 10.3, seen from a venv made with --system-site-packages) and cuda-python: pip install "
    "'nrp-deploy[gpu-cu13]', 'nrp-deploy[gpu-cu12]' or 'nrp-deploy[jetson]'"
)
#: The oldest TensorRT major with the strongly typed networks and tensor API the code uses.
MIN_TENSORRT_MAJOR = 10
TOO_OLD_HINT = (
    "on Jetson, move to JetPack 6.1 or 6.2 (TensorRT 10.3; JetPack 6.0 ships 8.6, under which only the "
    "onnxruntime backend runs); elsewhere install TensorRT 10 or 11 (pip install tensorrt-cu12 or "
    "tensorrt-cu13 from NVIDIA's index, see docs.nvidia.com/deeplearning/tensorrt)"
)
#: Compute capabilities of Jetson's integrated (Tegra) GPUs: Nano/TX1, TX2, Xavier, Orin.
TEGRA_COMPUTE_CAPABILITIES = frozenset({(5, 3), (6, 2), (7, 2), (8, 7)})

#: Variable (or attribute) names bound to TensorRT objects in our code -> their class in the bindings.
#: tests/test_tensorrt_api.py checks every ``<name>.<attr>`` against that class in each release.
TRT_OBJECTS: dict[str, str] = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "parser_error": "ParserError",
    "config": "IBuilderConfig",
    "opt_profile": "IOptimizationProfile",
    "timing_cache": "ITimingCache",
    "layer": "ILayer",
    "tensor": "ITensor",
    "input_tensor": "ITensor",
    "output_tensor": "ITensor",
    "trt_runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
}


@functools.cache
def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``BackendUnavailableError`` saying what is missing and what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:  # also raised when libnvinfer.so cannot be loaded
        raise BackendUnavailableError(f"TensorRT is not available ({exc}); {INSTALL_HINT}") from exc
    except OSError as exc:
        raise BackendUnavailableError(
            f"TensorRT's libraries could not be loaded ({exc}); {INSTALL_HINT}"
        ) from exc
    check_tensorrt_version(str(getattr(trt, "__version__", "unknown")))
    return trt


def check_tensorrt_version(version: str) -> None:
    """BackendUnavailableError, saying what to install, for a TensorRT older than ``MIN_TENSORRT_MAJOR``."""
    major = version.split(".")[0]
    if not major.isdigit():
        raise BackendUnavailableError(f"cannot read the TensorRT version {version!r}; {INSTALL_HINT}")
    if int(major) < MIN_TENSORRT_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: nrp-deploy needs TensorRT 10.x or 11.x (strongly typed "
            f"networks); {TOO_OLD_HINT}"
        )


def is_tegra(env: TargetEnvironment) -> bool:
    """Whether the GPU is a Jetson (Tegra) integrated GPU, told by its compute capability."""
    return tuple(env.compute_capability) in TEGRA_COMPUTE_CAPABILITIES


def unsupported_build_options(options: BuildOptions, env: TargetEnvironment) -> list[str]:
    """Why TensorRT cannot build ``options`` for the GPU in ``env``; empty when it can."""
    if options.hardware_compatibility != "ampere_plus":
        return []
    major, minor = env.compute_capability
    if is_tegra(env):
        return [
            f"hardware compatibility (--ampere-plus) is not supported on Jetson's integrated GPUs "
            f"({env.gpu_name}, sm_{major}{minor}); build without it, on the device that runs the engine"
        ]
    if (major, minor) < (8, 0):
        return [
            f"hardware compatibility (--ampere-plus) needs an Ampere or later GPU (sm_80+) to build on; "
            f"{env.gpu_name} is sm_{major}{minor}"
        ]
    return []


def check_build_options(options: BuildOptions, env: TargetEnvironment) -> None:
    """InputError naming every option this platform does not support, before any build starts."""
    reasons = unsupported_build_options(options, env)
    if reasons:
        raise InputError("; ".join(reasons))


def strongly_typed_flags(trt: ModuleType) -> int:
    """``create_network`` flags for a strongly typed network, the bit looked up by name in this release.

    10.x needs the flag (else it builds weakly typed and ignores the ONNX's precision); 11.x is strongly
    typed regardless and still accepts it.
    """
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@functools.cache
def tensorrt_logger() -> Any:
    """The process's one TensorRT logger (TensorRT wants a single logger that outlives everything made
    with it, and warns when builders and runtimes get different ones).

    It prints errors, and everything while its ``verbose`` attribute is set; it keeps the error messages
    so that a failed parse, build or deserialisation can say why: ``take_errors()`` returns and clears them.
    """
    trt = import_tensorrt()
    failures = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.verbose = False

        def log(self, severity: Any, msg: str) -> None:
            if severity in failures:
                self.errors.append(msg)
            if self.verbose or severity in failures:
                print(f"[TensorRT] {msg}", flush=True)

        def take_errors(self) -> str:
            text, self.errors = "; ".join(self.errors) or "no details logged", []
            return text

    return CollectingLogger()


def gpu_properties(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor) compute capability) of CUDA device ``device``, through the driver API."""
    driver = init_driver()
    dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
    raw = check(driver.cuDeviceGetName(256, dev), "cuDeviceGetName")
    name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
    attr = driver.CUdevice_attribute
    major = check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cc")
    minor = check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cc")
    return name, (int(major), int(minor))


def current_environment(device: int = 0) -> TargetEnvironment:
    """The TensorRT release and GPU an engine would be built for / run on here."""
    trt = import_tensorrt()
    name, cc = gpu_properties(device)
    return TargetEnvironment(
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=cc,
        platform=f"{platform.system()}-{platform.machine()}",
    )
