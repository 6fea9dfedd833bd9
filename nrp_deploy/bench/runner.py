"""What every benchmark backend shares: the model under test and the ``Runner`` (the backends themselves are
listed in ``catalogue``).

A runner offers two timed paths: ``infer`` (model only: the input already where and how the engine wants
it, the output left there) and ``purify`` (end to end: uint8 NHWC host images in, uint8 NHWC host images
out, dynamic defence on or off). The factories that build runners (``targets`` for the runtime's
backends, ``torch_configs`` for the eager ones) both depend on this module and never on each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BenchModel:
    """The purifier under test: an architecture and the checkpoint file every backend loads from.

    ``weights`` says whether these are published / trained weights or seeded random ones; latency does
    not depend on the values, fidelity of low-precision backends does (see the report's notes).
    """

    name: str
    spec: Any  # ModelSpec
    checkpoint: Path
    weights: str
    random_weights: bool


@dataclass(frozen=True)
class TargetContext:
    """What factories need besides the model: the device and the intra-op thread count (None: default)."""

    device: str
    threads: int | None


def _wall_ms(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    start = time.perf_counter_ns()
    fn()
    sync()
    return (time.perf_counter_ns() - start) / 1e6


def _no_sync() -> None:
    return None


@dataclass
class Runner:
    """One prepared backend; see the module docstring for the two timed paths."""

    name: str
    precision: str
    device: str
    description: str
    put: Callable[[np.ndarray], Any]
    infer: Callable[[Any], Any]
    fetch: Callable[[Any], np.ndarray]
    purify: Callable[[np.ndarray, bool], np.ndarray]
    sync: Callable[[], None] = _no_sync
    infer_timer: Callable[[Callable[[], Any]], float] | None = None
    device_memory: Callable[[], int | None] | None = None
    reset_device_memory: Callable[[], None] | None = None
    close: Callable[[], None] = _no_sync
    details: dict[str, Any] = field(default_factory=dict)

    def time_infer(self, x: Any) -> float:
        """Milliseconds of one model-only call (CUDA events where the backend provides them)."""
        if self.infer_timer is not None:
            return self.infer_timer(lambda: self.infer(x))
        return _wall_ms(lambda: self.infer(x), self.sync)

    def time_purify(self, images: np.ndarray, dynamic: bool) -> float:
        """Milliseconds of one end-to-end call, host to host, by the wall clock."""
        return _wall_ms(lambda: self.purify(images, dynamic), self.sync)


Factory = Callable[[BenchModel, TargetContext], Runner]
