"""Peak arithmetic rates from injected CPU descriptions (Zen 3, Zen 4, Sapphire Rapids, others), the clock
readings they start from, and the report's handling of a result above its peak. No models: milliseconds."""

from __future__ import annotations

import copy

import pytest

from nrp_deploy.bench import report
from nrp_deploy.bench.machine import cpu_clock
from nrp_deploy.bench.peaks import Peak, core_model, cpu_peak, gpu_peak

GHZ = 1e9
ZEN3 = {
    "model": "AMD EPYC 7763 64-Core Processor",
    "vendor": "AuthenticAMD",
    "family": "25",
    "usable_cpus": 2,
    "mhz": 3500.0,
    "mhz_source": "lscpu CPU max MHz",
    "mhz_is_max": True,
    "vector_extensions": ["avx2", "fma"],
}
ZEN4_VM = {  # this development machine: a KVM guest that shows only the nominal clock
    "model": "AMD EPYC",
    "vendor": "AuthenticAMD",
    "family": "25",
    "usable_cpus": 2,
    "mhz": 2596.1,
    "mhz_source": "/proc/cpuinfo cpu MHz: current or nominal",
    "mhz_is_max": False,
    "vector_extensions": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"],
}
SPR = {
    "model": "Intel(R) Xeon(R) Platinum 8488C",
    "vendor": "GenuineIntel",
    "family": "6",
    "usable_cpus": 2,
    "mhz": 3800.0,
    "mhz_source": "cpufreq cpuinfo_max_freq",
    "mhz_is_max": True,
    "vector_extensions": [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ],
}


def test_zen3_counts_two_256_bit_fma_pipes_and_int8_without_vnni():
    peak = cpu_peak(ZEN3)
    assert peak.per_precision["fp32"] == pytest.approx(2 * 3.5 * GHZ * 32)
    assert "bf16" not in peak.per_precision  # no BF16 unit: a bf16 backend is held to fp32's peak
    assert peak.for_precision("bf16") == peak.per_precision["fp32"]
    assert peak.per_precision["int8"] == pytest.approx(2 * peak.per_precision["fp32"])  # VPMADDUBSW pairs
    assert "AMD Zen 3" in peak.method and "lscpu CPU max MHz" in peak.method
    assert peak.basis_for("bf16").startswith("fp32 (no faster bf16 unit)")


def test_zen4_counts_avx512_as_two_halves_and_assumes_the_hidden_boost_clock():
    peak = cpu_peak(ZEN4_VM)
    assert peak.per_precision["fp32"] == pytest.approx(2 * 4.4 * GHZ * 32)  # not 16 lanes x 2 pipes
    assert peak.per_precision["bf16"] == pytest.approx(2 * peak.per_precision["fp32"])
    assert peak.per_precision["int8"] == pytest.approx(4 * peak.per_precision["fp32"])
    assert "highest AMD Zen 4 server boost" in peak.method and "2.60 GHz is visible" in peak.method
    assert peak.basis["int8"].startswith("VNNI")
    # the figures measured here before this model (ONNX Runtime FP32 206 GFLOP/s, OpenVINO BF16 444 and
    # INT8 853 GFLOP/s, NRP_resG 224 px batch 1) were 106 %, 114 % and 110 % of the old 2.6 GHz peaks
    for precision, achieved in (("fp32", 206e9), ("bf16", 444e9), ("int8", 853e9)):
        assert not peak.ceiling(precision, achieved).exceeded
    shown_max = {**ZEN4_VM, "mhz": 3700.0, "mhz_is_max": True, "mhz_source": "cpufreq cpuinfo_max_freq"}
    assert cpu_peak(shown_max).per_precision["fp32"] == pytest.approx(2 * 3.7 * GHZ * 32)


def test_sapphire_rapids_uses_amx_tiles_for_bf16_and_int8():
    peak = cpu_peak(SPR)
    fp32 = 2 * 3.8 * GHZ * 64  # two 512-bit FMA units
    assert peak.per_precision["fp32"] == pytest.approx(fp32)
    assert peak.per_precision["bf16"] == pytest.approx(2 * 3.8 * GHZ * 1024)
    assert peak.per_precision["int8"] == pytest.approx(2 * 3.8 * GHZ * 2048)
    assert peak.basis["bf16"].startswith("AMX-BF16") and peak.basis["int8"].startswith("AMX-INT8")
    # the SPR figures (OpenVINO BF16 196 %, INT8 171 % of the old 2x / 4x fp32 peaks) are far
    # inside the AMX peaks
    assert not peak.ceiling("bf16", 1.96 * 2 * fp32).exceeded
    assert not peak.ceiling("int8", 1.71 * 4 * fp32).exceeded
    without_amx = {**SPR, "vector_extensions": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]}
    assert (
        core_model("GenuineIntel", 6, frozenset(without_amx["vector_extensions"])).fp32_flop_per_cycle == 64
    )
    assert cpu_peak(without_amx).per_precision["bf16"] == pytest.approx(2 * fp32)
    assert cpu_peak(without_amx).per_precision["int8"] == pytest.approx(4 * fp32)


def test_threads_scale_the_peak_and_a_higher_matmul_raises_the_clock():
    one = cpu_peak(SPR, threads=1)
    assert one.per_precision["fp32"] == pytest.approx(cpu_peak(SPR).per_precision["fp32"] / 2)
    estimate = cpu_peak(SPR).per_precision["fp32"]
    faster = cpu_peak(SPR, measured_fp32=1.25 * estimate)  # a turbo clock the OS does not show
    assert faster.per_precision["fp32"] == pytest.approx(1.25 * estimate)
    assert faster.per_precision["int8"] == pytest.approx(1.25 * cpu_peak(SPR).per_precision["int8"])
    assert faster.method.startswith("measured (above the estimate, clock raised to 4.75 GHz)")
    loaded = cpu_peak(SPR, measured_fp32=0.3 * estimate)  # a busy machine pulls the measurement down
    assert loaded.per_precision["fp32"] == pytest.approx(estimate)
    assert loaded.method.startswith("estimate")


def test_unrecognised_cpus_fall_back_to_conservative_models():
    avx2_intel = core_model("GenuineIntel", 6, frozenset({"avx2", "fma"}))
    assert avx2_intel.fp32_flop_per_cycle == 32
    assert core_model("AuthenticAMD", 26, frozenset({"avx2", "fma", "avx512f"})).fp32_flop_per_cycle == 64
    arm = cpu_peak({"model": "Neoverse-N1", "usable_cpus": 4, "mhz": 3000.0, "vector_extensions": []})
    assert arm.per_precision == {"fp32": pytest.approx(4 * 3.0 * GHZ * 32)}
    assert "unrecognised CPU" in arm.method


def test_clock_prefers_the_maximum_and_says_when_only_the_current_one_is_visible(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2100.000\nprocessor\t: 1\ncpu MHz\t\t: 2596.138\n")
    sysfs = tmp_path / "cpu"
    nominal = cpu_clock({}, sysfs, cpuinfo)
    assert (nominal.mhz, nominal.is_max) == (pytest.approx(2596.138), False)
    for n, khz in ((0, 3700000), (1, 3500000)):
        (sysfs / f"cpu{n}" / "cpufreq").mkdir(parents=True)
        (sysfs / f"cpu{n}" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{khz}\n")
    boost = cpu_clock({"CPU max MHz": "3600.0000"}, sysfs, cpuinfo)
    assert (boost.mhz, boost.source, boost.is_max) == (3700.0, "cpufreq cpuinfo_max_freq", True)
    assert cpu_clock({}, tmp_path / "none", tmp_path / "none").mhz is None


def test_gpu_peak_by_name_most_specific_first():
    assert gpu_peak("NVIDIA H100 80GB HBM3").per_precision["fp16"] == pytest.approx(989.4e12)
    assert gpu_peak("NVIDIA H100 PCIe").per_precision["fp16"] == pytest.approx(756.0e12)
    assert gpu_peak("NVIDIA H200").per_precision["int8"] == pytest.approx(1978.9e12)
    assert gpu_peak("NVIDIA L4").basis_for("fp16").startswith("fp16: NVIDIA datasheet")
    assert gpu_peak("Some Future GPU") is None


def _doc(result: dict, peak: Peak) -> dict:
    machine = {
        "hostname": "h",
        "os": "Linux",
        "cpu": {**ZEN4_VM, "logical_cpus": 2, "model_number": "17", "isa": "AVX2 yes"},
        "gpu": None,
        "libraries": {"python": "3"},
        "load_average": None,
        "time_utc": "t",
    }
    config = {"threads": 2, "warmup": 2, "rounds": 1, "reps": 1}
    case = {
        "model": "m",
        "resolution": 16,
        "scenario": "model",
        "batch": 1,
        "flops_per_image": 1e9,
        "results": [result],
    }
    return {
        "machine": machine,
        "config": config,
        "device": "cpu",
        "host_memory_method": "VmHWM",
        "peak": peak.to_dict(),
        "cases": [case],
        "models": [],
        "backends": {},
        "skipped_models": [],
    }


def test_a_result_above_its_peak_is_flagged_not_printed_as_a_percentage():
    peak = cpu_peak(ZEN3)
    result = {
        "backend": "onnxruntime-cpu-int8",
        "precision": "int8",
        "status": "ok",
        "latency_ms": {"median_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0},
        "throughput_ips": 1000.0,
        "speedup_vs_baseline": None,
        "speedup_vs_best_torch": None,
        "fidelity": None,
        "host_peak_rss_mib": 1.0,
        "host_peak_increase_mib": 0.0,
        "device_peak_mib": None,
    }
    above = {**result, **peak.ceiling("int8", 1.12 * peak.per_precision["int8"]).to_result()}
    assert above["peak_fraction"] is None and above["peak_exceeded"] is True
    assert above["peak_ratio"] == pytest.approx(1.12)
    assert above["peak_basis"].startswith("int8: VPMADDUBSW")
    doc = _doc(above, peak)
    table = report.console_table(doc)
    assert report.ABOVE_PEAK in table and "112" not in table
    markdown = report.to_markdown(copy.deepcopy(doc))
    assert "the peak model is wrong for this machine" in markdown
    assert "onnxruntime-cpu-int8 (1.12x its int8 peak)" in markdown
    below = {**result, **peak.ceiling("int8", 0.5 * peak.per_precision["int8"]).to_result()}
    assert below["peak_fraction"] == pytest.approx(0.5) and not below["peak_exceeded"]
    assert "| 50.0 |" in report.to_markdown(_doc(below, peak))
    assert "the peak model is wrong" not in report.to_markdown(_doc(below, peak))
