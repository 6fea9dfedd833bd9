"""``nrp info``: what this machine can run: packages, GPUs, backends."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="list what this machine can run: packages, GPUs, backends, auto's choices",
        description="Report the installed inference stack (torch, ONNX Runtime and its providers, "
        "TensorRT, cuda-python, NVRTC), the CPU, the CUDA driver and GPUs, which purifier backends can run "
        "here and why not, and the choices backend/precision auto recorded here (timings, candidates not "
        "used and why).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--model",
        help="also say what auto opens for this model (registry name, checkpoint or .onnx) and why: it is "
        "loaded, and on a CPU the candidates are timed unless a choice is recorded",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads for --model")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from nrp_deploy.runtime.info import choice_for, collect_info, format_info

    auto_for = choice_for(args.model, args.threads) if args.model else None
    info = collect_info()
    if auto_for is not None:
        info["auto_for"] = auto_for
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
