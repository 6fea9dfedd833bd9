"""Peak memory of ONNX Runtime INT8 export (MinMax calibration) of the full-size NRP, per crop size.

``nrp export int8 --method ort`` measures activation ranges with the export's streamed pass and hands them
to ONNX Runtime as its calibration cache. This script runs that command on the full NRP (seeded random
weights: memory does not depend on their values) and records the peak resident memory of the command and
the quantiser process it spawns (``ru_maxrss`` of the waited-for process tree), the wall time and the
verdict. ``--ort-calibrator-crops`` also runs ONNX Runtime's own MinMax calibrator (``quantize_static``
with a data reader, no cache) on the same graph at the given crop sizes, for comparison.

    python benchmarks/int8_calibration_memory.py [--crops 224] [--count 8] [--ort-calibrator-crops 64 96]

Writes ``export_int8_nrp_memory.json`` and ``.md`` into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from nrp_deploy.cpu_features import host_isa
from nrp_deploy.fileutil import write_bytes_atomic, write_json_atomic
from nrp_deploy.models.spec import ModelSpec

_ORT_OWN_CALIBRATION = """
import sys
import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
from nrp_deploy.export.calibration import calibration_and_holdout
from nrp_deploy.export.ort_quant import _CropReader

fp32, out, crop, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
calib, _ = calibration_and_holdout(crop_size=crop, count=count)
quant_pre_process(fp32, out + ".pre.onnx")
quantize_static(out + ".pre.onnx", out, _CropReader(calib.batch, "input", False), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
"""


def run_measured(argv: list[str], limit_gib: float) -> dict:
    """Run ``argv`` under an address-space limit; its wall time, peak RSS (GiB) and exit status."""

    def limit() -> None:
        import resource

        cap = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=limit)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "wall_s": time.perf_counter() - start,
        # Linux reports KiB, and counts this script's own resident set at fork (about 0.4 GiB with torch
        # imported) as a floor: the figures here are all well above it
        "peak_rss_gib": usage.ru_maxrss / 2**20,
        "exit_status": os.waitstatus_to_exitcode(status),
        "last_line": output.strip().splitlines()[-1] if output.strip() else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, nargs="+", default=[224])
    parser.add_argument("--count", type=int, default=8, help="calibration crops")
    parser.add_argument("--ort-calibrator-crops", type=int, nargs="*", default=[])
    parser.add_argument("--limit-gib", type=float, default=16.0, help="address-space cap per run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="nrp-int8-memory-") as tmp:
        torch.manual_seed(0)
        checkpoint = Path(tmp) / "NRP-random-seed0.safetensors"
        save_file(ModelSpec("NRP").build().state_dict(), str(checkpoint))
        nrp = [sys.executable, "-m", "nrp_deploy"]
        for crop in args.crops:
            out = Path(tmp) / f"int8-{crop}.onnx"
            argv = [*nrp, "export", "int8", "--model", str(checkpoint), "--method", "ort", "-o", str(out)]
            argv += ["--crop-size", str(crop), "--count", str(args.count), "--no-progress", "--overwrite"]
            rows.append(
                {"calibration": "streamed (nrp export int8 --method ort)", "crop": crop}
                | run_measured(argv, args.limit_gib)
            )
            print(rows[-1], flush=True)
        fp32 = Path(tmp) / "fp32.onnx"
        if args.ort_calibrator_crops:
            subprocess.run([*nrp, "export", "onnx", "--model", str(checkpoint), "-o", str(fp32)], check=True)
        for crop in args.ort_calibrator_crops:
            out = Path(tmp) / f"ort-own-{crop}.onnx"
            argv = [
                sys.executable,
                "-c",
                _ORT_OWN_CALIBRATION,
                str(fp32),
                str(out),
                str(crop),
                str(args.count),
            ]
            rows.append(
                {"calibration": "ONNX Runtime's MinMax calibrator", "crop": crop}
                | run_measured(argv, args.limit_gib)
            )
            print(rows[-1], flush=True)

    isa = host_isa()
    report = {
        "machine": {
            "cpu": isa.model,
            "isa": isa.headline(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": "NRP (nf 64, nb 23, gc 32), seeded random weights",
        "count": args.count,
        "limit_gib": args.limit_gib,
        "rows": rows,
        "command_args": " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "export_int8_nrp_memory.json", report)
    write_bytes_atomic(args.out / "export_int8_nrp_memory.md", markdown(report).encode("utf-8"))
    print(markdown(report))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# ONNX Runtime INT8 export of the full NRP: peak memory of calibration",
        "",
        f"Machine: {m['cpu']} ({m['isa']}), {m['cores']} cores, shared. Model: {report['model']}; "
        f"{report['count']} calibration crops; each run capped at {report['limit_gib']:.0f} GiB of address "
        "space. Peak RSS covers the command and the quantiser process it spawns.",
        "",
        "| calibration | crop px | peak RSS GiB | wall s | exit | last line |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        last = r["last_line"].replace("|", "/")[:160]
        lines.append(
            f"| {r['calibration']} | {r['crop']} | {r['peak_rss_gib']:.2f} | {r['wall_s']:.0f} | "
            f"{r['exit_status']} | {last} |"
        )
    lines += ["", f"Reproduce: `python benchmarks/int8_calibration_memory.py {report['command_args']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
