"""How much context a tile needs: tiled vs untiled output for the full-size NRP and NRP_resG.

Random weights (seeded), in two initialisations: torch's default, and a deep-signal one (Kaiming normal on
every convolution, residual branches scaled as ESRGAN-style networks are initialised) under which a pixel's
influence travels further through the residual stream. The output is rescaled to an image-like spread
(std 0.2 on the photo) so that errors read on the [0, 1] scale. Input: the example photo astronaut.png.

1. Edge decay: the output of a crop against the output of the whole image, as a function of a pixel's
   distance to the crop's inner edge. This is the error a tile's pixel at that distance has, so one extra
   forward pass gives the whole overlap trade-off.
2. Tiled runs through ``nrp_deploy.runtime.tiling.infer_tiled`` at a few (overlap, feather) settings
   (deep-signal weights): PSNR of the raw output against the untiled output (peak 1), max abs error, uint8
   pixels changed after post-processing, and the seam ratio: mean error within 2 px of a seam over mean
   error elsewhere (error concentrated on seams is what makes a seam visible).

    python benchmarks/tiling_overlap.py [--threads 2]
    python benchmarks/tiling_overlap.py --report-only     # rewrite the Markdown from the JSON

Writes runtime_tiling.json and runtime_tiling.md into benchmarks/results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nrp_deploy.assets import examples_dir
from nrp_deploy.fileutil import write_bytes_atomic, write_json_atomic
from nrp_deploy.images import read_image
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime.prepost import float_to_uint8
from nrp_deploy.runtime.purifier import DEFAULT_FEATHER, DEFAULT_OVERLAP
from nrp_deploy.runtime.tiling import TileConfig, axis_starts, infer_tiled

ROOT = Path(__file__).resolve().parents[1]
DISTANCES = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48)
INITS = ("default", "deep-signal")
# (architecture, image side, tile side, (overlap, feather) settings): NRP costs ~10x NRP_resG per pixel,
# so it gets a smaller crop and fewer settings, to keep the run to minutes on two CPU cores.
PLANS = (
    ("NRP_resG", 224, 128, ((0, 0), (8, 0), (8, 16), (16, 0), (DEFAULT_OVERLAP, DEFAULT_FEATHER), (48, 0))),
    ("NRP", 96, 64, ((0, 0), (8, 8))),
)


def build(architecture: str, init: str, photo: torch.Tensor) -> nn.Module:
    """The full-size network with seeded random weights, its output rescaled to std 0.2 on ``photo``."""
    torch.manual_seed(0)
    module = ModelSpec(architecture).build().eval()
    if init == "deep-signal":
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        if architecture == "NRP_resG":  # each residual branch adds about 1/nb of the stream's variance
            for block in module.recon_trunk:
                block.conv2.weight.data /= math.sqrt(len(module.recon_trunk))
        else:  # how ESRGAN initialises its RRDB networks: Kaiming scaled by 0.1
            for conv in convs:
                conv.weight.data *= 0.1
    last = module.conv_last if architecture == "NRP_resG" else module.trunk_conv
    with torch.inference_mode():
        spread = float(module(photo).std())
    last.weight.data *= 0.2 / spread
    last.bias.data *= 0.2 / spread
    return module


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def edge_decay(run, x: np.ndarray, full: np.ndarray) -> dict[int, float]:
    """Max abs error of a left crop's output vs the whole image's, by distance to the crop's right edge."""
    width = x.shape[3] // 2 + max(DISTANCES) // 2
    err = np.abs(run(x[..., :width]) - full[..., :width])
    return {d: float(err[..., width - 1 - d].max()) for d in DISTANCES if d < width}


def seam_mask(side: int, config: TileConfig) -> np.ndarray:
    """Pixels within 2 px of a seam of the tile layout of a square image of ``side`` px."""
    starts = axis_starts(side, min(config.tile, side), config.tile - 2 * config.margin)
    near = np.zeros(side, dtype=bool)
    for a, b in itertools.pairwise(starts):
        seam = (a + b + config.tile) / 2
        near[max(0, int(seam) - 2) : int(seam) + 3] = True
    return near[:, None] | near[None, :]


def tiled_stats(run, x: np.ndarray, full: np.ndarray, config: TileConfig) -> dict[str, float | None]:
    start = time.perf_counter()
    tiled = infer_tiled(x, run, config)
    seconds = time.perf_counter() - start
    err = np.abs(tiled - full).mean(axis=(0, 1))
    near = seam_mask(x.shape[2], config)
    tiles = len(axis_starts(x.shape[2], min(config.tile, x.shape[2]), config.tile - 2 * config.margin)) ** 2
    a, b = float_to_uint8(tiled).astype(int), float_to_uint8(full).astype(int)
    return {
        "psnr_db": psnr(tiled, full),
        "max_abs": float(np.abs(tiled - full).max()),
        "uint8_changed_fraction": float(np.mean(a != b)),
        "uint8_max_diff": int(np.abs(a - b).max()),
        "seam_ratio": float(err[near].mean() / err[~near].mean()) if err[~near].mean() > 0 else None,
        "tiles": tiles,
        "compute_factor": tiles * min(config.tile, x.shape[2]) ** 2 / x.shape[2] ** 2,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((args.out / "runtime_tiling.json").read_text())
        for entry in results["architectures"].values():
            entry["edge_decay"] = {
                i: {int(d): e for d, e in v.items()} for i, v in entry["edge_decay"].items()
            }
        write_bytes_atomic(args.out / "runtime_tiling.md", report(results).encode())
        return
    torch.set_num_threads(args.threads)

    photo = read_image(examples_dir() / "astronaut.png")
    results = {
        "photo": "nrp_deploy/assets/examples/astronaut.png",
        "threads": args.threads,
        "architectures": {},
    }
    for architecture, side, tile, settings in PLANS:
        x = np.ascontiguousarray(photo[None, :side, :side].transpose(0, 3, 1, 2), dtype=np.float32) / 255
        entry = {
            "receptive_field": ModelSpec(architecture).receptive_field,
            "image": f"{side}x{side}",
            "tile": tile,
            "edge_decay": {},
            "tiled": {},
        }
        for init in INITS:
            module = build(architecture, init, torch.from_numpy(x))

            def run(batch: np.ndarray, module: nn.Module = module) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

            start = time.perf_counter()
            full = run(x)
            entry["untiled_seconds"] = time.perf_counter() - start
            entry["edge_decay"][init] = edge_decay(run, x, full)
            print(architecture, init, entry["edge_decay"][init], flush=True)
            if init != "deep-signal":
                continue
            for overlap, feather in settings:
                stats = tiled_stats(run, x, full, TileConfig(tile, overlap, feather))
                entry["tiled"][f"overlap={overlap}, feather={feather}"] = stats
                print(architecture, overlap, feather, stats, flush=True)
        results["architectures"][architecture] = entry
    write_json_atomic(args.out / "runtime_tiling.json", results)
    write_bytes_atomic(args.out / "runtime_tiling.md", report(results).encode())
    print(report(results))


def report(results: dict) -> str:
    archs = results["architectures"]
    columns = [(name, init) for name in archs for init in INITS]
    lines = [
        "# Tiled vs untiled inference: how much overlap",
        "",
        f"Full-size architectures, seeded random weights, photo `{results['photo']}`, torch FP32 on the",
        f"2-core CPU ({results['threads']} threads). Produced by `python benchmarks/tiling_overlap.py`; the",
        "script's docstring describes both weight initialisations and the metrics. `overlap` is the least",
        "context any kept pixel has from a tile's inner edge, `feather` the width of the cosine blend across",
        "each seam (nrp_deploy/runtime/tiling.py).",
        "",
        "## Edge decay: max abs error of a pixel at distance d from a tile's inner edge (raw output)",
        "",
        "| d (px) | "
        + " | ".join(f"{n} (RF {archs[n]['receptive_field']}), {i} init" for n, i in columns)
        + " |",
        "| ---: |" + " ---: |" * len(columns),
    ]
    for d in DISTANCES:
        cells = [
            f"{archs[n]['edge_decay'][i][d]:.1e}" if d in archs[n]["edge_decay"][i] else ""
            for n, i in columns
        ]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    for name, entry in archs.items():
        lines += [
            "",
            f"## {name}, deep-signal init: {entry['image']} image, {entry['tile']} px tiles "
            f"(untiled pass {entry['untiled_seconds']:.1f} s)",
            "",
            "| overlap, feather | PSNR dB | max abs | uint8 changed | uint8 max diff | seam ratio | tiles | compute |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for setting, s in entry["tiled"].items():
            seam = "-" if s["seam_ratio"] is None else f"{s['seam_ratio']:.2f}"
            lines.append(
                f"| {setting} | {s['psnr_db']:.1f} | {s['max_abs']:.1e} | "
                f"{100 * s['uint8_changed_fraction']:.3f} % | {s['uint8_max_diff']} | {seam} | {s['tiles']} | "
                f"{s['compute_factor']:.2f}x |"
            )
    lines += ["", READING]
    return "\n".join(lines) + "\n"


READING = f"""## Reading

- Influence decays far faster than the receptive field grows: a pixel's error falls below 1e-5 within
  16 px of a tile's inner edge for NRP_resG and within 8 px for NRP (its dense blocks and residuals are
  scaled by 0.2), against theoretical radii of 48 and 347 px. Beyond that the differences are float32
  summation noise (~1e-7). With the overlap at the full radius (NRP_resG, 48 px) tiling is exact.
- The default, overlap {DEFAULT_OVERLAP} px with a {DEFAULT_FEATHER} px cosine feather, keeps twice the
  distance at which the error vanished here: tiled output within ~3e-7 of untiled, no uint8 pixel changed,
  so no seam can be visible. The factor of two is headroom for trained weights, whose reach random weights
  can only estimate. It costs tile area: with 224 px tiles each tile keeps a 144 px core.
- Tiles are spaced evenly, so neighbours usually share more than the overlap asked for: at 224 px with
  128 px tiles every seam had 16 px of context on each side, which is why overlaps 0, 8 and 16 give the
  same layout and numbers. The seam ratio is high there (error concentrated on seams) but the error itself
  is 8e-6, below one uint8 step.
- Feathering spends context: its ramp keeps pixels up to half its width nearer the tile edge than a hard
  seam would. The runtime therefore reserves overlap + feather/2 of margin on each inner side, so every
  kept pixel still has `overlap` px of context (a smaller core per tile); at a given layout, though, a
  feather keeps less-context pixels than a hard seam (overlap 8 with feather 16 vs the same layout cut
  hard: 1e-4 vs 8e-6). Its value is when the overlap is too small for the weights: the ramp turns a
  seam's step into a gradient (seam ratio 2.6 instead of 25).
"""


if __name__ == "__main__":
    main()
