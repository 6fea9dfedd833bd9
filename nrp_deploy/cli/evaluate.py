"""``nrp eval``: robustness and fidelity of a purifier for any classifier, under the paper's threat models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nrp_deploy.cli.attack import parse_budget
from nrp_deploy.cli.common import add_noise_options, add_runtime_options, dynamic_defense

SPEC_HELP = (
    "a registry name (efficientnet_lite0/1/2), path/to/file.py:callable, package.module:callable, a "
    "TorchScript file, an .onnx file (target only) or timm:NAME / torchvision:NAME with a local weights file; "
    "options after '?': norm=imagenet|inception|tflite|none, mean=A:B:C, std=A:B:C, size=N or HxW, "
    "weights=PATH"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="robustness report: any classifier under black-box, gray-box and white-box attacks",
        description="Attack the images under INPUT and report, per defence (none, the purifier, the dynamic "
        "defence with fixed and with fresh noise, any baselines), how often the judged classifier keeps its "
        "clean prediction under each attack, and each threat model's worst case with the agreement the "
        "defence recovers. No labels: the clean prediction is the reference. Prints the tables; --out also "
        "writes report.json, report.md and one PNG grid per attack.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--model", default="default", help="defence: registry name, checkpoint, .onnx or TensorRT engine"
    )
    p.add_argument(
        "--attack-model",
        default=None,
        help="torch checkpoint of the attacker's local copy of the purifier (default: --model)",
    )
    add_runtime_options(p, precision_default=None)
    p.add_argument(
        "--threat-model",
        default="",
        metavar="MODELS",
        help="comma-separated: black-box (SSP, MI-FGSM, DI-FGSM, TI-DIM crafted on --source), gray-box (PGD "
        "on the target, PGD through the local copy with straight-through gradients), white-box (BPDA "
        "through the deployed purifier without and with the dynamic defence, EOT)",
    )
    p.add_argument(
        "--protocol", default=None, choices=("paper",), help="paper: all three threat models (and clean)"
    )
    p.add_argument(
        "--attacks",
        default=None,
        help="comma-separated attacks, on top of the threat models': none, ssp, mi-fgsm, di-fgsm, ti-dim, "
        "pgd-target, pgd-target-targeted, pgd-bpda, pgd-full, bpda, bpda-eot, pgd-eot (pgd-transfer and "
        "pgd-transfer-targeted are the former names of pgd-target[-targeted]) (default, when no threat "
        "model is named either: none,ssp,pgd-full,pgd-bpda,pgd-eot)",
    )
    p.add_argument(
        "--classifier",
        default="efficientnet_lite0",
        metavar="SPEC",
        help=f"the judged classifier (the target): {SPEC_HELP} (default: efficientnet_lite0)",
    )
    p.add_argument("--classifier-weights", default=None, metavar="PATH", help="state dict for the target")
    p.add_argument(
        "--classifier-mean", default=None, metavar="R,G,B", help="target input mean (default: ImageNet's)"
    )
    p.add_argument(
        "--classifier-std", default=None, metavar="R,G,B", help="target input std (default: ImageNet's)"
    )
    p.add_argument(
        "--classifier-size", default=None, metavar="N|HxW", help="resize the target's input to this size"
    )
    p.add_argument(
        "--source",
        default="",
        metavar="SPECS",
        help="comma-separated attacker networks for the black-box transfer attacks (their losses are "
        "averaged), each a classifier spec as --classifier, but not ONNX",
    )
    p.add_argument(
        "--ssp-features",
        default="efficientnet_lite0",
        help="network whose features SSP attacks: efficientnet_lite0, _lite1 or _lite2 (default: lite0)",
    )
    p.add_argument(
        "--baselines",
        default="",
        help="comma-separated training-free defences to compare: blur (3x3 box, twice), jpeg (quality 75)",
    )
    p.add_argument(
        "--eps", type=parse_budget, default=16 / 255, help="L-inf budget of every attack (default: 16/255)"
    )
    p.add_argument(
        "--iterations", type=int, default=None, help="attack steps (default: SSP 100, PGD and transfer 10)"
    )
    p.add_argument("--eot-samples", type=int, default=8, help="noise draws per EOT gradient (default: 8)")
    add_noise_options(
        p,
        note="the dynamic and dynamic-fresh rows run it and the EOT attacks (pgd-eot, bpda-eot) average "
        "over it, so the white-box attacker faces the noise measured",
    )
    p.add_argument(
        "--untargeted", action="store_true", help="untargeted PGD through the defence (default: targeted)"
    )
    p.add_argument(
        "--random-start", action="store_true", help="PGD starts from a random point in the eps-ball"
    )
    p.add_argument(
        "--restarts", type=int, default=1, help="PGD random restarts, best kept per image (default: 1)"
    )
    p.add_argument("--feature-layer", default=None, help="SSP feature layer (default: stage3)")
    p.add_argument("--device", default="cpu", help="torch device for the attacks and networks (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of attacks and fixed dynamic noise (default: 0)")
    p.add_argument("--grid-images", type=int, default=4, help="images per PNG grid (default: 4)")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write report.json/.md and PNG grids"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_eval)


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def options_from_args(args: argparse.Namespace):  # -> EvalOptions
    """The ``EvalOptions`` the command line asks for (the target's spec with its flags applied)."""
    from nrp_deploy.attacks.classifiers import ClassifierSpec, parse_channels, parse_size, split_specs
    from nrp_deploy.evaluation.options import EvalOptions

    target = ClassifierSpec.parse(args.classifier).overridden(
        weights=args.classifier_weights,
        mean=None
        if args.classifier_mean is None
        else parse_channels(args.classifier_mean, "mean", "--classifier-mean"),
        std=None
        if args.classifier_std is None
        else parse_channels(args.classifier_std, "std", "--classifier-std"),
        size=None if args.classifier_size is None else parse_size(args.classifier_size, "--classifier-size"),
    )
    noise = dynamic_defense(args)
    return EvalOptions(
        model=args.model,
        attacks=_list(args.attacks),
        threat_models=_list(args.threat_model),
        protocol=args.protocol,
        classifier=target,
        sources=tuple(ClassifierSpec.parse(s) for s in split_specs(args.source)),
        attack_model=args.attack_model,
        backend=args.backend,
        precision=args.precision,
        ssp_features=args.ssp_features,
        feature_layer=args.feature_layer,
        baselines=_list(args.baselines),
        noise_sigma=noise.sigma,
        noise_eps=noise.eps,
        eps=args.eps,
        iterations=args.iterations,
        eot_samples=args.eot_samples,
        targeted=not args.untargeted,
        random_start=args.random_start,
        restarts=args.restarts,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        grid_images=args.grid_images,
    )


def _run_eval(args: argparse.Namespace) -> int:
    from nrp_deploy.evaluation.report import format_defence_table, format_table, write_report
    from nrp_deploy.evaluation.robustness import evaluate

    report = evaluate(args.inputs, options_from_args(args), progress=not args.no_progress)
    print(format_defence_table(report))
    print()
    print(format_table(report))
    print(f"\n{report.settings['images']} images in {report.settings['seconds']:.0f} s")
    if args.out is not None:
        for path in write_report(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if report.failed else 0
