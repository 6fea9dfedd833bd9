"""``nrp attack ssp|pgd``: adversarial copies of image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from nrp_deploy.cli.common import add_noise_options, dynamic_defense, finish_batch, noise_options_given
from nrp_deploy.errors import NRPDeployError


def parse_budget(text: str) -> float:
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
    p.add_argument(
        "--eps", type=parse_budget, default=parse_budget(eps), help=f"L-inf budget (default: {eps})"
    )
    p.add_argument(
        "--step", type=parse_budget, default=parse_budget(step), help=f"step size (default: {step})"
    )
    p.add_argument("--iterations", type=int, default=iterations, help=f"steps (default: {iterations})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random start / targets / noise (default: 0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
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
        "--classifier",
        default="efficientnet_lite0",
        metavar="SPEC",
        help="classifier attacked: a registry name, file.py:callable, package.module:callable, a TorchScript "
        "file, timm:NAME / torchvision:NAME with ?weights=PATH (default: efficientnet_lite0)",
    )
    pgd.add_argument(
        "--mode",
        default="full",
        choices=("full", "bpda", "eot", "bpda-eot"),
        help="gradient (default: full)",
    )
    pgd.add_argument(
        "--random-start",
        action="store_true",
        help="start from a uniform draw in the eps-ball (default: clean)",
    )
    pgd.add_argument(
        "--restarts", type=int, default=1, help="random restarts, best adversary per image kept (default: 1)"
    )
    goal = pgd.add_mutually_exclusive_group()
    goal.add_argument("--targeted", dest="targeted", action="store_true", default=True, help="(default)")
    goal.add_argument(
        "--untargeted", dest="targeted", action="store_false", help="move away from the clean class"
    )
    pgd.add_argument("--eot-samples", type=int, default=8, help="noise draws per EOT gradient (default: 8)")
    add_noise_options(
        pgd, note="--mode eot and bpda-eot average over this noise: give the attacked deployment's level"
    )
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
    return finish_batch(report)


def _run_attack_pgd(args: argparse.Namespace) -> int:
    from nrp_deploy.attacks.files import pgd_files
    from nrp_deploy.attacks.pgd import EOT_MODES

    noise_options = noise_options_given(args)
    if noise_options and args.mode not in EOT_MODES:
        raise NRPDeployError(
            f"{', '.join(noise_options)} set the noise that --mode {' and '.join(EOT_MODES)} average over; "
            f"--mode {args.mode} sees none: choose an EOT mode or drop them"
        )
    noise = dynamic_defense(args)
    report = pgd_files(
        args.inputs,
        args.output,
        model=args.model,
        classifier=args.classifier,
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
        random_start=args.random_start,
        restarts=args.restarts,
        sigma=noise.sigma,
        dynamic_eps=noise.eps,
    )
    return finish_batch(report)
