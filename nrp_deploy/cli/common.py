"""Helpers shared by several commands: a batch job's exit status, the serving options."""

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
