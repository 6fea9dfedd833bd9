"""``nrp info``: what this machine can run: packages, GPUs, backends."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="list what this machine can run: packages, GPUs, backends",
        description="Report the installed inference stack (torch, ONNX Runtime and its providers, "
        "TensorRT, cuda-python, NVRTC), the CUDA driver and GPUs, and which purifier backends can run here "
        "and why not.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from nrp_deploy.runtime.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
