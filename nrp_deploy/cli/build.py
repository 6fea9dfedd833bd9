"""``nrp build``: TensorRT engines from ONNX models, for this GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nrp_deploy.artifacts.metadata import PRECISIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build a TensorRT engine from an FP32, FP16 or INT8 ONNX",
        description="Build a strongly typed TensorRT engine (10.x or 11.x) from an ONNX made by "
        "`nrp export`: precision comes from the ONNX (FP32, AutoCast FP16, Q/DQ INT8), one optimisation "
        "profile spans --min..--max (batch x height x width) tuned for --opt, and timings are cached on "
        "disk for later builds. The engine's metadata (ONNX sha256, precision, profile, TensorRT version, "
        "GPU) goes to ENGINE.json; an engine is tied to that TensorRT release and GPU kind.",
    )
    p.add_argument("onnx", type=Path, metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("-o", "--output", type=Path, metavar="ENGINE", help="engine path (default: MODEL.engine)")
    p.add_argument("--min", metavar="BxHxW", help="smallest input (default: 1x32x32)")
    p.add_argument("--opt", metavar="BxHxW", help="the input TensorRT tunes for (default: 1x224x224)")
    p.add_argument("--max", metavar="BxHxW", help="largest input (default: 8x448x448)")
    p.add_argument("--precision", choices=PRECISIONS, help="refuse an ONNX of another precision")
    p.add_argument("--workspace", type=int, metavar="MiB", help="workspace limit (default: 2048)")
    p.add_argument(
        "--opt-level",
        type=int,
        metavar="0-5",
        help="builder optimisation level: higher tries more tactics, builds slower (default: 3)",
    )
    p.add_argument(
        "--timing-cache", type=Path, metavar="FILE", help="timing cache (default: in the cache dir)"
    )
    p.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    p.add_argument(
        "--version-compatible", action="store_true", help="runs on later TensorRT releases of the same major"
    )
    p.add_argument(
        "--ampere-plus",
        action="store_true",
        help="runs on any Ampere or later GPU (sm_80+), a little slower; refused on Jetson (Tegra)",
    )
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default: 0)")
    p.add_argument("--verbose", action="store_true", help="print TensorRT's log")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine")
    p.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from nrp_deploy.artifacts.specs import make_profile, parse_bhw
    from nrp_deploy.tensorrt.builder import build_engine
    from nrp_deploy.tensorrt.engine import BuildOptions

    shapes = [
        parse_bhw(text, f"--{name}") if text else None
        for name, text in (("min", args.min), ("opt", args.opt), ("max", args.max))
    ]
    defaults = BuildOptions()
    options = BuildOptions(
        profile=make_profile(*shapes),
        optimization_level=defaults.optimization_level if args.opt_level is None else args.opt_level,
        workspace_mib=args.workspace or defaults.workspace_mib,
        version_compatible=args.version_compatible,
        hardware_compatibility="ampere_plus" if args.ampere_plus else "none",
    )
    meta = build_engine(
        args.onnx,
        args.output,
        options,
        expect_precision=args.precision,
        timing_cache=args.timing_cache,
        use_timing_cache=not args.no_timing_cache,
        device=args.device,
        verbose=args.verbose,
        overwrite=args.overwrite,
    )
    engine = args.output or args.onnx.with_suffix(".engine")
    print(
        f"built {engine}: {meta.precision}, batch x height x width "
        f"{meta.profile['min']}..{meta.profile['max']} (opt {meta.profile['opt']}), "
        f"TensorRT {meta.tensorrt_version} on {meta.gpu_name} "
        f"(sm_{''.join(map(str, meta.compute_capability))}) in {meta.build_seconds:.1f} s",
        file=sys.stderr,
    )
    return 0
