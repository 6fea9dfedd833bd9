"""``nrp export``: ONNX (FP32, FP16, INT8) and Triton model repositories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nrp_deploy.artifacts.metadata import PRECISIONS
from nrp_deploy.cli.common import add_serving_options, dynamic_defense


def _add_export_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR|NPZ",
        help="calibration images: a folder or an .npz with an NCHW 'input' array (default: the example photos inside the package)",
    )
    p.add_argument(
        "--validation",
        type=Path,
        default=None,
        metavar="DIR|NPZ",
        help="held-out images for the fidelity check (default: every 4th calibration image, not calibrated on)",
    )
    p.add_argument("--crop-size", type=int, help="calibration crop side in px (default: 224)")
    p.add_argument("--count", type=int, help="calibration crops (default: 8)")
    p.add_argument("--holdout-size", type=int, help="fidelity crop side (default: --crop-size)")
    p.add_argument("--holdout-count", type=int, help="fidelity crops (default: 4)")
    p.add_argument("--seed", type=int, help="seed of the random crops (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a purifier to ONNX (FP32, calibrated FP16 or INT8 Q/DQ, each with a metadata JSON) or to "
        "a Triton model repository",
        description="Export a purifier to ONNX. Each artifact gets OUT.json beside it (source checkpoint and "
        "sha256, architecture, precision, calibration, tool versions, fidelity against FP32 torch) and a "
        "PASS/FAIL verdict line against its PSNR threshold; the exit status is 1 on FAIL.",
    )
    kinds = p.add_subparsers(dest="export", required=True, metavar="FORMAT")
    fp32 = kinds.add_parser("onnx", help="FP32 ONNX, dynamic batch/height/width, checked against torch")
    fp16 = kinds.add_parser("fp16", help="mixed-precision FP16 ONNX (ModelOpt AutoCast, calibrated)")
    int8 = kinds.add_parser("int8", help="INT8 Q/DQ ONNX (ModelOpt for TensorRT, or ONNX Runtime for CPUs)")
    _add_export_triton(kinds)
    for kind, q in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
        source = "registry name or checkpoint" + ("" if kind == "fp32" else ", or an FP32 .onnx export")
        q.add_argument("--model", default="default", help=f"{source} (default: default)")
        q.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx", help="output model")
        q.add_argument("--opset", type=int, help="ONNX opset of the FP32 export (default: 20)")
        q.add_argument(
            "--min-psnr", type=float, help="verdict's PSNR threshold in dB (fp32 80, fp16 50, int8 35)"
        )
        q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        q.set_defaults(handler=_run_export)
    fp32.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    _add_export_calibration(fp16)
    fp16.add_argument("--fp16-io", action="store_true", help="float16 input/output (default: float32)")
    fp16.add_argument(
        "--data-max", type=float, help="nodes with activations above this stay FP32 (default: 512)"
    )
    _add_export_calibration(int8)
    int8.add_argument(
        "--method", choices=("modelopt", "ort"), help="modelopt (default): for TensorRT; ort: for CPUs"
    )
    int8.add_argument(
        "--calibration-method",
        help="modelopt: entropy (default) or max; ort: minmax (default), entropy, percentile",
    )
    int8.add_argument(
        "--target-cpu",
        choices=("auto", "vnni", "any"),
        help="ort: the CPUs the artifact is exact on; any (default): weights in [-64, 64], every CPU; vnni: "
        "8-bit weights, only CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX); auto: what this CPU needs",
    )
    int8.add_argument(
        "--high-precision", choices=("fp16", "fp32"), help="modelopt: precision of the rest (default: fp16)"
    )


def _add_export_triton(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "triton",
        help="a Triton model repository (ensemble: pre-processing, the network, post-processing)",
        description="Write a Triton Inference Server model repository that NGC's tritonserver loads unchanged: "
        "the ensemble nrp_purifier (uint8 images in and out, request parameters dynamic / seed / start_index) "
        "over Python-backend pre- and post-processing and the purifier network (ONNX on the onnxruntime "
        "backend, a TensorRT plan built here on the tensorrt backend, or ONNX Runtime in a Python-backend model "
        "for servers with only the Python backend), with dynamic batching, instance groups and warm-up. The "
        "dynamic defence's noise level (--noise-sigma, --noise-eps) is written into the repository.",
    )
    p.add_argument("--model", default="default", help="registry name, checkpoint or .onnx (default: default)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="repository folder")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="(default: fp32)")
    p.add_argument(
        "--engine",
        default="onnxruntime",
        choices=["onnxruntime", "tensorrt", "python"],
        help="the network's backend: onnxruntime (default), tensorrt (builds a plan: needs TensorRT and the "
        "target GPU), python (ONNX Runtime in the Python backend)",
    )
    add_serving_options(p)
    p.add_argument("--gpu", action="store_true", help="instances on the GPUs (KIND_GPU; always for tensorrt)")
    p.add_argument(
        "--threads", type=int, default=None, help="engine python: ONNX Runtime threads per instance"
    )
    p.add_argument("--overwrite", action="store_true", help="replace REPO if it exists")
    p.set_defaults(handler=_run_export_triton)


def _run_export_triton(args: argparse.Namespace) -> int:
    from nrp_deploy.serving.triton_export import TritonExportOptions, export_triton_repository

    noise = dynamic_defense(args)
    options = TritonExportOptions(
        precision=args.precision,
        engine=args.engine,
        max_batch=args.max_batch,
        delay_us=args.max_queue_delay_us,
        instances=args.instances,
        gpu=args.gpu,
        dynamic=args.dynamic,
        noise_sigma=noise.sigma,
        noise_eps=noise.eps,
        threads=args.threads,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    repo = export_triton_repository(args.model, args.output, options, overwrite=args.overwrite)
    print(f"wrote the Triton model repository {repo} (serve it: see {repo / 'README.md'})", file=sys.stderr)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    def given(**options: object) -> dict[str, object]:  # options left out keep the API's defaults
        return {k: v for k, v in options.items() if v is not None}

    common = given(opset=args.opset, min_psnr_db=args.min_psnr)
    if args.export == "onnx":
        from nrp_deploy.export.onnx import export_onnx

        result = export_onnx(
            args.model, args.output, simplify=not args.no_simplify, overwrite=args.overwrite, **common
        )
    else:
        from nrp_deploy.export.calibration import CalibrationOptions

        calibration = CalibrationOptions(
            **given(
                images=args.calibration,
                validation=args.validation,
                crop_size=args.crop_size,
                count=args.count,
                holdout_size=args.holdout_size,
                holdout_count=args.holdout_count,
                seed=args.seed,
            )
        )
        run = {"overwrite": args.overwrite, "progress": not args.no_progress}
        if args.export == "fp16":
            from nrp_deploy.export.fp16 import Fp16Options, export_fp16

            options = Fp16Options(
                calibration, **given(keep_io_types=not args.fp16_io, data_max=args.data_max), **common
            )
            result = export_fp16(args.model, args.output, options=options, **run)
        else:
            from nrp_deploy.export.int8 import Int8Options, export_int8

            int8 = given(
                method=args.method,
                calibration_method=args.calibration_method,
                high_precision=args.high_precision,
                target_cpu=args.target_cpu,
            )
            result = export_int8(
                args.model, args.output, options=Int8Options(calibration=calibration, **int8, **common), **run
            )
    print(f"wrote {result.path} and {result.metadata_path}", file=sys.stderr)
    print(result.verdict.line)
    return 0 if result.verdict.passed else 1
