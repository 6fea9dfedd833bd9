"""Activation memory per backend, and a 4K photo through `nrp purify` untiled vs tiled for a memory budget.

1. ``--calibrate``: for each backend and size, one untiled image of the default purifier in a fresh process;
   the rise of the peak resident set (VmHWM, reset after loading and a warm-up call) over the resident set
   before the call, in bytes per pixel and in float32 feature maps of the widest layer. These are the
   ``LIVE_MAPS`` factors of ``nrp_deploy/runtime/memory.py``.
2. The photo: the example ``astronaut.png`` upscaled (bicubic) to 3840x2160, through ``nrp purify`` (default
   purifier, ONNX Runtime FP32, 2 threads) with ``--memory-budget off`` (untiled), the default budget and
   ``--memory-budget 2GB`` (``--budgets`` picks), interleaved, ``--repeats`` times; each run's peak RSS from ``wait4`` and its wall time; outputs compared byte for
   byte with the untiled one.

    python benchmarks/auto_tiling.py --calibrate      # writes auto_tiling_calibration.json
    python benchmarks/auto_tiling.py                  # writes auto_tiling_cpu.json

The Markdown (benchmarks/results/auto_tiling_cpu.md) is written by hand from both JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nrp_deploy.assets import examples_dir
from nrp_deploy.bench.machine import machine_info
from nrp_deploy.fileutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ((512, 512), (1024, 1024), (1024, 2048))
BACKENDS = ("onnxruntime", "torch", "openvino")
PHOTO = (2160, 3840)
BUDGETS = ("off", "default", "2GB")

_CHILD = """
import json, re, sys
from pathlib import Path
import numpy as np
from nrp_deploy.runtime import load_purifier

def status(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

backend, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
purifier = load_purifier("default", backend=backend, threads=2, memory_budget="off")
rng = np.random.default_rng(0)
purifier(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
purifier(image)
rise = status("VmHWM") - before
print(json.dumps({"rise": rise, "widest": purifier.spec.widest_channels, "spec": purifier.spec.describe()}))
"""


def calibrate() -> dict:
    rows = []
    for backend in BACKENDS:
        for height, width in SIZES:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, backend, str(height), str(width)],
                capture_output=True,
                text=True,
                check=True,
            )
            found = json.loads(proc.stdout.strip().splitlines()[-1])
            per_pixel = found["rise"] / (height * width)
            rows.append(
                {
                    "backend": backend,
                    "height": height,
                    "width": width,
                    "rise_bytes": found["rise"],
                    "bytes_per_pixel": per_pixel,
                    "live_maps": per_pixel / (4 * found["widest"]),
                    "model": found["spec"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def _photo(folder: Path) -> Path:
    from PIL import Image

    with Image.open(examples_dir() / "astronaut.png") as source:
        big = source.convert("RGB").resize((PHOTO[1], PHOTO[0]), Image.BICUBIC)
    path = folder / "astronaut_3840x2160.png"
    big.save(path)
    return path


def _run(photo: Path, out: Path, budget: str | None) -> dict:
    argv = [
        sys.executable,
        "-m",
        "nrp_deploy",
        "purify",
        str(photo),
        "-o",
        str(out),
        "--backend",
        "onnxruntime",
    ]
    argv += ["--threads", "2", "--no-progress"] + (["--memory-budget", budget] if budget else [])
    env = {**os.environ}
    env.pop("NRP_MEMORY_BUDGET", None)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"nrp purify failed ({proc.returncode}): {stderr}")
    tiling = [line for line in stderr.splitlines() if "image(s) of" in line]
    return {
        "memory_budget": budget or "default",
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "wall_s": wall,
        "log": tiling,
    }


def photo_runs(repeats: int, budgets: list[str]) -> dict:
    from PIL import Image

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = _photo(folder)
        outputs = {}
        for rep in range(repeats):
            for budget in budgets:
                out = folder / f"out_{budget}_{rep}"
                run = _run(photo, out, None if budget == "default" else budget)
                pixels = np.asarray(Image.open(out / "astronaut_3840x2160.png"))
                outputs.setdefault(run["memory_budget"], pixels)
                run["repeat"] = rep
                runs.append(run)
                print(json.dumps(run), flush=True)
        reference = outputs["off"]
        identical = {k: bool(np.array_equal(v, reference)) for k, v in outputs.items()}
    return {"photo": f"astronaut.png bicubic to {PHOTO[1]}x{PHOTO[0]}", "runs": runs, "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calibrate", action="store_true", help="measure the live-map factors instead")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each photo configuration")
    parser.add_argument(
        "--budgets",
        nargs="+",
        default=list(BUDGETS),
        help="--memory-budget values to run (default: the machine's)",
    )
    parser.add_argument("--output", default=None, help="JSON file name in benchmarks/results")
    args = parser.parse_args()
    if "off" not in args.budgets:
        parser.error("--budgets needs off: the untiled run is the reference for the byte comparison")
    doc = calibrate() if args.calibrate else photo_runs(args.repeats, args.budgets)
    doc["machine"] = machine_info()
    name = args.output or ("auto_tiling_calibration.json" if args.calibrate else "auto_tiling_cpu.json")
    write_json_atomic(RESULTS / name, doc)
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
