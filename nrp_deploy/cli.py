"""The ``nrp`` command line: argument parsing only.

Each sub-command's handler imports its API function lazily (so ``nrp --help`` and the torch-free commands
start fast and work without torch) and maps ``NRPDeployError`` to a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from nrp_deploy import __version__
from nrp_deploy.errors import NRPDeployError

if TYPE_CHECKING:
    from nrp_deploy.batch import BatchReport


def _finish_batch(report: BatchReport) -> int:
    """Print a batch job's summary (failures named) and turn it into the exit status: 1 if any file failed."""
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


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
        "--model",
        default="default",
        help="registry name (default, NRP, NRP_resG), checkpoint, .onnx (with its .json) or TensorRT engine",
    )
    p.add_argument(
        "--dynamic", action="store_true", help="dynamic inference: noise (sigma 0.05) within 16/255"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the --dynamic noise (replays a run exactly); default: a fresh seed from the OS per batch",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="inference backend (default: auto, the fastest that works here; torch is the eager baseline)",
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "fp16", "int8"],
        help="model precision (default: fp32 for a checkpoint, an ONNX/engine's own otherwise)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the GPU when the backend can)")
    p.add_argument("--tile", type=int, default=None, help="tile images larger than N px (bounds memory)")
    p.add_argument("--overlap", type=int, default=None, help="context px around each tile (with --tile)")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (onnxruntime, torch)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help="use an ONNX artifact or TensorRT engine even though its fidelity check FAILed (refused otherwise)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--server",
        metavar="URL",
        help="purify through a running `nrp serve` (http://HOST:PORT or grpc://HOST:PORT) instead of in "
        "process; the server's model is used, the output is the same",
    )
    p.set_defaults(handler=_run_purify)


def _run_purify(args: argparse.Namespace) -> int:
    from nrp_deploy.batch import purify_files
    from nrp_deploy.runtime import DynamicDefense, load_purifier

    if args.seed is not None and not args.dynamic:
        raise NRPDeployError("--seed sets the --dynamic noise; add --dynamic or drop --seed")
    if args.server:
        return _run_purify_remote(args)
    purifier = load_purifier(
        args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        threads=args.threads,
        allow_failed=args.allow_failed,
    )
    print(f"purifier: {purifier.describe()}", file=sys.stderr)
    dynamic = DynamicDefense(seed=args.seed) if args.dynamic else None
    report = purify_files(
        args.inputs,
        args.output,
        purifier.as_batch_fn(dynamic),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        max_pixels=purifier.max_pixels,
    )
    return _finish_batch(report)


def _run_purify_remote(args: argparse.Namespace) -> int:
    from nrp_deploy.batch import purify_files
    from nrp_deploy.serving import PurifierClient

    local = [
        f"--{n}" for n in ("backend", "precision", "device", "tile", "overlap", "threads") if _given(args, n)
    ]
    if local:
        raise NRPDeployError(f"{', '.join(local)} configure an in-process purifier; the server has its own")
    client = PurifierClient(args.server)
    client.wait_ready(timeout_s=10)
    print(f"purifier: the {client.model} model at {args.server}", file=sys.stderr)
    report = purify_files(
        args.inputs,
        args.output,
        client.as_batch_fn(dynamic=True if args.dynamic else None, seed=args.seed),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return _finish_batch(report)


def _given(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name)
    return value is not None and value != "auto"


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a purifier behind NVIDIA Triton Inference Server (HTTP, gRPC, metrics)",
        description="Run the Triton Inference Server bundled with nvidia-pytriton over a purifier of any "
        "backend: uint8 images [N, H, W, 3] in, purified uint8 images out, requests of one image size joined "
        "by Triton's dynamic batcher. Request parameters: dynamic (true/false), seed, start_index. Health at "
        "/v2/health/ready, Prometheus metrics on the metrics port. SIGINT/SIGTERM shut it down cleanly: "
        "requests in flight finish. Needs the `serve` extra (numpy<2: its own environment).",
    )
    p.add_argument(
        "--model",
        default="default",
        help="registry name (default, NRP, NRP_resG), checkpoint, .onnx (with its .json) or TensorRT engine",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="inference backend (default: auto, the fastest that works here)",
    )
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "int8"], help="model precision")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the GPU when the backend can)")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads per model instance")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    _add_serving_options(p)
    p.set_defaults(handler=_run_serve)


def _add_serving_options(p: argparse.ArgumentParser) -> None:
    """What `nrp serve` and `nrp export triton` both configure: the defence's default, batching, instances."""
    p.add_argument(
        "--dynamic", action="store_true", help="dynamic defence on unless a request sends dynamic=false"
    )
    p.add_argument("--max-batch", type=int, default=8, help="images per batch, and per request (default: 8)")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=100,
        help="how long the dynamic batcher waits to fill a batch, in microseconds (default: 100)",
    )
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default: 1)")
    p.add_argument(
        "--max-pixels", type=int, default=None, help="largest image (H x W) accepted (default: 8192 x 8192)"
    )


def _run_serve(args: argparse.Namespace) -> int:
    from nrp_deploy.serving import Endpoints, ServeSettings, serve
    from nrp_deploy.serving.model_config import Batching

    settings = ServeSettings(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        threads=args.threads,
        dynamic=args.dynamic,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    endpoints = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)

    def announce(e: Endpoints) -> None:
        print(
            f"serving {settings.model} as model 'nrp_purifier': HTTP {e.http_url}, gRPC {e.grpc_url}, "
            f"metrics {e.metrics_url} (SIGINT/SIGTERM to stop)",
            file=sys.stderr,
            flush=True,
        )

    batching = Batching(args.max_batch, args.max_queue_delay_us)
    return serve(settings, endpoints, batching, instances=args.instances, on_ready=announce)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from nrp_deploy.training.config import TrainConfig

    d = TrainConfig()

    p = sub.add_parser(
        "train",
        help="train a purifier with the paper's self-supervised objective",
        description="Train an NRP purifier on unlabelled images: SSP adversaries of random crops are made on "
        "the fly against a feature extractor, and the purifier learns to restore the clean features (feature "
        "loss) and pixels (pixel loss). OUT gets checkpoint.pt (resumable), log.jsonl, purifier.safetensors.",
    )
    p.add_argument(
        "--data", default=d.data, help="image folder, or 'skimage' for scikit-image's shipped photos"
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint")
    p.add_argument("--architecture", default=d.architecture, choices=["NRP", "NRP_resG"])
    p.add_argument("--nf", type=int, default=d.model_config["nf"], help="channels")
    p.add_argument("--nb", type=int, default=d.model_config["nb"], help="blocks")
    p.add_argument("--no-identity-init", action="store_true", help="random init instead of near-identity")
    p.add_argument(
        "--init-weights",
        default=None,
        help="start from these purifier weights (fine-tuning; with --no-identity-init)",
    )
    p.add_argument("--feature-model", default=d.feature_model, help="efficientnet_lite0 or vgg16")
    p.add_argument("--feature-layer", default=d.feature_layer, help="extractor layer (default: its default)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=int, default=d.crop, help="crop side in pixels")
    p.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (cosine decay)")
    p.add_argument("--lr-min", type=float, default=d.lr_min, help="final learning rate")
    p.add_argument("--eps", type=float, default=d.eps, help="SSP L-inf budget (default 16/255)")
    p.add_argument("--eps-min-fraction", type=float, default=d.eps_min_fraction, help="eps_t ~ U[f*eps, eps]")
    p.add_argument("--ssp-iterations", type=int, default=d.ssp_iterations)
    p.add_argument("--ssp-step", type=float, default=d.ssp_step)
    p.add_argument("--clean-fraction", type=float, default=d.clean_fraction, help="crops left clean")
    p.add_argument(
        "--noise-fraction", type=float, default=d.noise_fraction, help="adversaries + dynamic noise"
    )
    p.add_argument("--feature-weight", type=float, default=d.feature_weight)
    p.add_argument("--pixel-weight", type=float, default=d.pixel_weight)
    p.add_argument(
        "--identity-weight", type=float, default=d.identity_weight, help="extra L1 on clean crops (0: off)"
    )
    p.add_argument(
        "--lowfreq-weight", type=float, default=d.lowfreq_weight, help="colour / low-frequency L1 (0: off)"
    )
    p.add_argument("--lowfreq-kernel", type=int, default=d.lowfreq_kernel, help="block size of that loss")
    p.add_argument("--adv-weight", type=float, default=d.adv_weight, help="relativistic GAN loss (0: off)")
    p.add_argument(
        "--classifiers",
        default=",".join(d.classifiers),
        help="comma-separated ImageNet classifiers for PGD adversaries and the logit term, one drawn per step "
        "(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2; default: none)",
    )
    p.add_argument(
        "--pgd-fraction", type=float, default=d.pgd_fraction, help="share of adversaries made by PGD, not SSP"
    )
    p.add_argument("--pgd-iterations", type=int, default=d.pgd_iterations)
    p.add_argument("--pgd-step", type=float, default=d.pgd_step)
    p.add_argument(
        "--logit-weight", type=float, default=d.logit_weight, help="classifier logits kept, L1 (0: off)"
    )
    p.add_argument("--max-zoom", type=float, default=d.max_zoom, help="crops of up to this x size, resized")
    p.add_argument("--jitter", type=float, default=d.jitter, help="colour jitter strength (0: off)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--publish",
        metavar="NAME",
        help="instead of training: ship the finished run in OUT to the registry as NAME "
        "(NAME.safetensors + manifest entry with provenance, in the models folder: $NRP_DEPLOY_MODELS_DIR, "
        "else ~/.cache/nrp_deploy/models)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=[],
        metavar="LABEL=REPORT",
        help="with --publish: `nrp eval` report.json files to record, each labelled (e.g. examples=out/report.json)",
    )
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from nrp_deploy.training import TrainConfig, train

    if args.publish:
        return _publish_run(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=args.data,
        architecture=args.architecture,
        model_config={"nf": args.nf, "nb": args.nb},
        identity_init=not args.no_identity_init,
        init_weights=args.init_weights,
        feature_model=args.feature_model,
        feature_layer=args.feature_layer,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        lr_min=args.lr_min,
        eps=args.eps,
        eps_min_fraction=args.eps_min_fraction,
        ssp_iterations=args.ssp_iterations,
        ssp_step=args.ssp_step,
        clean_fraction=args.clean_fraction,
        noise_fraction=args.noise_fraction,
        feature_weight=args.feature_weight,
        pixel_weight=args.pixel_weight,
        identity_weight=args.identity_weight,
        lowfreq_weight=args.lowfreq_weight,
        lowfreq_kernel=args.lowfreq_kernel,
        adv_weight=args.adv_weight,
        classifiers=[name for name in args.classifiers.split(",") if name],
        pgd_fraction=args.pgd_fraction,
        pgd_iterations=args.pgd_iterations,
        pgd_step=args.pgd_step,
        logit_weight=args.logit_weight,
        max_zoom=args.max_zoom,
        jitter=args.jitter,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
    )
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    print(f"trained {result.steps} steps ({losses}); weights: {result.weights}", file=sys.stderr)
    return 0


def _publish_run(args: argparse.Namespace) -> int:
    import json

    from nrp_deploy.errors import InputError
    from nrp_deploy.training.publish import publish_model

    metrics = {}
    for item in args.metrics:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise InputError(f"--metrics {item!r}: expected LABEL=REPORT, e.g. examples=eval/report.json")
        try:
            metrics[label] = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"--metrics {item}: cannot read JSON ({exc})") from exc
    target = publish_model(args.out, args.publish, metrics=metrics)
    print(f"published {args.out} as {args.publish!r}: {target}", file=sys.stderr)
    return 0


def _budget(text: str) -> float:
    """A perturbation size as a decimal or a fraction of 255 levels: ``0.01``, ``16/255``."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def _add_attack_common(p: argparse.ArgumentParser, eps: str, step: str, iterations: int) -> None:
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder (PNG)")
    p.add_argument("--eps", type=_budget, default=_budget(eps), help=f"L-inf budget (default: {eps})")
    p.add_argument("--step", type=_budget, default=_budget(step), help=f"step size (default: {step})")
    p.add_argument("--iterations", type=int, default=iterations, help=f"steps (default: {iterations})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random start / targets / noise (default: 0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="craft adversarial images (SSP, PGD through the purifier)",
        description="Attack images (files or folders) and write the adversaries to OUT as PNG, keeping the "
        "folders' layout. Images of the same size are attacked as one batch.",
    )
    kinds = p.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    ssp = kinds.add_parser(
        "ssp",
        help="self-supervised perturbation: label-free, maximises feature distortion",
        description="SSP as published: maximise the feature distance to the clean image with signed "
        "gradient ascent from a random start, projected into the eps-ball each step.",
    )
    _add_attack_common(ssp, eps="16/255", step="0.01", iterations=100)
    ssp.add_argument(
        "--features",
        default="efficientnet_lite0",
        choices=("efficientnet_lite0", "vgg16"),
        help="feature network",
    )
    ssp.add_argument(
        "--feature-layer", default=None, help="efficientnet_lite0: stage1..stage7 (default: stage3)"
    )
    ssp.add_argument(
        "--vgg16-weights", type=Path, default=None, help="torchvision VGG16 state dict (for vgg16)"
    )
    ssp.set_defaults(handler=_run_attack_ssp)
    pgd = kinds.add_parser(
        "pgd",
        help="PGD against a classifier behind the purifier (full / bpda / eot gradients)",
        description="PGD on classifier(purifier(x)) as published (targeted at a random class other than the "
        "clean prediction), with the gradient taken through the purifier (full), around it (bpda: "
        "straight-through) or averaged over the dynamic defence's noise (eot).",
    )
    _add_attack_common(pgd, eps="16/255", step="2/255", iterations=10)
    pgd.add_argument(
        "--model",
        default="default",
        help="purifier: registry name (default, NRP, NRP_resG) or checkpoint path",
    )
    pgd.add_argument(
        "--mode", default="full", choices=("full", "bpda", "eot"), help="gradient (default: full)"
    )
    goal = pgd.add_mutually_exclusive_group()
    goal.add_argument("--targeted", dest="targeted", action="store_true", default=True, help="(default)")
    goal.add_argument(
        "--untargeted", dest="targeted", action="store_false", help="move away from the clean class"
    )
    pgd.add_argument("--eot-samples", type=int, default=8, help="noise draws per EOT gradient (default: 8)")
    pgd.set_defaults(handler=_run_attack_pgd)


def _run_attack_ssp(args: argparse.Namespace) -> int:
    from nrp_deploy.attacks.files import ssp_files

    report = ssp_files(
        args.inputs,
        args.output,
        features=args.features,
        layer=args.feature_layer,
        vgg16_weights=args.vgg16_weights,
        eps=args.eps,
        step=args.step,
        iterations=args.iterations,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return _finish_batch(report)


def _run_attack_pgd(args: argparse.Namespace) -> int:
    from nrp_deploy.attacks.files import pgd_files

    report = pgd_files(
        args.inputs,
        args.output,
        model=args.model,
        mode=args.mode,
        targeted=args.targeted,
        eps=args.eps,
        step=args.step,
        iterations=args.iterations,
        eot_samples=args.eot_samples,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return _finish_batch(report)


def _add_eval(sub: argparse._SubParsersAction) -> None:
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch (default: auto)")
    p.add_argument("--with-pgd", action="store_true", help="also PGD straight-through (BPDA) against it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from nrp_deploy.demo import DEFAULT_OUT, DEMO_ATTACKS, DEMO_ITERATIONS, EXAMPLES_DIR, run_demo

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


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, throughput, memory and fidelity of every backend against eager PyTorch",
        description="Time the backends that run here (eager PyTorch FP32 is the baseline) on each model, "
        "resolution, batch size and scenario, in interleaved rounds so speed-ups are measured side by side; "
        "write bench.json, bench.md and PNG plots to OUT. Backends that cannot run here are listed as "
        "skipped with the reason. Registry models whose weights are absent run with seeded random weights.",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("bench_out"), help="output folder (default: bench_out)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="NRP_resG, 224 px, batch 1 and 2, model and e2e-dynamic, 4 rounds: minutes on a CPU",
    )
    p.add_argument(
        "--models", nargs="+", help="registry names or checkpoints (default: NRP_resG NRP default)"
    )
    p.add_argument("--backends", nargs="+", help="backend names (default: all for the device); see --list")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes (default: 1 4 8)")
    p.add_argument("--resolutions", nargs="+", type=int, help="square image sides in px (default: 224)")
    p.add_argument("--scenarios", nargs="+", help="model, e2e, e2e-dynamic (default: all three)")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="(default: auto: cuda if torch sees one)"
    )
    p.add_argument("--rounds", type=int, help="interleaved timed rounds per backend (default: 10)")
    p.add_argument("--reps", type=int, help="timed calls per backend per round (default: 1)")
    p.add_argument("--warmup", type=int, help="untimed calls per backend before timing (default: 2)")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend (default: library's)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and Markdown only")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render a bench.json into OUT")
    p.add_argument("--list", action="store_true", help="list the backends with what each is, and exit")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from nrp_deploy.bench.harness import QUICK, BenchConfig, run_benchmark, with_overrides
    from nrp_deploy.bench.report import console_table, read_result, write_report
    from nrp_deploy.bench.runner import CATALOGUE

    if args.list:
        for name, (precision, devices, what) in CATALOGUE.items():
            print(f"{name:24} {precision:5} {'/'.join(devices):9} {what}")
        return 0
    if args.render:
        doc = read_result(args.render)
    else:
        config = with_overrides(
            QUICK if args.quick else BenchConfig(),
            models=tuple(args.models) if args.models else None,
            backends=tuple(args.backends) if args.backends else None,
            batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None,
            resolutions=tuple(args.resolutions) if args.resolutions else None,
            scenarios=tuple(args.scenarios) if args.scenarios else None,
            device=args.device,
            rounds=args.rounds,
            reps=args.reps,
            warmup=args.warmup,
            threads=args.threads,
        )
        doc = run_benchmark(config)
    print(console_table(doc))
    for path in write_report(doc, args.output, plots=not args.no_plots):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), help="refuse an ONNX of another precision"
    )
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
    from nrp_deploy.export.tensorrt import build_engine
    from nrp_deploy.runtime.engine_cache import BuildOptions, make_profile, parse_bhw

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


def _add_info(sub: argparse._SubParsersAction) -> None:
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


def _add_export(sub: argparse._SubParsersAction) -> None:
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
        "for servers with only the Python backend), with dynamic batching, instance groups and warm-up.",
    )
    p.add_argument("--model", default="default", help="registry name, checkpoint or .onnx (default: default)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="repository folder")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="(default: fp32)")
    p.add_argument(
        "--engine",
        default="onnxruntime",
        choices=["onnxruntime", "tensorrt", "python"],
        help="the network's backend: onnxruntime (default), tensorrt (builds a plan: needs TensorRT and the "
        "target GPU), python (ONNX Runtime in the Python backend)",
    )
    _add_serving_options(p)
    p.add_argument("--gpu", action="store_true", help="instances on the GPUs (KIND_GPU; always for tensorrt)")
    p.add_argument(
        "--threads", type=int, default=None, help="engine python: ONNX Runtime threads per instance"
    )
    p.add_argument("--overwrite", action="store_true", help="replace REPO if it exists")
    p.set_defaults(handler=_run_export_triton)


def _run_export_triton(args: argparse.Namespace) -> int:
    from nrp_deploy.serving.triton_export import TritonExportOptions, export_triton_repository

    options = TritonExportOptions(
        precision=args.precision,
        engine=args.engine,
        max_batch=args.max_batch,
        delay_us=args.max_queue_delay_us,
        instances=args.instances,
        gpu=args.gpu,
        dynamic=args.dynamic,
        threads=args.threads,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    repo = export_triton_repository(args.model, args.output, options, overwrite=args.overwrite)
    print(f"wrote the Triton model repository {repo} (serve it: see {repo / 'README.md'})", file=sys.stderr)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    def given(**options: object) -> dict[str, object]:  # options left out keep the API's defaults
        return {k: v for k, v in options.items() if v is not None}

    common = given(opset=args.opset, min_psnr_db=args.min_psnr, overwrite=args.overwrite)
    if args.export == "onnx":
        from nrp_deploy.export.onnx import export_onnx

        result = export_onnx(args.model, args.output, simplify=not args.no_simplify, **common)
    else:
        common |= given(
            calibration=args.calibration,
            validation=args.validation,
            crop_size=args.crop_size,
            count=args.count,
            holdout_size=args.holdout_size,
            holdout_count=args.holdout_count,
            seed=args.seed,
            progress=not args.no_progress,
        )
        if args.export == "fp16":
            from nrp_deploy.export.fp16 import export_fp16

            options = given(keep_io_types=not args.fp16_io, data_max=args.data_max)
            result = export_fp16(args.model, args.output, **common, **options)
        else:
            from nrp_deploy.export.int8 import export_int8

            options = given(
                method=args.method,
                calibration_method=args.calibration_method,
                high_precision=args.high_precision,
                target_cpu=args.target_cpu,
            )
            result = export_int8(args.model, args.output, **common, **options)
    print(f"wrote {result.path} and {result.metadata_path}", file=sys.stderr)
    print(result.verdict.line)
    return 0 if result.verdict.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp",
        description="Deploy NRP adversarial purifiers: purify, serve, attack, evaluate, export, build, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"nrp-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_purify(sub)
    _add_serve(sub)
    _add_attack(sub)
    _add_eval(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_bench(sub)
    _add_export(sub)
    _add_build(sub)
    _add_info(sub)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: temporary files are removed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can be set only there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.handler(args) or 0)
    except NRPDeployError as exc:
        print(f"nrp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nrp {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"nrp {args.command}: terminated (SIGTERM); complete outputs were kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
