"""Reading a benchmark result: the console table, the JSON and Markdown files, and the PNG plots.

Everything here works from the result document alone (``harness.run_benchmark``'s return value, or its
JSON read back), so a committed result can be re-rendered without re-running it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nrp_deploy.fileutil import atomic_output, write_bytes_atomic, write_json_atomic

JSON_NAME = "bench.json"
PARTIAL_JSON_NAME = "bench.partial.json"
MARKDOWN_NAME = "bench.md"
LATENCY_PLOT = "latency_vs_batch.png"
SPEEDUP_PLOT = "speedup.png"


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _psnr_text(result: dict[str, Any]) -> str:
    fid = result.get("fidelity") or {}
    if fid.get("identical"):
        return "identical"
    return _fmt(fid.get("psnr_db"), ".1f")


def _speedup_text(result: dict[str, Any]) -> str:
    s = result.get("speedup_vs_baseline")
    if not s:
        return "-"
    return f"{s['paired_median']:.2f}x ({s['paired_min']:.2f}-{s['paired_max']:.2f})"


TABLE_HEADER = (
    "backend",
    "batch",
    "median ms",
    "p90 ms",
    "p99 ms",
    "img/s",
    "speed-up (paired, min-max)",
    "PSNR dB",
    "% of peak",
    "host peak MiB (+run)",
)


#: What a "% of peak" cell says when the achieved rate exceeds the peak: the peak model is wrong there.
ABOVE_PEAK = "above peak (model wrong)"


def _peak_text(result: dict[str, Any]) -> str:
    if result.get("peak_exceeded"):
        return ABOVE_PEAK
    frac = result.get("peak_fraction")
    return _fmt(None if frac is None else 100 * frac, ".1f")


def _exceeded_note(doc: dict[str, Any]) -> list[str]:
    """One line naming the results above their peak, if any: the peak model underestimates this machine."""
    above = sorted(
        {
            f"{r['backend']} ({r['peak_ratio']:.2f}x its {r['peak_basis'].split(':')[0]} peak)"
            for case in doc["cases"]
            for r in case["results"]
            if r.get("peak_exceeded")
        }
    )
    if not above:
        return []
    return [
        f"- **the peak model is wrong for this machine**: {', '.join(above)} ran faster than the modelled "
        "peak allows, so their '% of peak' is not printed (a hidden clock or an unmodelled unit)"
    ]


def _row(result: dict[str, Any], batch: int) -> tuple[str, ...]:
    if result["status"] != "ok":
        return (result["backend"], str(batch), f"{result['status']}: {result.get('reason', '')}") + ("",) * 7
    lat = result["latency_ms"]
    device = result.get("device_peak_mib")
    memory = f"{result['host_peak_rss_mib']:.0f} (+{result['host_peak_increase_mib']:.0f})"
    if device is not None:
        memory += f"; device {device:.0f}"
    return (
        result["backend"],
        str(batch),
        f"{lat['median_ms']:.2f}",
        f"{lat['p90_ms']:.2f}",
        f"{lat['p99_ms']:.2f}",
        f"{result['throughput_ips']:.2f}",
        _speedup_text(result),
        _psnr_text(result),
        _peak_text(result),
        memory,
    )


def _groups(doc: dict[str, Any]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    """Cases grouped by (model, resolution, scenario), batch sizes in order."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for case in doc["cases"]:
        groups.setdefault((case["model"], case["resolution"], case["scenario"]), []).append(case)
    for cases in groups.values():
        cases.sort(key=lambda c: c["batch"])
    return groups


def _markdown_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


_SCENARIO_TEXT = {
    "model": "model only (input already in the engine's memory and format, output left there)",
    "e2e": "end to end (uint8 NHWC host images in, uint8 NHWC host images out), dynamic defence off",
    "e2e-dynamic": "end to end with the dynamic defence (noise sigma 0.05, projection to 16/255)",
}


def to_markdown(doc: dict[str, Any]) -> str:
    """The whole result as a Markdown report: machine, models, backends (with skip reasons), tables."""
    m = doc["machine"]
    cpu, gpu = m["cpu"], m.get("gpu")
    cfg = doc["config"]
    lines = [
        "# nrp bench",
        "",
        f"- when: {m['time_utc']} on `{m['hostname']}` ({m['os']})",
        f"- CPU: {cpu['model']} (vendor {cpu['vendor']}, family {cpu['family']} model {cpu['model_number']}), "
        f"{cpu['usable_cpus']} usable cores, {_fmt(cpu['mhz'], '.0f')} MHz"
        + (f" ({cpu['mhz_source']})" if cpu.get("mhz_source") else "")
        + ", "
        f"{', '.join(cpu['vector_extensions']) or 'no AVX'}"
        + (f", under {cpu['hypervisor']}" if cpu.get("hypervisor") else ""),
        f"- CPU ISA: {cpu.get('isa', 'not recorded')}",
        f"- GPU: {gpu['name']}, driver {gpu['driver']}, {gpu['memory_mib']} MiB" if gpu else "- GPU: none",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        f"- load average at start / end: {_load(m.get('load_average'))} / {_load(m.get('load_average_end'))}",
        f"- device benchmarked: {doc['device']}; threads: {cfg['threads'] or 'library default'}",
        f"- timing: {max(2, cfg['warmup'])} warm-up calls (the first timed apart, the second giving the output "
        f"judged for fidelity), then {cfg['rounds']} interleaved rounds x "
        f"{cfg['reps']} call(s) per backend (round-robin, start rotating each round); speed-up = the "
        "median over rounds of (baseline round median / backend round median)",
        f"- host memory: {doc['host_memory_method']}; '+run' is the rise over the resident set before the run",
    ]
    peak = doc.get("peak")
    if peak:
        rates = ", ".join(
            f"{k} {v / 1e12:.3g} ({peak.get('basis', {}).get(k, 'basis not recorded')})"
            for k, v in peak["per_precision"].items()
        )
        lines.append(
            f"- peak for '% of peak' ({peak['device']}), TFLOP/s (int8: TOP/s): {rates}; {peak['method']}; "
            "each backend is measured against the fastest unit of its precision (fp32's where none is faster)"
        )
        lines += _exceeded_note(doc)
    lines += ["", "## Summary: fastest backend per case", ""]
    lines += _markdown_table(_summary_rows(doc), SUMMARY_HEADER)
    lines += ["", "## Models", ""]
    for model in doc["models"]:
        lines.append(
            f"- **{model['name']}**: {model['describe']}, {model['macs_per_pixel'] / 1e6:.2f} M MAC/pixel; "
            f"weights: {model['weights']}"
        )
    for skipped in doc.get("skipped_models", []):
        lines.append(f"- **{skipped['model']}**: skipped: {skipped['reason']}")
    lines += ["", "## Backends", ""]
    for model in doc["models"]:
        for b in model["backends"]:
            text = (
                b.get("description", "") if b["status"] == "ok" else f"{b['status']}: {b.get('reason', '')}"
            )
            lines.append(f"- {model['name']} / `{b['backend']}`: {text}")
    for (model, resolution, scenario), cases in _groups(doc).items():
        flops = cases[0]["flops_per_image"]
        lines += [
            "",
            f"## {model}, {resolution}x{resolution}, {scenario}",
            "",
            f"{_SCENARIO_TEXT[scenario]}. {flops / 1e9:.1f} GFLOP per image.",
            "",
        ]
        rows = [_row(r, case["batch"]) for case in cases for r in case["results"]]
        lines += _markdown_table(rows, TABLE_HEADER)
    if any(m.get("random_weights") for m in doc["models"]):
        lines += [
            "",
            "Note: models marked with seeded random weights time the published architecture exactly, but "
            "their fidelity figures (PSNR of reduced-precision backends) only hint at what trained weights "
            "give, since quantisation error depends on the weights' and activations' ranges.",
        ]
    return "\n".join(lines) + "\n"


SUMMARY_HEADER = (
    "model",
    "px",
    "scenario",
    "batch",
    "fastest",
    "median ms",
    "vs torch-fp32",
    "vs best torch",
    "PSNR dB",
    "% of peak",
)


def _summary_rows(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for case in doc["cases"]:
        ok = [r for r in case["results"] if r["status"] == "ok"]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["latency_ms"]["median_ms"])
        versus = best.get("speedup_vs_best_torch")
        rows.append(
            (
                case["model"],
                str(case["resolution"]),
                case["scenario"],
                str(case["batch"]),
                best["backend"],
                f"{best['latency_ms']['median_ms']:.2f}",
                _speedup_text(best),
                f"{versus['paired_median']:.2f}x ({versus['best_torch']})" if versus else "-",
                _psnr_text(best),
                _peak_text(best),
            )
        )
    return rows


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "-"


def console_table(doc: dict[str, Any]) -> str:
    """A plain-text table per (model, resolution, scenario) for the terminal."""
    out = []
    for (model, resolution, scenario), cases in _groups(doc).items():
        rows = [TABLE_HEADER] + [_row(r, case["batch"]) for case in cases for r in case["results"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
        out.append(f"{model} {resolution}x{resolution} {scenario}")
        for row in rows:
            out.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _plot_grid(doc: dict[str, Any]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(doc)
    n = max(1, len(groups))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(zip(groups.items(), axes.flat, strict=False))


def plot_latency(doc: dict[str, Any], path: Path) -> None:
    """Median latency per image against batch size, one line per backend, p90 as error bars."""
    plt, fig, panels = _plot_grid(doc)
    for ((model, resolution, scenario), cases), ax in panels:
        series: dict[str, list[tuple[int, float, float]]] = {}
        for case in cases:
            for r in case["results"]:
                if r["status"] == "ok":
                    lat, b = r["latency_ms"], case["batch"]
                    series.setdefault(r["backend"], []).append((b, lat["median_ms"] / b, lat["p90_ms"] / b))
        for backend, points in series.items():
            xs, med, p90 = zip(*points, strict=True)
            upper = [p - m for p, m in zip(p90, med, strict=True)]
            ax.errorbar(xs, med, yerr=[[0] * len(xs), upper], marker="o", capsize=3, label=backend)
        batches = sorted({c["batch"] for c in cases})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per image (median; bar to p90)")
        ax.set_title(f"{model} {resolution}px, {scenario}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path, f"Latency vs batch size: {_machine_title(doc)}")


def plot_speedup(doc: dict[str, Any], path: Path) -> None:
    """Paired speed-up over the eager FP32 baseline, bars per backend, grouped by batch size."""
    plt, fig, panels = _plot_grid(doc)
    for ((model, resolution, scenario), cases), ax in panels:
        backends = list(
            dict.fromkeys(r["backend"] for c in cases for r in c["results"] if r["status"] == "ok")
        )
        width = 0.8 / max(1, len(cases))
        for j, case in enumerate(cases):
            by_name = {r["backend"]: r for r in case["results"] if r["status"] == "ok"}
            values, lo, hi = [], [], []
            for name in backends:
                s = (by_name.get(name) or {}).get("speedup_vs_baseline")
                values.append(s["paired_median"] if s else 0.0)
                lo.append(s["paired_median"] - s["paired_min"] if s else 0.0)
                hi.append(s["paired_max"] - s["paired_median"] if s else 0.0)
            xs = [i + (j - (len(cases) - 1) / 2) * width for i in range(len(backends))]
            bars = ax.bar(xs, values, width, yerr=[lo, hi], capsize=2, label=f"batch {case['batch']}")
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(backends)), backends, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("speed-up vs torch-fp32 (x)")
        ax.set_title(f"{model} {resolution}px, {scenario}", fontsize=10)
        ax.legend(fontsize=7)
    _save(plt, fig, path, f"Speed-up over eager PyTorch FP32: {_machine_title(doc)}")


def _machine_title(doc: dict[str, Any]) -> str:
    gpu = doc["machine"].get("gpu")
    if doc["device"] == "cuda" and gpu:
        return gpu["name"]
    cpu = doc["machine"]["cpu"]
    threads = doc["config"].get("threads")
    return f"{cpu['model']}, {cpu['usable_cpus']} cores" + (f", {threads} thread(s)" if threads else "")


def _save(plt: Any, fig: Any, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_output(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def write_partial(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """The document so far, as ``bench.partial.json`` (``write_report`` removes it once the run is whole):
    what a run stopped by a time limit leaves behind."""
    path = Path(out_dir) / PARTIAL_JSON_NAME
    write_json_atomic(path, doc)
    return path


def write_report(doc: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write JSON, Markdown and (unless ``plots`` is False) the two PNG plots; return the paths."""
    out = Path(out_dir)
    paths = [out / JSON_NAME, out / MARKDOWN_NAME]
    write_json_atomic(paths[0], doc)
    (out / PARTIAL_JSON_NAME).unlink(missing_ok=True)
    write_bytes_atomic(paths[1], to_markdown(doc).encode("utf-8"))
    if plots:
        paths += [out / LATENCY_PLOT, out / SPEEDUP_PLOT]
        plot_latency(doc, paths[2])
        plot_speedup(doc, paths[3])
    return paths


def read_result(path: str | Path) -> dict[str, Any]:
    """A result document written by ``write_report``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
