"""What the TensorRT builder and backend share: importing TensorRT lazily, its logger, the machine's identity.

TensorRT is optional and heavy, so nothing imports it at module level: ``import_tensorrt`` does, on first
use, and turns a missing package or missing libraries into ``BackendUnavailableError`` saying what to
install. The code supports TensorRT 10.x (10.3 is what JetPack 6 ships) and 11.x; 11 removed the weak
typing API (precision builder flags, calibrators, ``device_memory_size``) and always builds strongly typed
networks. Version-dependent names are looked up by name, never hard-coded (the strongly-typed flag's bit
is 1 in 10.x and 0 in 11.x).

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

from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.kernels.cuda_api import check, init_driver
from nrp_deploy.runtime.engine_cache import TargetEnvironment

INSTALL_HINT = (
    "install NVIDIA TensorRT 10.x or 11.x with its Python bindings (x86-64: pip install tensorrt-cu12 or "
    "tensorrt-cu13 from NVIDIA's index, see docs.nvidia.com/deeplearning/tensorrt; Jetson: the python3-"
    "libnvinfer package of JetPack 6) and cuda-python: pip install 'nrp-deploy[gpu]'"
)

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
    version = str(trt.__version__)
    if int(version.split(".")[0]) < 10:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: nrp-deploy needs 10.x or 11.x; {INSTALL_HINT}"
        )
    return trt


def tensorrt_available() -> bool:
    """Whether TensorRT imports here (``backend="auto"`` never picks it otherwise)."""
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True


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
