"""``nrp train``: the self-supervised training loop, and publishing a finished run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from nrp_deploy.models.spec import ARCHITECTURES
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
    p.add_argument("--architecture", default=d.architecture, choices=list(ARCHITECTURES))
    p.add_argument("--nf", type=int, default=d.model_config["nf"], help="channels")
    p.add_argument("--nb", type=int, default=d.model_config["nb"], help="blocks")
    p.add_argument("--no-identity-init", action="store_true", help="random init instead of near-identity")
    p.add_argument(
        "--init-weights",
        default=None,
        help="start from these purifier weights (fine-tuning; with --no-identity-init); NRP_resG weights with "
        "fewer blocks than --nb get the missing ones appended as identity blocks",
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
        "--clean-noise-fraction",
        type=float,
        default=d.clean_noise_fraction,
        help="share of the clean crops given the dynamic defence's noise and trained back to clean",
    )
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
    p.add_argument(
        "--transfer-fraction",
        type=float,
        default=d.transfer_fraction,
        help="share of the steps whose classifier adversaries are MI-FGSM, DI-FGSM or TI-DIM on the "
        "classifiers' ensemble instead of PGD (needs torchattacks)",
    )
    p.add_argument("--transfer-iterations", type=int, default=d.transfer_iterations)
    p.add_argument(
        "--transfer-ti-kernel",
        type=int,
        default=d.transfer_ti_kernel,
        help="TI-DIM's smoothing kernel, pixels",
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
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=d.snapshot_every,
        help="keep the weights every N steps in OUT/snapshots/ for selection (0: off)",
    )
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
    p.add_argument(
        "--snapshot",
        type=Path,
        default=None,
        help="with --publish: publish this snapshot of the run (OUT/snapshots/step_N.safetensors) instead of "
        "its final weights",
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
        clean_noise_fraction=args.clean_noise_fraction,
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
        transfer_fraction=args.transfer_fraction,
        transfer_iterations=args.transfer_iterations,
        transfer_ti_kernel=args.transfer_ti_kernel,
        pgd_step=args.pgd_step,
        logit_weight=args.logit_weight,
        max_zoom=args.max_zoom,
        jitter=args.jitter,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        snapshot_every=args.snapshot_every,
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
    target = publish_model(args.out, args.publish, metrics=metrics, snapshot=args.snapshot)
    print(f"published {args.out} as {args.publish!r}: {target}", file=sys.stderr)
    return 0
