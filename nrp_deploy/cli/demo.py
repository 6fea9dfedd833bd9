"""``nrp demo``: the shipped purifier on the shipped example photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from nrp_deploy.cli.common import add_runtime_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="attack the example photos with SSP, purify them with the default purifier, report",
        description="The main job in one command: SSP-attack the example photos (a short attack, about a "
        "minute on 2 CPU cores), purify them with the shipped default purifier through the fastest backend "
        "here, print agreement with the clean prediction and PSNR, and write the report and picture grids.",
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: demo_out)")
    p.add_argument("--model", default="default", help="registry name or checkpoint (default: default)")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="image folder (default: the example photos inside the package)",
    )
    p.add_argument("--iterations", type=int, default=None, help="attack iterations (default: 10)")
    add_runtime_options(p, with_precision=False)
    p.add_argument("--with-pgd", action="store_true", help="also PGD straight-through (BPDA) against it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from nrp_deploy.evaluation.demo import DEFAULT_OUT, DEMO_ATTACKS, DEMO_ITERATIONS, EXAMPLES_DIR, run_demo

    attacks = (*DEMO_ATTACKS, "pgd-bpda") if args.with_pgd else DEMO_ATTACKS
    run_demo(
        args.output or DEFAULT_OUT,
        model=args.model,
        images=args.images or EXAMPLES_DIR,
        attacks=attacks,
        iterations=DEMO_ITERATIONS if args.iterations is None else args.iterations,
        backend=args.backend,
        progress=not args.no_progress,
    )
    return 0
