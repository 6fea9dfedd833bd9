"""INT8 on the CPU: ONNX Runtime static QDQ (per CPU target) vs ModelOpt Q/DQ vs FP32, speed and PSNR.

Which INT8 artifact should a CPU deployment run? Full-size NRP_resG (seeded random weights: speed does not
depend on their values, and PSNR is measured against the same weights in FP32 torch), batch 1, 224x224,
ONNX Runtime's CPU provider with the same intra-op thread count for every model. Calibration: the example
photos (random 224 crops, every 4th photo held out), so PSNR is on a photo the calibration never saw.
Models are timed alternately after a warm-up (median and minimum of the repeats), so a noisy shared
machine slows all of them alike.

ONNX Runtime's artifacts come in both CPU targets (``nrp_deploy.cpu_features``): ``vnni`` (8-bit weights)
and ``any`` (weights in [-64, 64]). An ``any`` artifact cannot saturate anywhere, so its integer results,
and hence its PSNR, are the same on every x86-64 CPU; only its speed is this machine's. The machine line
names the CPU's ISA, which decides whether the ``vnni`` row is exact here.

    python benchmarks/export_int8_cpu.py [--threads 2] [--repeats 15] [--ort-only] [--name export_int8_cpu]

Writes ``NAME.json`` and ``NAME.md`` into the output folder (``--out``, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from nrp_deploy.artifacts.metadata import tool_versions
from nrp_deploy.cpu_features import host_isa
from nrp_deploy.export.calibration import calibration_and_holdout
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.export.int8 import export_int8
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import write_bytes_atomic, write_json_atomic
from nrp_deploy.models.spec import ModelSpec

SIZE = 224


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build(workdir: Path, ort_only: bool) -> tuple[torch.nn.Module, dict[str, Path], dict[str, dict]]:
    torch.manual_seed(0)
    module = ModelSpec("NRP_resG").build().eval()
    checkpoint = workdir / "NRP_resG_random_seed0.pth"
    torch.save(module.state_dict(), checkpoint)
    fp32 = export_onnx(checkpoint, workdir / "fp32.onnx").path
    models = {"FP32": fp32}
    info: dict[str, dict] = {}
    common = {"crop_size": SIZE, "count": 8, "progress": False}
    variants = {
        "INT8 ORT QDQ, target vnni (8-bit weights)": {"method": "ort", "target_cpu": "vnni"},
        "INT8 ORT QDQ, target any (weights in [-64, 64])": {"method": "ort", "target_cpu": "any"},
    }
    if not ort_only:
        variants["INT8 ModelOpt, rest FP16 (method=modelopt)"] = {
            "method": "modelopt",
            "high_precision": "fp16",
        }
        variants["INT8 ModelOpt, rest FP32"] = {"method": "modelopt", "high_precision": "fp32"}
    for index, (label, options) in enumerate(variants.items()):
        start = time.perf_counter()
        result = export_int8(fp32, workdir / f"int8_{index}.onnx", **common, **options)
        info[label] = {
            "export_s": time.perf_counter() - start,
            "verdict": result.verdict.line,
            "calibration": result.metadata.calibration,
        }
        models[label] = result.path
    return module, models, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="export_int8_cpu", help="file name stem of the results")
    parser.add_argument("--ort-only", action="store_true", help="leave out the ModelOpt artifacts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nrp-int8-bench-") as tmp:
        module, models, info = build(Path(tmp), args.ort_only)
        _, held = calibration_and_holdout(crop_size=SIZE, count=8)
        psnr = {label: measure_fidelity(path, module, held.batch) for label, path in models.items()}
        x = held.batch[:1]
        sessions = {label: session(path, args.threads) for label, path in models.items()}
        for s in sessions.values():  # warm-up: first runs allocate and pick kernels
            s.run(None, {"input": x})
            s.run(None, {"input": x})
        times: dict[str, list[float]] = {label: [] for label in sessions}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            for label, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"input": x})
                times[label].append(time.perf_counter() - start)
        load_after = os.getloadavg()[0]
        sizes = {label: path.stat().st_size for label, path in models.items()}

    fp32_median = statistics.median(times["FP32"])
    rows = []
    for label in models:
        median = statistics.median(times[label])
        rows.append(
            {
                "model": label,
                "median_ms": 1000 * median,
                "min_ms": 1000 * min(times[label]),
                "speedup_vs_fp32": fp32_median / median,
                "psnr_db": psnr[label].psnr_db,
                "max_abs": psnr[label].max_abs,
                "mean_abs": psnr[label].mean_abs,
                "size_mb": sizes[label] / 1e6,
            }
        )
    report = {
        "machine": {
            "cpu": host_isa().model,
            "isa": host_isa().headline(),
            "features": sorted(host_isa().flags),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "tools": tool_versions(),
        "setup": {
            "model": "NRP_resG(nf=64, nb=23), random weights torch.manual_seed(0)",
            "input": f"1x3x{SIZE}x{SIZE} float32",
            "threads": args.threads,
            "repeats": args.repeats,
            "load_average_1min": [load_before, load_after],
            "fidelity_images": held.summary(),
        },
        "results": rows,
        "exports": info,
        "command_args": " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{args.name}.json", report)
    write_bytes_atomic(args.out / f"{args.name}.md", markdown(report).encode("utf-8"))
    print(markdown(report))


def markdown(report: dict) -> str:
    setup, machine = report["setup"], report["machine"]
    lines = [
        "# INT8 on the CPU: ONNX Runtime QDQ (per CPU target) vs ModelOpt Q/DQ vs FP32",
        "",
        f"Machine: {machine['cpu']} ({machine.get('isa', 'ISA not recorded')}), {machine['cores']} cores, shared (1-min load average "
        f"{setup['load_average_1min'][0]:.1f} before, {setup['load_average_1min'][1]:.1f} after timing); "
        f"no GPU. ONNX Runtime {report['tools']['onnxruntime']} CPU provider, "
        f"{setup['threads']} intra-op threads for every model.",
        f"Model: {setup['model']}; input {setup['input']}, batch 1; "
        f"{setup['repeats']} timed runs each, interleaved, after 2 warm-up runs.",
        f"PSNR / errors: against FP32 torch on {setup['fidelity_images']['count']} held-out "
        f"{setup['fidelity_images']['crop_size']}px crop(s) of {', '.join(setup['fidelity_images']['images'])} "
        "(not used for calibration), raw outputs, peak 1.",
        "",
        "| model | median ms | min ms | speed-up vs FP32 | PSNR dB | max abs | size MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['speedup_vs_fp32']:.2f}x | "
            f"{r['psnr_db']:.1f} | {r['max_abs']:.3g} | {r['size_mb']:.1f} |"
        )
    lines += ["", "Verdicts recorded in the artifacts' metadata:", ""]
    lines += [f"- {v['verdict']}" for v in report["exports"].values()]
    lines += [
        "",
        f"Reproduce: `python benchmarks/export_int8_cpu.py {report['command_args']}` (writes this file and its JSON).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
