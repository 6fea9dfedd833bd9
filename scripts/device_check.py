#!/usr/bin/env python3
"""Everything this project can check on a GPU, in one command that fits a short machine lease.

    python3 scripts/device_check.py [--out DIR] [--budget SECONDS] [--wheels DIR] [--dry-run]

Steps, each under its own time limit (and all within ``--budget``, 470 s by default), a failure recorded
and the next step run:

1. ``environment``: Python, platform, GPU and driver (nvidia-smi), torch and its CUDA, cuda-bindings,
   NVRTC, ONNX Runtime and its providers, TensorRT: what the machine holds, and whether a GPU is usable.
2. ``install``: wheels carried in ``--wheels`` (default ``.whl/`` in the checkout; e.g. the EfficientNet
   wheels the attacks need) installed with ``pip --no-index --no-deps`` into a private folder put on the
   steps' ``PYTHONPATH``; the project itself runs from the checkout (no install, no network).
3. ``gpu-tests``: ``pytest -m gpu``: the fused kernels against the numpy reference (Philox words bit for
   bit, normals within 2e-6), the torch backend on CUDA through the fused path, the TensorRT backend's
   CUDA graphs, events and pinned copies over a stand-in engine that launches a real kernel (no TensorRT
   needed), ONNX Runtime CUDA and TensorRT where present. Test files that cannot be collected (a missing
   optional package) are listed apart: they do not make a step whose every collected test passed fail.
4. ``kernels-bench``: ``benchmarks/kernels_bench.py``, fused kernels against the unfused torch sequence at
   batch 1, 8 and 64, GB/s against the peak and the measured copy bandwidth.
5. ``nrp-bench``: ``nrp bench --device cuda`` at 224x224, batch 1 and 8: eager FP32 (the baseline), FP16
   channels_last, the runtime's torch backend with the fused kernels (end to end with the dynamic
   defence), ONNX Runtime CUDA and TensorRT (listed as skipped with the reason where absent).
6. ``nrp-bench-compiled``: the same for ``torch.compile`` with CUDA graphs (reduce-overhead), FP16,
   against the baseline (the ``model`` and ``e2e-dynamic`` scenarios), apart because compiling can take
   minutes; what it timed before its limit is kept (``nrp bench`` writes partial results as it goes).

Results go to ``--out`` (default ``$OUT``, else ``device_check_out``): ``summary.json`` (every step: status,
seconds, reason, the tail of its output), ``summary.md``, ``summary.png`` (when there are timings to plot),
``device_check.log`` (every step's full output), ``kernels_bench.json``, ``bench.json`` and
``bench_compiled.json``: seven files, flat, as a lease hands back. ``summary.md`` names every bench
backend that could not run, with the reason (no onnxruntime-gpu, no TensorRT). Without a usable GPU (or with
``--dry-run``) it is a dry run: ``environment`` runs, every other step is listed as skipped with the reason.
The exit status is 0 whenever the summary was written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SITE = Path("/tmp/nrp_device_check_site")
BENCH_MODELS = ("NRP_resG", "NRP")
BENCH_BACKENDS = (
    "torch-fp32",
    "torch-fp16-cl",
    "fused-torch-fp32",
    "fused-torch-fp16-cl",
    "onnxruntime-cuda-fp16",
    "tensorrt-fp16",
)
COMPILED_BACKENDS = ("torch-fp32", "torch-compile-graphs-fp16-cl")
REPORT_RESERVE_S = 15  # kept back from the budget for writing the report

# Runs in the checked interpreter; prints one JSON object of what the machine holds.
_PROBE = r"""
import importlib, json, platform, shutil, subprocess, sys
facts = {"python": sys.version.split()[0], "platform": platform.platform(), "executable": sys.executable}
def version(name):
    try:
        return getattr(importlib.import_module(name), "__version__", "present")
    except Exception as exc:
        return None
for name in ("numpy", "torch", "onnxruntime", "tensorrt", "onnx", "matplotlib", "pytest"):
    facts[name] = version(name)
try:
    import torch
    facts["torch_cuda"] = torch.version.cuda
    facts["torch_cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}
except Exception as exc:
    facts["torch_cuda_available"] = False
try:
    import onnxruntime
    facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
except Exception:
    pass
try:
    from nrp_deploy.kernels import nvrtc_version
    from nrp_deploy.kernels.cuda_api import check, init_driver
    try:
        facts["cuda_devices"] = int(check(init_driver().cuDeviceGetCount(), "cuDeviceGetCount"))
    except Exception as exc:
        facts["cuda_devices"] = 0
        facts["cuda_problem"] = str(exc)
    try:
        facts["nvrtc"] = ".".join(map(str, nvrtc_version()))
    except Exception as exc:
        facts["nvrtc"] = None
        facts["nvrtc_problem"] = str(exc)
except Exception as exc:
    facts["cuda_devices"] = 0
    facts["cuda_problem"] = f"{type(exc).__name__}: {exc}"
try:
    from importlib.metadata import version as dist_version
    facts["cuda_bindings"] = dist_version("cuda-bindings")
except Exception:
    facts["cuda_bindings"] = None
if shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
print("PROBE " + json.dumps(facts))
"""


@dataclass
class Step:
    """One check: its command, time limit, and what it needs; filled in with its outcome when run."""

    name: str
    limit_s: int
    command: list[str]
    needs_gpu: bool = True
    status: str = "pending"  # ok / failed / timeout / skipped
    reason: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    tail: str = ""
    collection_errors: list[str] = field(default_factory=list)  # pytest steps: files not collected

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "limit_s": self.limit_s,
            "returncode": self.returncode,
            "command": " ".join(self.command),
            "collection_errors": self.collection_errors,
            "output_tail": self.tail,
        }


def _env(site: Path | None) -> dict[str, str]:
    paths = [str(REPO), *([str(site)] if site else []), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}


def run_step(step: Step, timeout: float, env: dict[str, str], log) -> str:
    """Run ``step`` under ``timeout`` seconds; its outcome goes into the step, its output into ``log``;
    return the output."""
    log.write(f"\n===== {step.name}: {' '.join(step.command)} (limit {timeout:.0f} s)\n")
    log.flush()
    started = time.monotonic()
    try:
        done = subprocess.run(
            step.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, step.returncode = done.stdout + done.stderr, done.returncode
        step.status = "ok" if done.returncode == 0 else "failed"
        if done.returncode:
            step.reason = f"exit status {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        step.status, step.reason = "timeout", f"stopped at its {timeout:.0f} s limit"
    step.seconds = time.monotonic() - started
    log.write(output)
    log.flush()
    step.tail = output[-3000:]
    return output


_COLLECTION_ERROR = re.compile(r"^ERROR (\S+\.py)(?: - (.*))?$")
_TEST_PROBLEM = re.compile(r"^(FAILED|ERROR) \S+::")


def judge_tests(step: Step, output: str) -> None:
    """Tell test files pytest could not collect apart from tests that failed: with every collected test
    passed, collection errors alone (a missing optional package) leave the step ok, and are listed."""
    lines = output.splitlines()
    step.collection_errors = [
        f"{m.group(1)}: {m.group(2) or 'collection error'}" for m in map(_COLLECTION_ERROR.match, lines) if m
    ]
    problems = sum(1 for line in lines if _TEST_PROBLEM.match(line))
    if not step.collection_errors:
        return
    files = f"{len(step.collection_errors)} test file(s) could not be collected"
    if step.status == "failed" and step.returncode == 1 and problems == 0:
        step.status, step.reason = "ok", f"every collected test passed; {files}"
    elif step.status == "failed":
        step.reason = f"{problems} test(s) failed or errored; {files}"


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def plan(out: Path, wheels: Path | None) -> list[Step]:
    py = sys.executable
    pip_install = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade"]
    bench = [
        py,
        "-m",
        "nrp_deploy",
        "bench",
        "--device",
        "cuda",
        "--resolutions",
        "224",
        "--batch-sizes",
        "1",
        "8",
    ]
    bench += ["--rounds", "5", "--warmup", "3", "--no-plots"]
    return [
        Step("environment", 60, [py, "-c", _PROBE], needs_gpu=False),
        Step(
            "install",
            90,
            [
                *pip_install,
                "--target",
                str(SITE),
                *sorted(str(w) for w in (wheels.glob("*.whl") if wheels else [])),
            ],
        ),
        Step(
            "gpu-tests",
            210,
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-rfE",
                "-p",
                "no:cacheprovider",
                "--continue-on-collection-errors",
                "tests",
            ],
        ),
        Step(
            "kernels-bench",
            90,
            [
                py,
                "benchmarks/kernels_bench.py",
                "--batches",
                "1",
                "8",
                "64",
                "--reps",
                "100",
                "--output",
                str(out / "kernels_bench.json"),
            ],
        ),
        Step(
            "nrp-bench",
            150,
            [*bench, "--models", *BENCH_MODELS, "--backends", *BENCH_BACKENDS, "-o", str(out / "_bench")],
        ),
        Step(
            "nrp-bench-compiled",
            120,
            [
                *bench,
                "--models",
                "NRP_resG",
                "--scenarios",
                "model",
                "e2e-dynamic",
                "--backends",
                *COMPILED_BACKENDS,
                "-o",
                str(out / "_compiled"),
            ],
        ),
    ]


def _probe_facts(step: Step) -> dict[str, Any]:
    for line in step.tail.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE ") :])
    return {}


def _gpu_missing(facts: dict[str, Any]) -> str | None:
    """Why the GPU steps cannot run here, or None when they can."""
    if not facts:
        return "the environment probe failed, so nothing is known of this machine"
    if not facts.get("cuda_devices"):
        problem = (
            facts.get("cuda_problem") or "the NVIDIA driver reports no device, or cuda-bindings is absent"
        )
        return f"no CUDA device ({problem})"
    if not facts.get("torch_cuda_available"):
        return f"torch {facts.get('torch')} has no CUDA (a CPU build?)"
    return None


def check(out: Path, budget: float, wheels: Path | None, dry_run: bool) -> dict[str, Any]:
    """Run (or, without a GPU, list) every step; write the report; return the summary document."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    steps = plan(out, wheels)
    site: Path | None = None
    with open(out / "device_check.log", "w", encoding="utf-8") as log:
        environment, *rest = steps
        run_step(environment, environment.limit_s, _env(None), log)
        facts = _probe_facts(environment)
        skip_all = "dry run (--dry-run)" if dry_run else _gpu_missing(facts)
        for step in rest:
            remaining = budget - (time.monotonic() - started) - REPORT_RESERVE_S
            if skip_all:
                step.status, step.reason = "skipped", skip_all
            elif step.name == "install" and not (wheels and any(wheels.glob("*.whl"))):
                step.status, step.reason = "skipped", f"no carried wheels in {wheels}"
            elif remaining < 20:
                step.status, step.reason = "skipped", f"the {budget:.0f} s budget is spent"
            else:
                output = run_step(step, min(step.limit_s, remaining), _env(site), log)
                if step.name == "gpu-tests":
                    judge_tests(step, output)
                if step.name == "install" and step.status == "ok":
                    site = SITE
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": bool(skip_all),
        "budget_s": budget,
        "seconds": round(time.monotonic() - started, 1),
        "machine": facts,
        "steps": [s.record() for s in steps],
    }
    _collect_results(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(summary), encoding="utf-8")
    _plot(out, summary)
    return summary


def _collect_results(out: Path, summary: dict[str, Any]) -> None:
    """Move each bench run's JSON to the top of ``out`` (a run stopped by its limit leaves its partial
    results, marked so) and keep the timings and the backends that could not run, which the report shows."""
    summary["partial_bench"] = []
    for folder, name in (("_bench", "bench.json"), ("_compiled", "bench_compiled.json")):
        whole, partial = out / folder / "bench.json", out / folder / "bench.partial.json"
        if whole.is_file():
            whole.replace(out / name)
        elif partial.is_file():
            doc = json.loads(partial.read_text())
            doc["partial"] = True
            (out / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            summary["partial_bench"].append(name)
        shutil.rmtree(out / folder, ignore_errors=True)  # bench.md is rendered into summary.md instead
    names = ("bench.json", "bench_compiled.json")
    summary["bench"] = [row for name in names for row in _bench_rows(out / name)]
    summary["not_run"] = _backends_not_run([out / name for name in names])
    kernels = out / "kernels_bench.json"
    summary["kernels"] = json.loads(kernels.read_text())["results"] if kernels.is_file() else []


def _backends_not_run(paths: list[Path]) -> list[dict[str, str]]:
    """Every (model, backend) a bench run could not set up, with the reason (no onnxruntime-gpu, ...)."""
    seen, rows = set(), []
    for path in paths:
        if not path.is_file():
            continue
        for model in json.loads(path.read_text()).get("models", []):
            for b in model.get("backends", []):
                key = (model["name"], b["backend"])
                if b["status"] != "ok" and key not in seen:
                    seen.add(key)
                    rows.append(
                        {"model": model["name"], "backend": b["backend"], "status": b["status"],
                         "reason": b.get("reason", "")}
                    )  # fmt: skip
    return rows


def _bench_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for case in json.loads(path.read_text()).get("cases", []):
        for r in case["results"]:
            row = {k: case[k] for k in ("model", "resolution", "batch", "scenario")}
            row.update(backend=r["backend"], status=r["status"])
            if r["status"] == "ok":
                speedup = r.get("speedup_vs_baseline") or {}
                row.update(median_ms=r["latency_ms"]["median_ms"], speedup=speedup.get("paired_median"))
            rows.append(row)
    return rows


def render_markdown(summary: dict[str, Any]) -> str:
    facts = summary["machine"]
    lines = [
        f"# Device check, {summary['date']}",
        "",
        f"GPU: {facts.get('gpu') or facts.get('nvidia_smi') or 'none'}; torch {facts.get('torch')} "
        f"(CUDA {facts.get('torch_cuda')}); cuda-bindings {facts.get('cuda_bindings')}; NVRTC {facts.get('nvrtc')}; "
        f"onnxruntime {facts.get('onnxruntime')} {facts.get('onnxruntime_providers', '')}; "
        f"TensorRT {facts.get('tensorrt')}; Python {facts.get('python')}.",
        "",
        f"{'Dry run: no GPU step ran. ' if summary['dry_run'] else ''}"
        f"{summary['seconds']:.0f} s of a {summary['budget_s']:.0f} s budget.",
        "",
        "| step | status | seconds | limit | reason | command |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for s in summary["steps"]:
        command = s["command"] if s["name"] != "environment" else "(probe: versions, GPU, providers)"
        lines.append(
            f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['limit_s']} | {s['reason']} | `{command}` |"
        )
    for s in summary["steps"]:
        if s.get("collection_errors"):
            lines += ["", f"## {s['name']}: test files that could not be collected", ""]
            lines += [f"- {error}" for error in s["collection_errors"]]
    if summary.get("not_run"):
        lines += ["", "## Bench backends that could not run", ""]
        lines += [
            f"- {r['model']} / {r['backend']} ({r['status']}): {r['reason']}" for r in summary["not_run"]
        ]
    if summary.get("partial_bench"):
        lines += [
            "",
            f"Partial results (the run was stopped at its limit): {', '.join(summary['partial_bench'])}.",
        ]
    if summary["kernels"]:
        lines += [
            "",
            "## Fused kernels (224x224 RGB)",
            "",
            "| op | batch | fused us | unfused us | speed-up | GB/s | % copy |",
        ]
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in summary["kernels"]:
            lines.append(
                f"| {k['op']} | {k['batch']} | {k['fused_us']:.1f} | {k['unfused_us']:.1f} | {k['speedup']:.1f}x "
                f"| {k['fused_gbps']:.0f} | {100 * k.get('copy_share', 0):.0f} |"
            )
    if summary["bench"]:
        lines += ["", "## nrp bench (median ms; speed-up vs eager FP32, paired)", ""]
        lines += [
            "| model | batch | scenario | backend | median ms | speed-up |",
            "| --- | ---: | --- | --- | ---: | ---: |",
        ]
        for b in summary["bench"]:
            ms = f"{b['median_ms']:.2f}" if "median_ms" in b else b["status"]
            speed = f"{b['speedup']:.2f}x" if b.get("speedup") else "-"
            lines.append(
                f"| {b['model']} | {b['batch']} | {b['scenario']} | {b['backend']} | {ms} | {speed} |"
            )
    return "\n".join(lines) + "\n"


def _plot(out: Path, summary: dict[str, Any]) -> None:
    """summary.png: fused-kernel speed-ups and end-to-end latencies, when there are any."""
    if not summary["kernels"] and not summary["bench"]:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ops = sorted({k["op"] for k in summary["kernels"]})
    for op in ops:
        rows = [k for k in summary["kernels"] if k["op"] == op]
        axes[0].plot([k["batch"] for k in rows], [k["speedup"] for k in rows], marker="o", label=op)
    axes[0].set(
        xscale="log", xlabel="batch (224x224)", ylabel="fused vs unfused torch (x)", title="fused kernels"
    )
    axes[0].legend(fontsize=8)
    rows = [b for b in summary["bench"] if b["scenario"] == "e2e-dynamic" and "median_ms" in b]
    labels = sorted({(b["model"], b["backend"]) for b in rows})
    for batch, offset in ((1, -0.2), (8, 0.2)):
        values = [
            next(
                (b["median_ms"] for b in rows if (b["model"], b["backend"]) == key and b["batch"] == batch), 0
            )
            for key in labels
        ]
        axes[1].barh([i + offset for i in range(len(labels))], values, height=0.4, label=f"batch {batch}")
    axes[1].set_yticks(range(len(labels)), [f"{m} {b}" for m, b in labels], fontsize=7)
    axes[1].set(xlabel="median ms, uint8 in/out with the dynamic defence", title="nrp bench e2e-dynamic")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "device_check_out"))
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for everything (default 470)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (default .whl/)")
    parser.add_argument("--dry-run", action="store_true", help="list the GPU steps without running them")
    args = parser.parse_args(argv)
    summary = check(args.out, args.budget, args.wheels, args.dry_run)
    for s in summary["steps"]:
        print(f"{s['name']:<20} {s['status']:<8} {s['seconds']:>6.1f} s  {s['reason']}")
    print(f"report: {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
