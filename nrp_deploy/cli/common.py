"""Helpers shared by several commands: a batch job's exit status, the runtime and serving options."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nrp_deploy.batch import BatchReport


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


def add_serving_options(p: argparse.ArgumentParser) -> None:
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
