"""Export the full-size published architectures to FP32 and calibrated FP16 ONNX; report FP16 fidelity.

NRP (16.5 M parameters, 347 convolutions) and NRP_resG (1.7 M, 48 convolutions) at their published sizes,
with seeded random weights (``torch.manual_seed(0)``, PyTorch's default initialisation; no pretrained
weights are downloaded). For each: ``export_onnx`` (checked against torch at three small shapes), then
``export_fp16`` from that artifact at each ``--data-max`` (the activation magnitude above which a node stays
FP32), calibrated on random crops of the example photos and judged against FP32 torch on crops of the
held-out photo. NRP costs about 830 GMAC per 224x224 image, so on a small CPU
its fidelity check uses smaller crops (``--nrp-holdout-size``, default 96 px); calibration stays at the
deployment resolution (224).

    python benchmarks/export_fullsize.py [--out benchmarks/results] [--keep DIR]

Writes ``export_fullsize.json`` and ``export_fullsize.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nrp_deploy.artifacts.metadata import tool_versions
from nrp_deploy.export.calibration import calibration_and_holdout
from nrp_deploy.export.fp16 import export_fp16
from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.fileutil import write_bytes_atomic, write_json_atomic
from nrp_deploy.models.spec import ModelSpec


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def fp16_row(result, seconds: float) -> dict:
    meta = result.metadata
    return {
        "data_max": meta.calibration["data_max"],
        "export_s": seconds,
        "size_mb": result.path.stat().st_size / 1e6,
        "verdict": result.verdict.line,
        "psnr_db": meta.fidelity.psnr_db,
        "max_abs": meta.fidelity.max_abs,
        "mean_abs": meta.fidelity.mean_abs,
        "fidelity_images": meta.fidelity_images,
        "calibration": meta.calibration,
    }


def run_one(architecture: str, workdir: Path, args: argparse.Namespace, holdout_size: int) -> dict:
    torch.manual_seed(0)
    module = ModelSpec(architecture).build().eval()
    checkpoint = workdir / f"{architecture}_random_seed0.pth"
    torch.save(module.state_dict(), checkpoint)

    start = time.perf_counter()
    fp32 = export_onnx(checkpoint, workdir / f"{architecture}_fp32.onnx", overwrite=True)
    fp32_s = time.perf_counter() - start
    fp16_rows = []
    for data_max in args.data_max:
        start = time.perf_counter()
        fp16 = export_fp16(
            fp32.path,
            workdir / f"{architecture}_fp16_dmax{data_max:g}.onnx",
            crop_size=args.crop_size,
            holdout_size=holdout_size,
            holdout_count=args.holdout_count,
            data_max=data_max,
            overwrite=True,
        )
        fp16_rows.append(fp16_row(fp16, time.perf_counter() - start))

    # Scale of the reference output, so the errors can be read against it (random weights, PSNR peak 1).
    _, held = calibration_and_holdout(
        crop_size=args.crop_size, holdout_size=holdout_size, holdout_count=args.holdout_count
    )
    with torch.no_grad():
        reference = module(torch.from_numpy(held.batch))
    return {
        "architecture": ModelSpec(architecture).describe(),
        "parameters": sum(p.numel() for p in module.parameters()),
        "fp32": {
            "export_s": fp32_s,
            "size_mb": fp32.path.stat().st_size / 1e6,
            "verdict": fp32.verdict.line,
            "max_abs_per_shape": fp32.metadata.fidelity_images["max_abs_per_shape"],
        },
        "fp16": fp16_rows,
        "reference_output": {
            "min": float(reference.min()),
            "max": float(reference.max()),
            "std": float(reference.std()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--crop-size", type=int, default=224, help="calibration crops (default: 224)")
    parser.add_argument("--nrp-holdout-size", type=int, default=96, help="NRP fidelity crops (default: 96)")
    parser.add_argument("--holdout-count", type=int, default=4)
    parser.add_argument(
        "--data-max", type=float, nargs="+", default=[512.0, 32.0], help="FP16 variants (default: 512 32)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the artifacts in this folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nrp-fullsize-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = [
            run_one("NRP_resG", workdir, args, args.crop_size),
            run_one("NRP", workdir, args, args.nrp_holdout_size),
        ]
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "tools": tool_versions(),
        "weights": "random, torch.manual_seed(0), PyTorch default initialisation",
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "export_fullsize.json", report)
    text = markdown(report)
    write_bytes_atomic(args.out / "export_fullsize.md", text.encode("utf-8"))
    print(text)


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Full-size export: FP32 and calibrated FP16 ONNX of the published architectures",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, no GPU; ONNX Runtime "
        f"{report['tools']['onnxruntime']} (CPU), ModelOpt {report['tools']['nvidia-modelopt']}, "
        f"torch {report['tools']['torch']}. Weights: {report['weights']}.",
        "FP16 = ModelOpt AutoCast; nodes whose activations on the calibration crops exceed data_max stay FP32 "
        "(512 is AutoCast's default). Fidelity against FP32 torch on crops of the held-out photo (never "
        "calibrated on), raw outputs, PSNR with peak 1. Export times include calibration and the fidelity "
        "check, on a shared machine.",
        "",
        "| model | params | FP32 export s | FP32 max abs vs torch | data_max | FP16 export s | FP16 PSNR dB "
        "| FP16 max abs | fidelity crops | nodes kept FP32 | reference output range (std) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in report["results"]:
        ref = r["reference_output"]
        fp32_err = max(r["fp32"]["max_abs_per_shape"].values())
        for fp16 in r["fp16"]:
            cal = fp16["calibration"]
            kept = f"{len(cal['nodes_fp32'])} of {cal['nodes_total']}"
            lines.append(
                f"| {r['architecture']} | {r['parameters']:,} | {r['fp32']['export_s']:.0f} | {fp32_err:.2g} | "
                f"{fp16['data_max']:g} | {fp16['export_s']:.0f} | {fp16['psnr_db']:.1f} | {fp16['max_abs']:.2g} | "
                f"{fp16['fidelity_images']['description']} | {kept} | "
                f"[{ref['min']:.3f}, {ref['max']:.3f}] ({ref['std']:.3f}) |"
            )
    lines += ["", "Calibration and the nodes kept in FP32:", ""]
    for r in report["results"]:
        for fp16 in r["fp16"]:
            cal = fp16["calibration"]
            ops = ", ".join(f"{n} {op}" for op, n in cal["nodes_fp32_ops"].items())
            kept = f"{ops} (names in the JSON)" if ops else "none"
            lines.append(
                f"- {r['architecture']}, data_max {fp16['data_max']:g}: {cal['count']} crops of "
                f"{cal['crop_size']} px from {', '.join(cal['images'])}; largest activation "
                f"{cal['max_activation']:.1f}; kept in FP32: {kept}."
            )
    lines += ["", "Verdicts:", ""]
    for r in report["results"]:
        lines += [f"- {r['fp32']['verdict']}"] + [f"- {fp16['verdict']}" for fp16 in r["fp16"]]
    lines += ["", "Reproduce: `python benchmarks/export_fullsize.py` (writes this file and its JSON).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
