"""``nrp eval``: robustness and fidelity of a purifier against attacks and baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="robustness report: attacks vs no defence, the purifier and the dynamic defence",
        description="Attack the images under INPUT with each attack and report, per attack, how often the "
        "classifier keeps its clean prediction without defence, behind the purifier and behind the "
        "dynamic defence, with PSNR/SSIM of the purified images against the clean ones. No labels: the "
        "clean prediction is the reference. Prints a table; --out also writes report.json, report.md and "
        "one PNG grid per attack.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--model", default="default", help="defence: registry name, checkpoint, .onnx or TensorRT engine"
    )
    p.add_argument(
        "--attack-model", default=None, help="torch checkpoint the attacks differentiate (default: --model)"
    )
    p.add_argument("--backend", default="auto", help="runtime backend: auto, tensorrt, onnxruntime, torch")
    p.add_argument("--precision", default=None, help="fp32, fp16 or int8 (default: the model's own)")
    p.add_argument(
        "--attacks",
        default="none,ssp,pgd-full,pgd-bpda,pgd-eot",
        help="comma-separated: none, ssp, pgd-transfer, pgd-transfer-targeted (PGD on the classifier alone), "
        "pgd-full, pgd-bpda, pgd-eot (white-box, through the purifier) (default: none,ssp,pgd-full,pgd-bpda,"
        "pgd-eot)",
    )
    p.add_argument(
        "--classifier",
        default="efficientnet_lite0",
        help="classifier attacked and defended: efficientnet_lite0, efficientnet_lite1 or efficientnet_lite2 "
        "(default: lite0)",
    )
    p.add_argument(
        "--ssp-features",
        default="efficientnet_lite0",
        help="network whose features SSP attacks: efficientnet_lite0 or efficientnet_lite2 (default: lite0)",
    )
    p.add_argument(
        "--baselines",
        default="",
        help="comma-separated training-free defences to compare: blur (3x3 box, twice), jpeg (quality 75)",
    )
    p.add_argument("--iterations", type=int, default=None, help="attack steps (default: SSP 100, PGD 10)")
    p.add_argument("--eot-samples", type=int, default=8, help="noise draws per EOT gradient (default: 8)")
    p.add_argument(
        "--untargeted", action="store_true", help="untargeted PGD (default: targeted, as published)"
    )
    p.add_argument("--feature-layer", default=None, help="SSP feature layer (default: stage3)")
    p.add_argument("--device", default="cpu", help="torch device for the attacks (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of attacks and dynamic noise (default: 0)")
    p.add_argument("--grid-images", type=int, default=4, help="images per PNG grid (default: 4)")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write report.json/.md and PNG grids"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from nrp_deploy.evaluation.report import format_defence_table, format_table, write_report
    from nrp_deploy.evaluation.robustness import evaluate

    report = evaluate(
        args.inputs,
        args.model,
        [a.strip() for a in args.attacks.split(",") if a.strip()],
        attack_model=args.attack_model,
        backend=args.backend,
        precision=args.precision,
        classifier=args.classifier,
        ssp_features=args.ssp_features,
        feature_layer=args.feature_layer,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        iterations=args.iterations,
        eot_samples=args.eot_samples,
        targeted=not args.untargeted,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        grid_images=args.grid_images,
        progress=not args.no_progress,
    )
    print(format_table(report))
    print()
    print(format_defence_table(report))
    if args.out is not None:
        for path in write_report(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if report.failed else 0
