"""``nrp info``: what this machine can run, found without loading a model, and what ``auto`` chose here.

Versions of optional packages are read from their installed metadata; ONNX Runtime is imported for its
execution providers, TensorRT for its version, and the CUDA driver is asked for its GPUs. torch is imported
only by the torch backend's own availability check (the "backend" lines). Every probe catches its own
failure and reports it, so the report never fails on a machine that lacks something. The choices
``backend="auto"`` recorded in the artifact cache are listed with their timings and rejections
(``runtime.auto``); ``choice_for`` makes (or reads) the choice for one model.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from nrp_deploy import __version__


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_version(*distributions: str) -> str | None:
    return next((v for d in distributions if (v := _version(d)) is not None), None)


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    return {
        "available": True,
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
    }


def _tensorrt() -> dict[str, Any]:
    from nrp_deploy.errors import BackendUnavailableError
    from nrp_deploy.tensorrt.support import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailableError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "version": str(trt.__version__)}


def _nvrtc() -> dict[str, Any]:
    from nrp_deploy.errors import NRPDeployError
    from nrp_deploy.kernels.compiler import nvrtc_version, supported_archs
    from nrp_deploy.kernels.cuda_api import nvrtc_library

    try:
        major, minor = nvrtc_version()
        archs = supported_archs()
        library = nvrtc_library()
    except NRPDeployError as exc:
        return {"available": False, "reason": str(exc)}
    return {
        "available": True,
        "version": f"{major}.{minor}",
        "archs": [f"sm_{a}" for a in archs],
        "source": library.source,
        "path": library.path,
    }


def _gpus() -> dict[str, Any]:
    """The CUDA driver's version and each device's name, compute capability and memory."""
    from nrp_deploy.errors import NRPDeployError
    from nrp_deploy.kernels.cuda_api import check, format_cuda_version, init_driver
    from nrp_deploy.tensorrt.support import gpu_properties

    try:
        driver = init_driver()
        version = int(check(driver.cuDriverGetVersion(), "cuDriverGetVersion"))
        devices = []
        for ordinal in range(int(check(driver.cuDeviceGetCount(), "cuDeviceGetCount"))):
            name, (major, minor) = gpu_properties(ordinal)
            device = check(driver.cuDeviceGet(ordinal), "cuDeviceGet")
            memory = int(check(driver.cuDeviceTotalMem(device), "cuDeviceTotalMem"))
            devices.append(
                {
                    "index": ordinal,
                    "name": name,
                    "compute_capability": f"{major}.{minor}",
                    "memory_gib": round(memory / 2**30, 1),
                }
            )
    except NRPDeployError as exc:
        return {"driver": None, "devices": [], "reason": str(exc)}
    return {"driver": format_cuda_version(version), "devices": devices}


def collect_info() -> dict[str, Any]:
    """Everything ``nrp info`` reports, as plain JSON-ready data."""
    from nrp_deploy.cpu_features import host_isa
    from nrp_deploy.runtime.auto import recorded_choices
    from nrp_deploy.runtime.backends import available_backends

    isa = host_isa()
    return {
        "nrp_deploy": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _onnxruntime(),
        "tensorrt": _tensorrt(),
        "cuda_python": _first_version("cuda-bindings", "cuda-python"),
        "nvrtc": _nvrtc(),
        "gpus": _gpus(),
        "cpu": {"model": isa.model, "arch": isa.arch, "features": isa.headline()},
        "backends": available_backends(),
        "auto_choices": recorded_choices(),
    }


def choice_for(model: str, threads: int | None = None) -> dict[str, Any]:
    """What ``load_purifier(model)`` opens here and why: loads it (timing and recording the choice when
    none is recorded yet) and closes it again."""
    from nrp_deploy.runtime.purifier import load_purifier

    with load_purifier(model, threads=threads) as purifier:
        choice = purifier.auto_choice
        return {
            "model": model,
            "purifier": purifier.describe(),
            "choice": choice.to_dict() if choice else None,
            "summary": choice.summary() if choice else "no timed choice (a GPU, or NRP_DEPLOY_AUTO=order)",
        }


def format_info(info: dict[str, Any]) -> str:
    """The report as aligned lines; unavailable pieces say why."""

    def state(entry: dict[str, Any], detail: str = "") -> str:
        if not entry.get("available"):
            return f"not available ({entry.get('reason', 'unknown reason')})"
        return f"{entry['version']}{detail}"

    ort = info["onnxruntime"]
    nvrtc = info["nvrtc"]
    nvrtc_detail = f", targets {nvrtc['archs'][0]}..{nvrtc['archs'][-1]}" if nvrtc.get("archs") else ""
    if nvrtc.get("source"):
        nvrtc_detail += f", from the {nvrtc['source']}" + (f": {nvrtc['path']}" if nvrtc.get("path") else "")
    gpus = info["gpus"]
    lines = [
        ("nrp-deploy", info["nrp_deploy"]),
        ("python", f"{info['python']} ({info['platform']})"),
        ("numpy", info["numpy"] or "not installed"),
        ("torch", info["torch"] or "not installed (only the torch backend and exports need it)"),
        ("onnx", info["onnx"] or "not installed (only exports need it)"),
        ("onnxruntime", state(ort, f", providers: {', '.join(ort.get('providers', []))}")),
        ("tensorrt", state(info["tensorrt"])),
        ("cuda-python", info["cuda_python"] or "not installed"),
        ("nvrtc", state(nvrtc, nvrtc_detail)),
        ("cpu", f"{info['cpu']['model']} ({info['cpu']['arch']}: {info['cpu']['features']})"),
        ("cuda driver", gpus["driver"] or f"none ({gpus.get('reason', 'no driver')})"),
    ]
    for gpu in gpus["devices"]:
        lines.append(
            (
                f"gpu {gpu['index']}",
                f"{gpu['name']} (sm_{gpu['compute_capability'].replace('.', '')}, {gpu['memory_gib']} GiB)",
            )
        )
    for name, reason in info["backends"].items():
        # the first clause only: the packages' lines above already say what to install
        lines.append(
            (f"backend {name}", "available" if reason is None else f"unavailable: {reason.split(';')[0]}")
        )
    for entry in info["auto_choices"]:
        asked = f"backend {entry['backend']}, precision {entry['precision']}, threads {entry['threads']}"
        state = "" if entry["current"] else " [recorded on another machine or software stack: times again]"
        lines.append((f"auto {entry['model']}", f"({asked}) {entry['summary']}{state}"))
    if "auto_for" in info:
        lines.append((f"auto for {info['auto_for']['model']}", info["auto_for"]["purifier"]))
        lines.append(("  why", info["auto_for"]["summary"]))
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines)
