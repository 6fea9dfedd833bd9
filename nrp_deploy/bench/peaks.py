"""Peak arithmetic rates (torch-free): the denominator of the benchmark's "% of peak".

A CPU's peak is cores x clock x operations per cycle per core, and the operations per cycle depend on the
unit that runs each precision:

- FP32: the FMA pipes of the core's microarchitecture (``CORE_MODELS``), counted per vendor documentation
  and the microbenchmarks that confirm it, not from the vector width alone. Sources:
  Intel Xeon Scalable (Skylake-SP and later, Ice Lake-SP, Sapphire Rapids): up to two 512-bit FMA units per
  core, 2 x 16 lanes x 2 = 64 FLOP/cycle (Intel's Xeon Scalable specification update 336065; some Silver,
  Bronze and Gold 5000 parts have one, so 64 is the conservative figure: the peak is never too low);
  AMD Zen 2 / Zen 3: two 256-bit FMA pipes, 32 FLOP/cycle (AMD Software Optimization Guide for family
  17h/19h); Zen 4: AVX-512 executed on the same two 256-bit FMA pipes, still 32 FLOP/cycle
  (numberworld.org "Zen4 AVX512 teardown", A. Yee, 2022); Zen 5: full-width 512-bit FMA pipes on desktop
  and server parts, 64 FLOP/cycle (numberworld.org "Zen5 AVX512 teardown", 2024).
- BF16: AMX-BF16 tiles, 1024 FLOP/cycle/core (Intel: 4th Gen Xeon Scalable "1024 BF16 operations per
  cycle", TDPBF16PS 16 x 16 x 32 multiply-adds every 16 cycles); else AVX512-BF16 (VDPBF16PS: two BF16
  products per FP32 lane on the FMA pipes), 2x FP32.
- INT8: AMX-INT8 tiles, 2048 OP/cycle/core (Intel, same source); else VNNI (VPDPBUSD: four u8 x s8
  products per 32-bit lane, one uop), 4x FP32; else VPMADDUBSW + VPMADDWD (two multiply uops for the same
  four products per lane), 2x FP32.

Every peak is the fastest unit the CPU has for that precision, because a library may pick it without
saying so (oneDNN uses AMX wherever it is present); a ceiling of a slower unit could be exceeded by a
correct run. The clock is the highest the OS shows (cpufreq's ``cpuinfo_max_freq``, lscpu's max MHz, else
/proc/cpuinfo's current MHz, which a VM often pins at the nominal clock), raised to the clock an FP32
matmul measurement implies where that is higher; where only a current or nominal clock is visible (VMs:
the host's turbo is hidden from the guest; this development machine's KVM guest shows 2.6 GHz while FP32
convolutions ran at 1.24x the 2.6 GHz peak), the highest boost clock of that generation's server parts
(``CoreModel.boost_ghz``) is assumed instead. Cores are the logical CPUs the process may use (SMT
siblings counted as cores), again so the peak errs high. A figure above its peak still means the model is
wrong for that machine, and the report says so instead of printing it (``Ceiling.exceeded``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nrp_deploy.cpu_features import VNNI_FLAGS

AMX_BF16_FLOP_PER_CYCLE = 1024
AMX_INT8_OP_PER_CYCLE = 2048

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


@dataclass(frozen=True)
class Peak:
    """A device's peak arithmetic rate per precision (FLOP/s; int8 in OP/s), the unit each one counts
    (``basis``) and how the whole was obtained (``method``)."""

    device: str
    per_precision: dict[str, float]
    basis: dict[str, str]
    method: str

    def for_precision(self, precision: str) -> float:
        """The peak a backend of that precision can reach (fp32's where the device has no faster path)."""
        return self.per_precision.get(precision, self.per_precision["fp32"])

    def basis_for(self, precision: str) -> str:
        """Which unit's rate ``for_precision`` is, for the report."""
        if precision in self.per_precision:
            return f"{precision}: {self.basis[precision]}"
        return f"fp32 (no faster {precision} unit): {self.basis['fp32']}"

    def ceiling(self, precision: str, achieved: float) -> Ceiling:
        """``achieved`` (FLOP/s) measured against the peak of ``precision``."""
        return Ceiling(achieved / self.for_precision(precision), self.basis_for(precision))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ceiling:
    """An achieved rate over its peak. ``fraction`` above 1 cannot happen on a correct peak model: it is
    reported as ``exceeded`` (the peak model is wrong for this machine), never as a percentage."""

    fraction: float
    basis: str

    @property
    def exceeded(self) -> bool:
        return self.fraction > 1.0

    def to_result(self) -> dict[str, Any]:
        """The fields a benchmark result carries: the fraction (None when exceeded), the unit, the flag."""
        return {
            "peak_fraction": None if self.exceeded else self.fraction,
            "peak_basis": self.basis,
            "peak_exceeded": self.exceeded,
            "peak_ratio": self.fraction,
        }


@dataclass(frozen=True)
class CoreModel:
    """FP32 FMA throughput of one microarchitecture, per core and cycle, and where the figure comes from;
    ``boost_ghz``: the highest boost clock of that generation's server parts (vendor datasheets), assumed
    where a VM shows only its nominal clock, since the host may run turbo the guest cannot see."""

    name: str
    fp32_flop_per_cycle: int
    fma: str
    boost_ghz: float | None = None
    boost_part: str = ""


_ZEN5 = CoreModel("AMD Zen 5", 64, "2 x 512-bit FMA pipes", 5.0, "EPYC 9175F")
_ZEN4 = CoreModel(
    "AMD Zen 4", 32, "2 x 256-bit FMA pipes (AVX-512 runs as two 256-bit halves)", 4.4, "EPYC 9174F"
)
_ZEN3 = CoreModel("AMD Zen 3", 32, "2 x 256-bit FMA pipes", 4.1, "EPYC 72F3")
_ZEN2 = CoreModel(
    "AMD Zen / Zen 2", 32, "2 x 256-bit FMA pipes (Zen 2; Zen 1's 2 x 128-bit counted high)", 3.9, "EPYC 7F32"
)
_INTEL_AMX = CoreModel(
    "Intel Xeon with AMX (Sapphire Rapids or later)", 64, "2 x 512-bit FMA units", 4.1, "Xeon Gold 6434"
)
_INTEL_AVX512 = CoreModel(
    "Intel with AVX-512", 64, "2 x 512-bit FMA units (parts with one counted high)", 4.4, "Xeon Gold 6244"
)
_AVX2 = CoreModel("x86-64 with AVX2/FMA", 32, "2 x 256-bit FMA units (Haswell / Zen 2 and later)")
_UNKNOWN = CoreModel("unrecognised CPU", 32, "assumed 2 x 256-bit FMA units")


def core_model(vendor: str, family: int | None, flags: frozenset[str]) -> CoreModel:
    """The microarchitecture's FMA throughput from the CPUID vendor, family and feature flags."""
    if vendor == "AuthenticAMD" and family is not None:
        if family >= 26:
            return _ZEN5
        if family == 25:
            return _ZEN4 if "avx512f" in flags else _ZEN3
        if family == 23:
            return _ZEN2
    if vendor == "GenuineIntel":
        if flags & {"amx_tile", "amx_bf16", "amx_int8"}:
            return _INTEL_AMX
        if "avx512f" in flags:
            return _INTEL_AVX512
    if {"avx2", "fma"} <= flags:
        return _AVX2
    return _UNKNOWN


def _per_cycle(fp32: int, flags: frozenset[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Operations per cycle and core for each precision the CPU has a faster unit for, with their basis."""
    rates: dict[str, float] = {"fp32": fp32}
    basis = {}
    if "amx_bf16" in flags:
        rates["bf16"], basis["bf16"] = AMX_BF16_FLOP_PER_CYCLE, "AMX-BF16 tiles"
    elif "avx512_bf16" in flags:
        rates["bf16"], basis["bf16"] = 2 * fp32, "AVX512-BF16 VDPBF16PS, 2x fp32"
    if "amx_int8" in flags:
        rates["int8"], basis["int8"] = AMX_INT8_OP_PER_CYCLE, "AMX-INT8 tiles"
    elif flags & VNNI_FLAGS:
        rates["int8"], basis["int8"] = 4 * fp32, "VNNI VPDPBUSD, 4x fp32"
    elif "avx2" in flags:
        rates["int8"], basis["int8"] = 2 * fp32, "VPMADDUBSW + VPMADDWD (no VNNI), 2x fp32"
    return rates, basis


def _clock(info: dict[str, Any], core: CoreModel) -> tuple[float, str]:
    """GHz to count with and how it was chosen: a maximum the OS shows as it is; a current / nominal clock
    raised to the generation's highest server boost (the turbo a VM hides)."""
    ghz = float(info.get("mhz") or 0.0) / 1000.0
    source = info.get("mhz_source") or "clock source not recorded"
    if info.get("mhz_is_max") or core.boost_ghz is None or core.boost_ghz <= ghz:
        return ghz, f"{ghz:.2f} GHz ({source})"
    return core.boost_ghz, (
        f"{core.boost_ghz:.2f} GHz, the highest {core.name} server boost ({core.boost_part}), as only "
        f"{ghz:.2f} GHz is visible ({source})"
    )


def cpu_peak(info: dict[str, Any], measured_fp32: float | None = None, threads: int | None = None) -> Peak:
    """CPU peak for ``info`` (``machine.cpu_info()``: vendor, family, vector_extensions, usable_cpus, mhz,
    mhz_source, mhz_is_max) on ``threads`` threads (None: every usable core); see the module docstring.

    ``measured_fp32``: an FP32 matmul rate measured on those threads. Above the estimate it raises the
    clock (a VM hides its turbo clock) for every precision; below it, it changes nothing, since other
    processes on a shared machine pull a measurement down.
    """
    flags = frozenset(info.get("vector_extensions", []))
    family = str(info.get("family", "")).strip()
    core = core_model(str(info.get("vendor", "")), int(family) if family.isdigit() else None, flags)
    cores = int(info.get("usable_cpus") or 1)
    used = min(threads, cores) if threads else cores
    ghz, clock = _clock(info, core)
    fp32_estimate = used * ghz * 1e9 * core.fp32_flop_per_cycle
    method = (
        f"estimate: {core.name}, {used} of {cores} cores x {clock} x {core.fp32_flop_per_cycle} FP32 "
        f"FLOP/cycle ({core.fma}) = {fp32_estimate / 1e9:.0f} GFLOP/s"
    )
    if measured_fp32 is not None:
        method += f"; FP32 matmul measured {measured_fp32 / 1e9:.0f} GFLOP/s on {used} thread(s)"
        if measured_fp32 > fp32_estimate:
            ghz = measured_fp32 / (used * 1e9 * core.fp32_flop_per_cycle)
            method = f"measured (above the estimate, clock raised to {ghz:.2f} GHz): " + method
    rates, basis = _per_cycle(core.fp32_flop_per_cycle, flags)
    basis["fp32"] = f"{core.fma}, {core.fp32_flop_per_cycle} FLOP/cycle/core"
    return Peak(
        device=str(info.get("model", "cpu")),
        per_precision={k: used * ghz * 1e9 * v for k, v in rates.items()},
        basis={k: b if k == "fp32" else f"{b}, {rates[k]:.0f} OP/cycle/core" for k, b in basis.items()},
        method=method,
    )


def gpu_peak(name: str) -> Peak | None:
    """Datasheet dense peaks for a known GPU name, else None (the roofline column then stays empty)."""
    for key, peaks in _GPU_PEAKS:
        if key.lower() in name.lower():
            return Peak(
                device=name,
                per_precision={k: v * 1e12 for k, v in peaks.items()},
                basis={k: f"NVIDIA datasheet, {key}, dense" for k in peaks},
                method=f"NVIDIA datasheet dense peaks for {key} (no sparsity)",
            )
    return None
