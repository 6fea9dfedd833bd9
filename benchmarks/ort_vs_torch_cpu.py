"""ONNX Runtime FP32 vs eager torch FP32 on the CPU, side by side, through the runtime's own backends.

NRP_resG at full size (random weights: speed does not depend on their values), batch 1, 224x224, the same
intra-op thread count for both. The two are timed alternately in one process (warm-up first, then the
median of repeated runs), so a noisy shared machine slows both alike. Model-only (float32 NCHW through
``Purifier.infer``) and end-to-end (uint8 HWC in, uint8 out, pre/post-processing included) are reported.

    python benchmarks/ort_vs_torch_cpu.py [--threads 2] [--repeats 15] [--out benchmarks/results]

Writes ``runtime_cpu_ort_vs_torch.json`` and ``.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nrp_deploy.artifacts.cache import CACHE_ENV
from nrp_deploy.fileutil import write_bytes_atomic, write_json_atomic
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import load_purifier


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    versions = {name: importlib.metadata.version(name) for name in ("torch", "onnxruntime", "numpy")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(cases: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds of all cases in turn; seconds per call."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = tmp
        torch.manual_seed(0)
        spec = ModelSpec("NRP_resG")
        checkpoint = Path(tmp) / "NRP_resG_random.pth"
        torch.save(spec.build().state_dict(), checkpoint)
        ort = load_purifier(checkpoint, backend="onnxruntime", threads=args.threads)
        eager = load_purifier(checkpoint, backend="torch", threads=args.threads)

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(1, args.size, args.size, 3), dtype=np.uint8)
        x = image.transpose(0, 3, 1, 2).astype(np.float32) / 255
        max_abs = float(np.abs(ort.infer(x) - eager.infer(x)).max())
        cases = {
            "torch model": lambda: eager.infer(x),
            "onnxruntime model": lambda: ort.infer(x),
            "torch end-to-end": lambda: eager(image),
            "onnxruntime end-to-end": lambda: ort(image),
        }
        times = side_by_side(cases, args.warmup, args.repeats)

    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": spec.describe() + " (random weights)",
        "input": f"batch 1, {args.size}x{args.size}, float32 NCHW (model) / uint8 HWC (end-to-end)",
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "max_abs_diff_model_output": max_abs,
        "median_s": medians,
        "min_s": {name: min(t) for name, t in times.items()},
        "speedup_model": medians["torch model"] / medians["onnxruntime model"],
        "speedup_end_to_end": medians["torch end-to-end"] / medians["onnxruntime end-to-end"],
        "all_s": times,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "runtime_cpu_ort_vs_torch.json", result)
    write_bytes_atomic(args.out / "runtime_cpu_ort_vs_torch.md", report(result).encode())
    print(report(result))


def report(r: dict) -> str:
    m = r["machine"]
    rows = "\n".join(
        f"| {name} | {r['median_s'][name] * 1000:.0f} | {r['min_s'][name] * 1000:.0f} |"
        for name in r["median_s"]
    )
    return f"""# ONNX Runtime FP32 vs eager torch FP32 on the CPU

{r["model"]}, {r["input"]}; {r["threads"]} intra-op threads for both; {r["warmup"]} warm-up calls, then
{r["repeats"]} rounds alternating the cases in one process (median and best of the rounds).
Produced by `python benchmarks/ort_vs_torch_cpu.py`.

Machine: {m["cpu"]}, {m["cores"]} cores (shared with other jobs: load average {r["load_average_before"][0]:.2f}
before, {r["load_average_after"][0]:.2f} after), no GPU. Python {m["python"]}, torch {m["torch"]},
onnxruntime {m["onnxruntime"]}, numpy {m["numpy"]}.

| case | median ms | best ms |
| --- | ---: | ---: |
{rows}

The machine is shared, so absolute times vary with other jobs' load (see the load averages); running the
cases alternately keeps the ratio comparable, but contention can move it by a few tenths either way.

**Speed-up of ONNX Runtime over eager torch: {r["speedup_model"]:.2f}x model-only,
{r["speedup_end_to_end"]:.2f}x end-to-end** (goal >= 1.5x). Outputs agree to {r["max_abs_diff_model_output"]:.1e}
(max abs, raw model output).

ONNX Runtime session: CPU execution provider, ORT_ENABLE_ALL graph optimisation (conv + activation
fusion, NCHWc layout), sequential execution, one inter-op thread; the ONNX comes from the runtime's artifact
cache (`nrp_deploy.export.onnx.export_onnx`, opset 20, onnxslim). torch: eval mode, inference mode,
`torch.set_num_threads({r["threads"]})`.
"""


if __name__ == "__main__":
    main()
