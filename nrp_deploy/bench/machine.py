"""What a benchmark ran on (torch-free): CPU, GPU, library versions, host memory.

A latency figure means nothing without the machine, so every result carries this record; ``peaks`` turns
it into the peak arithmetic rates of the roofline context.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrp_deploy.cpu_features import ISA_FEATURES, host_isa

_LIBRARIES = (
    "nrp-deploy",
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "openvino",
    "nvidia-modelopt",
    "cuda-bindings",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a backend may use (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


@dataclass(frozen=True)
class ClockReading:
    """A CPU clock in MHz, where it was read, and whether it is the maximum (boost) clock."""

    mhz: float | None
    source: str
    is_max: bool


def cpu_clock(
    lscpu: dict[str, str],
    cpufreq: Path = Path("/sys/devices/system/cpu"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> ClockReading:
    """The highest clock the OS shows (the peak must not be too low).

    cpufreq's ``cpuinfo_max_freq`` and lscpu's "CPU max MHz" are the boost clock; without them (VMs) only
    /proc/cpuinfo's current "cpu MHz" is left, which a hypervisor often pins at the nominal clock.
    """
    readings: list[ClockReading] = []
    for path in sorted(cpufreq.glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")):
        try:
            readings.append(
                ClockReading(int(path.read_text().strip()) / 1000.0, "cpufreq cpuinfo_max_freq", True)
            )
        except (OSError, ValueError):
            continue
    if lscpu.get("CPU max MHz"):
        readings.append(ClockReading(float(lscpu["CPU max MHz"]), "lscpu CPU max MHz", True))
    if readings:
        return max(readings, key=lambda reading: reading.mhz or 0.0)
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    current = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, flags=re.M)]
    if current:
        return ClockReading(max(current), "/proc/cpuinfo cpu MHz: current or nominal", False)
    return ClockReading(None, "no clock visible", False)


def cpu_info() -> dict[str, Any]:
    """CPU model, usable cores, clock and the vector extensions that decide the kernels backends pick."""
    info = _lscpu()
    isa = host_isa()
    clock = cpu_clock(info)
    return {
        "model": info.get("Model name") or platform.processor() or "unknown",
        "vendor": info.get("Vendor ID", ""),
        "family": info.get("CPU family", ""),
        "model_number": info.get("Model", ""),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mhz": clock.mhz,
        "mhz_source": clock.source,
        "mhz_is_max": clock.is_max,
        "hypervisor": info.get("Hypervisor vendor", ""),
        "vector_extensions": [f for f in ISA_FEATURES if f in isa.flags],
        "isa": isa.headline(),
    }


def gpu_info() -> dict[str, Any] | None:
    """First GPU's name, driver and memory from nvidia-smi; None where there is no NVIDIA GPU."""
    query = "name,driver_version,memory.total,compute_cap"
    try:
        proc = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    name, driver, mem, cc = (part.strip() for part in lines[0].split(","))
    return {"name": name, "driver": driver, "memory_mib": int(float(mem)), "compute_capability": cc}


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to place a latency figure; also the load, since the machine may be shared."""
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "libraries": library_versions(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
    }


class HostMemory:
    """Process resident-set peaks, resettable on Linux so each backend's own peak can be read.

    Linux keeps the high-water mark (VmHWM) per process and resets it when "5" is written to
    /proc/self/clear_refs; elsewhere only the lifetime peak from getrusage is available, which is said
    in ``method``.
    """

    _STATUS = Path("/proc/self/status")
    _CLEAR = Path("/proc/self/clear_refs")

    def __init__(self) -> None:
        self.resettable = self._STATUS.exists() and os.access(self._CLEAR, os.W_OK)
        self.method = "VmHWM, reset per backend" if self.resettable else "getrusage lifetime peak"

    def _status_kib(self, field: str) -> int:
        match = re.search(rf"^{field}:\s+(\d+) kB", self._STATUS.read_text(), flags=re.M)
        return int(match.group(1)) if match else 0

    def reset(self) -> None:
        if self.resettable:
            self._CLEAR.write_text("5")

    def current_bytes(self) -> int:
        return self._status_kib("VmRSS") * 1024 if self._STATUS.exists() else self.peak_bytes()

    def peak_bytes(self) -> int:
        if self._STATUS.exists():
            return self._status_kib("VmHWM") * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def device_memory_in_use() -> int | None:
    """Bytes in use on the current CUDA device (all processes), from the driver; None without one.

    Engines that allocate outside torch (TensorRT, ONNX Runtime) are visible only this way.
    """
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    err, free, total = runtime.cudaMemGetInfo()
    return int(total - free) if err == runtime.cudaError_t.cudaSuccess else None
