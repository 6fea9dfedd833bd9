"""Benchmark statistics (torch-free): latency summaries, the interleaved schedule, paired speed-ups, PSNR.

Latencies on a shared machine drift (other processes, thermal and frequency changes), so the harness runs
the backends' timed rounds round-robin and compares them round by round: a slow minute slows every backend
in that round alike, and the per-round ratio cancels it where back-to-back blocks would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one backend's timed runs, in milliseconds per call (one call = one batch)."""

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    def throughput(self, batch_size: int) -> float:
        """Images per second at the median latency."""
        return batch_size * 1000.0 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(samples_ms: Sequence[float]) -> LatencyStats:
    """Median and tail percentiles (linear interpolation, as numpy's default) of latency samples."""
    if len(samples_ms) == 0:
        raise ValueError("no latency samples to summarise")
    a = np.asarray(samples_ms, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("latency samples must be finite and non-negative")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(
        n=int(a.size),
        median_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(a.mean()),
        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
    )


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Round-robin schedule: every round runs every backend once, the start rotating by one each round.

    Rotation keeps any one backend from always running first (cold caches, a just-finished neighbour's
    heat) or always last.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique, got {names}")
    k = len(names)
    return (
        [[names[(r + i) % k] for i in range(k)] for r in range(rounds)] if k else [[] for _ in range(rounds)]
    )


@dataclass(frozen=True)
class Speedup:
    """Baseline latency / backend latency: overall medians, and the median of per-round ratios."""

    overall: float
    paired_median: float
    paired_min: float
    paired_max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_speedup(baseline_rounds: Sequence[Sequence[float]], rounds: Sequence[Sequence[float]]) -> Speedup:
    """Speed-up of a backend over the baseline from samples grouped by round (same rounds for both).

    ``overall`` divides the medians of all samples; ``paired_*`` summarise the ratios of the two round
    medians, which is the figure that cancels drift between rounds.
    """
    if len(baseline_rounds) != len(rounds) or not rounds:
        raise ValueError(
            f"need the same, non-zero number of rounds for baseline and backend "
            f"(got {len(baseline_rounds)} and {len(rounds)})"
        )
    ratios = [float(np.median(b) / np.median(r)) for b, r in zip(baseline_rounds, rounds, strict=True)]
    base_all = [s for rnd in baseline_rounds for s in rnd]
    all_samples = [s for rnd in rounds for s in rnd]
    return Speedup(
        overall=float(np.median(base_all) / np.median(all_samples)),
        paired_median=float(np.median(ratios)),
        paired_min=float(min(ratios)),
        paired_max=float(max(ratios)),
    )
