"""Helpers shared by several commands: a batch job's exit status, the runtime, noise and serving options."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nrp_deploy.batch import BatchReport
    from nrp_deploy.runtime import DynamicDefense

#: The ``argparse`` destinations of the noise-level options, in the order they are named in messages.
NOISE_OPTIONS = ("noise_sigma", "noise_eps")


def finish_batch(report: BatchReport) -> int:
    """Print a batch job's summary (failures named) and turn it into the exit status: 1 if any file failed."""
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


def add_runtime_options(
    p: argparse.ArgumentParser, *, precision_default: str | None = "auto", with_precision: bool = True
) -> None:
    """``--backend`` and (``with_precision``) ``--precision``, as every command that runs a purifier takes them.

    ``precision_default`` "auto": the fastest precision whose fidelity check passes here; None: the model's
    own unless asked (evaluation measures the artifact as it is).
    """
    from nrp_deploy.artifacts.metadata import PRECISIONS
    from nrp_deploy.runtime.backends import BACKENDS

    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="inference backend (default: auto: on a CPU the fastest that passes here, timed once and cached, "
        "`nrp info --model` says which and why; on a GPU TensorRT first; torch is the eager baseline)",
    )
    if not with_precision:
        return
    if precision_default == "auto":
        help_text = (
            "(default: auto, the fastest whose fidelity check passes here; an ONNX/engine runs at its own)"
        )
    else:
        help_text = "(default: the model's own)"
    p.add_argument(
        "--precision",
        default=precision_default,
        choices=("auto", *PRECISIONS),
        help=f"model precision {help_text}",
    )


def _noise_level(text: str) -> float:
    """``argparse`` type of ``--noise-sigma`` / ``--noise-eps``: a finite number >= 0, refused while the
    command line is parsed, before any model is loaded."""
    from nrp_deploy.errors import InputError
    from nrp_deploy.runtime.dynamic import check_noise_level

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        check_noise_level("the noise level", value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_noise_options(p: argparse.ArgumentParser, *, note: str) -> None:
    """``--noise-sigma`` and ``--noise-eps``: the level of the dynamic defence's noise, the published one
    unless given; ``note`` says where the command uses it. ``dynamic_defense`` builds the defence from them.

    Their parsed default is None, not the published value, so that a command can tell an option given from
    one left out (``noise_options_given``): giving the published level is still a choice, which a command
    that cannot honour it (purifying through a server) must refuse.
    """
    from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA

    p.add_argument(
        "--noise-sigma",
        type=_noise_level,
        default=None,
        metavar="SIGMA",
        help="standard deviation of the dynamic defence's Gaussian noise, in pixel values of [0, 1] "
        f"(default: {PUBLISHED_SIGMA}, the published level; a smaller sigma costs less clean agreement and "
        f"randomises less); {note}",
    )
    p.add_argument(
        "--noise-eps",
        type=_noise_level,
        default=None,
        metavar="EPS",
        help="projection radius of the dynamic defence: the noisy image is kept within EPS of the input "
        f"(L-inf, pixel values of [0, 1]; default: {PUBLISHED_EPS:.4f} = 16/255, the published radius); used "
        "as --noise-sigma is",
    )


def noise_options_given(args: argparse.Namespace) -> list[str]:
    """The noise-level options given on the command line, as the user wrote them (``--noise-sigma``)."""
    return [f"--{name.replace('_', '-')}" for name in NOISE_OPTIONS if getattr(args, name) is not None]


def dynamic_defense(args: argparse.Namespace, seed: int | None = None) -> DynamicDefense:
    """The dynamic defence at the level ``add_noise_options`` parsed (the published one where an option
    was left out), its noise keyed by ``seed`` (None: a fresh seed per call)."""
    from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA
    from nrp_deploy.runtime import DynamicDefense

    return DynamicDefense(
        sigma=PUBLISHED_SIGMA if args.noise_sigma is None else args.noise_sigma,
        eps=PUBLISHED_EPS if args.noise_eps is None else args.noise_eps,
        seed=seed,
    )


def add_serving_options(p: argparse.ArgumentParser) -> None:
    """What `nrp serve` and `nrp export triton` both configure: the defence's default and its noise level,
    batching, instances."""
    p.add_argument(
        "--dynamic", action="store_true", help="dynamic defence on unless a request sends dynamic=false"
    )
    add_noise_options(
        p,
        note="fixed when the model is served or exported: requests turn the defence on or off and seed "
        "it, but cannot change its level",
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
