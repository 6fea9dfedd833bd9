"""What a benchmark ran on (torch-free): CPU, GPU, library versions, peak arithmetic rates, host memory.

A latency figure means nothing without the machine, so every result carries this record. Peaks give the
roofline context: achieved FLOP/s over the device's peak says how close to the limit a backend runs.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nrp_deploy.cpu_features import ISA_FEATURES, VNNI_FLAGS, host_isa

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

# Dense (no structured sparsity) peaks from NVIDIA's datasheets, in TFLOP/s (TOP/s for int8; TF32 tensor
# cores run at half the FP16 rate, and Turing has none). Matched by substring of the device name, most
# specific first.
_GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"fp32": 67.0, "fp16": 989.4, "tf32": 494.7, "int8": 1978.9}),
    ("H100 NVL", {"fp32": 60.0, "fp16": 835.0, "tf32": 417.5, "int8": 1670.0}),
    ("H100 PCIe", {"fp32": 51.2, "fp16": 756.0, "tf32": 378.0, "int8": 1513.0}),
    ("H100", {"fp32": 67.0, "fp16": 989.4, "tf32": 494.7, "int8": 1978.9}),  # SXM5
    ("A100", {"fp32": 19.5, "fp16": 312.0, "tf32": 156.0, "int8": 624.0}),
    ("L40S", {"fp32": 91.6, "fp16": 362.1, "tf32": 181.1, "int8": 733.0}),
    ("L4", {"fp32": 30.3, "fp16": 121.0, "tf32": 60.5, "int8": 242.0}),
    ("A10", {"fp32": 31.2, "fp16": 125.0, "tf32": 62.5, "int8": 250.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
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


def _cpuinfo_mhz() -> float | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    values = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, flags=re.M)]
    return max(values) if values else None


def cpu_info() -> dict[str, Any]:
    """CPU model, usable cores, clock and the vector extensions that decide the kernels backends pick."""
    info = _lscpu()
    isa = host_isa()
    mhz = _cpuinfo_mhz()
    max_mhz = info.get("CPU max MHz")
    return {
        "model": info.get("Model name") or platform.processor() or "unknown",
        "vendor": info.get("Vendor ID", ""),
        "family": info.get("CPU family", ""),
        "model_number": info.get("Model", ""),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mhz": float(max_mhz) if max_mhz else mhz,
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


@dataclass(frozen=True)
class Peak:
    """A device's peak arithmetic rate per precision (FLOP/s; int8 in OP/s) and how it was obtained."""

    device: str
    per_precision: dict[str, float]
    method: str

    def for_precision(self, precision: str) -> float:
        """The peak a backend of that precision can reach (fp32's where the device has no faster path)."""
        return self.per_precision.get(precision, self.per_precision["fp32"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_peak(info: dict[str, Any], measured_fp32: float | None = None, threads: int | None = None) -> Peak:
    """CPU peak: cores x clock x FP32 FLOP per cycle from the vector width, or a measured matmul rate
    (``measured_fp32``, measured on ``threads`` threads).

    FLOP per cycle assumes two FMA pipes per core (x86 server cores since Haswell / Zen) of the widest
    vector unit: 512-bit on Intel with AVX-512; 256-bit on AMD, where Zen 4 executes AVX-512 as two 256-bit
    halves. int8 with VNNI (or AMX) does four multiply-adds per 32-bit lane, so its peak is 4x FP32; BF16
    dot products do two, 2x. A measured matmul rate above the estimate replaces it (a VM hides its turbo
    clock); one below it does not, since other processes on a shared machine pull a measurement down.
    ``threads`` below the core count scales the peak to the cores the backends were allowed to use.
    """
    flags = set(info.get("vector_extensions", []))
    wide = "avx512f" in flags and info.get("vendor") != "AuthenticAMD"
    lanes = 16 if wide else 8 if "avx2" in flags else 4
    cores = int(info.get("usable_cpus") or 1)
    used = min(threads, cores) if threads else cores
    ghz = float(info.get("mhz") or 0.0) / 1000.0
    estimate = used * ghz * 1e9 * 2 * lanes * 2  # cores x Hz x FMA pipes x lanes x (mul + add)
    method = (
        f"estimate: {used} of {cores} cores x {ghz:.2f} GHz x 2 FMA pipes x {lanes} fp32 lanes x 2 FLOP "
        f"= {estimate / 1e9:.0f} GFLOP/s"
    )
    fp32 = estimate
    if measured_fp32 is not None:
        method += f"; FP32 matmul measured {measured_fp32 / 1e9:.0f} GFLOP/s on {used} thread(s)"
        if measured_fp32 > estimate:
            fp32 = measured_fp32
            method = "measured (above the estimate): " + method
    peaks = {"fp32": fp32}
    if flags & {"avx512_bf16", "amx_bf16"}:
        peaks["bf16"] = 2 * fp32  # a BF16 dot product does two multiply-adds per 32-bit lane (AMX: more)
    if flags & VNNI_FLAGS:
        peaks["int8"] = 4 * fp32
    return Peak(device=str(info.get("model", "cpu")), per_precision=peaks, method=method)


def gpu_peak(name: str) -> Peak | None:
    """Datasheet dense peaks for a known GPU name, else None (the roofline column then stays empty)."""
    for key, peaks in _GPU_PEAKS:
        if key.lower() in name.lower():
            return Peak(
                device=name,
                per_precision={k: v * 1e12 for k, v in peaks.items()},
                method=f"NVIDIA datasheet dense peaks for {key} (no sparsity)",
            )
    return None


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
