"""The ``nrp`` command line: argument parsing only.

Each sub-command's handler imports its API function lazily (so ``nrp --help`` and the torch-free commands
start fast and work without torch) and maps ``NRPDeployError`` to a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nrp_deploy import __version__
from nrp_deploy.errors import NRPDeployError


def _add_purify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "purify",
        help="purify image files or folders into PNGs",
        description="Purify images (files or folders, walked recursively) into OUT as lossless PNG, keeping "
        "the folders' layout. Bad files are reported and skipped; the exit status is 1 if any failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--model", default="default", help="registry name (default, NRP, NRP_resG) or checkpoint path"
    )
    p.add_argument(
        "--dynamic", action="store_true", help="dynamic inference: noise (sigma 0.05) within 16/255"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_purify)


def _run_purify(args: argparse.Namespace) -> int:
    from nrp_deploy.batch import purify_files
    from nrp_deploy.models import load_model
    from nrp_deploy.models.eager import EagerPurifier

    loaded = load_model(args.model, device=args.device)
    print(f"model: {loaded.name} = {loaded.spec.describe()} from {loaded.path}", file=sys.stderr)
    purifier = EagerPurifier(loaded.module, device=args.device, dynamic=args.dynamic)
    report = purify_files(
        args.inputs,
        args.output,
        purifier,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp",
        description="Deploy NRP adversarial purifiers: purify, attack, evaluate, export, build, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"nrp-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_purify(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NRPDeployError as exc:
        print(f"nrp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nrp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
