"""Ray Data benchmark: `nrp purify --ray` with 1 and 2 actors against in-process `nrp purify`, same folder.

    python benchmarks/ray_purify.py [--photos 32] [--rounds 3] [--model default] [-o benchmarks/results]

The folder holds ``--photos`` 224 x 224 photos: the package's four example photos, each also rotated and
mirrored (8 variants), cycled. Every job purifies the whole folder into a fresh output folder with the dynamic
defence and a fixed seed, through ONNX Runtime on the CPU, so every configuration must write the same bytes
(checked). Configurations, timed in rounds whose order rotates (a busy minute slows all of them alike):

- ``in-process``: what `nrp purify --threads 2` does: load the purifier, purify, write;
- ``ray-1x2``: one actor with 2 intra-op threads (it reserves 2 CPUs);
- ``ray-2x1``: two actors with 1 thread each.

A Ray job's time counts everything after Ray is up: planning, starting the actor pool and loading the model
on each actor, purifying, and writing on the driver. Starting the local Ray itself is timed apart (``ray
start``, ``--rounds`` fresh starts). Writes ray_purify_cpu.json under ``-o`` and prints the table that
benchmarks/results/ray_purify_cpu.md quotes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nrp_deploy.assets import examples_dir
from nrp_deploy.batch import purify_files
from nrp_deploy.bench.machine import machine_info
from nrp_deploy.images import read_image, write_png
from nrp_deploy.runtime import DynamicDefense, load_purifier
from nrp_deploy.scale import PurifierSettings, purify_files_on_ray
from nrp_deploy.scale.job import import_ray

SEED = 7
CONFIGS = {"in-process": None, "ray-1x2": (1, 2), "ray-2x1": (2, 1)}


def build_folder(folder: Path, count: int) -> None:
    photos = [read_image(p) for p in sorted(examples_dir().glob("*.png"))]
    variants = [np.rot90(p, k) for p in photos for k in range(4)]
    variants += [np.ascontiguousarray(v[:, ::-1]) for v in variants]
    for k in range(count):
        write_png(folder / f"photo_{k:03d}.png", np.ascontiguousarray(variants[k % len(variants)]))


def run_job(name: str, model: str, src: Path, out: Path, batch_size: int) -> tuple[float, int]:
    """Wall seconds and outputs written for one job of configuration ``name``."""
    shutil.rmtree(out, ignore_errors=True)
    dynamic = DynamicDefense(seed=SEED)
    start = time.perf_counter()
    if CONFIGS[name] is None:
        purifier = load_purifier(model, backend="onnxruntime", threads=2)
        report = purify_files(
            [src], out, purifier.as_batch_fn(dynamic), batch_size=batch_size, progress=False
        )
    else:
        actors, threads = CONFIGS[name]
        settings = PurifierSettings(model, backend="onnxruntime", threads=threads, dynamic=dynamic)
        report = purify_files_on_ray(
            [src], out, settings, actors=actors, batch_size=batch_size, progress=False
        )
    seconds = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"{name}: {report.summary()}")
    return seconds, len(report.written)


def time_ray_start(ray, rounds: int, temp: Path) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp),
        )
        samples.append(time.perf_counter() - start)
        ray.shutdown()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="default")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    ray = import_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="nrp-raybench-"))
    try:
        src = work / "photos"
        build_folder(src, args.photos)
        start_s = time_ray_start(ray, args.rounds, work / "ray")
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(work / "ray"),
        )
        names = list(CONFIGS)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds, written = run_job(name, args.model, src, work / name, args.batch_size)
                assert written == args.photos, (name, written)
                samples[name].append(seconds)
                print(f"round {r + 1} {name}: {seconds:.2f} s", flush=True)
        reference = {p.name: p.read_bytes() for p in (work / "in-process").iterdir()}
        for name in names[1:]:
            assert {p.name: p.read_bytes() for p in (work / name).iterdir()} == reference, f"{name} differs"
        ray.shutdown()
        machine = machine_info()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: float(np.median(s)) for name, s in samples.items()}
    doc = {
        "photos": args.photos,
        "size": "224x224",
        "model": args.model,
        "backend": "onnxruntime fp32, dynamic defence seeded",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "ray_start_s": start_s,
        "job_s": samples,
        "median_job_s": medians,
        "images_per_s": {name: args.photos / m for name, m in medians.items()},
        "bytes_equal": True,
        "machine": machine,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ray_purify_cpu.json").write_text(json.dumps(doc, indent=2) + "\n")
    base = medians["in-process"]
    lines = [
        f"| {name} | {medians[name]:.2f} s | {args.photos / medians[name]:.2f} | {base / medians[name]:.2f}x |"
        for name in names
    ]
    table = "\n".join(
        ["| configuration | median job | images/s | vs in-process |", "| --- | ---: | ---: | ---: |", *lines]
    )
    print(table)
    print(f"ray start: median {np.median(start_s):.2f} s of {[round(s, 2) for s in start_s]}")


if __name__ == "__main__":
    main()
