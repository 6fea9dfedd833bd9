"""Benchmark statistics and machine facts: percentiles, the interleaved schedule, paired speed-ups, PSNR,
and the resettable host-memory peak. Pure numpy, no models: milliseconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nrp_deploy.bench import stats as bench_stats
from nrp_deploy.bench.machine import HostMemory, machine_info
from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.metrics import psnr


def test_summarise_matches_numpy_percentiles():
    rng = np.random.default_rng(3)
    samples = rng.gamma(4.0, 2.0, size=101)
    stats = bench_stats.summarise(samples)
    assert stats.n == 101
    assert stats.median_ms == pytest.approx(np.median(samples))
    assert stats.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput(8) == pytest.approx(8000.0 / stats.median_ms)


def test_summarise_single_sample_and_bad_input():
    one = bench_stats.summarise([5.0])
    assert (one.median_ms, one.p99_ms, one.std_ms) == (5.0, 5.0, 0.0)
    with pytest.raises(ValueError, match="no latency samples"):
        bench_stats.summarise([])
    with pytest.raises(ValueError, match="finite and non-negative"):
        bench_stats.summarise([1.0, -2.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        bench_stats.summarise([1.0, math.nan])


def test_interleaved_order_runs_everyone_each_round_and_rotates_the_start():
    names = ["a", "b", "c"]
    schedule = bench_stats.interleaved_order(names, rounds=6)
    assert len(schedule) == 6
    assert all(sorted(r) == names for r in schedule)
    assert [r[0] for r in schedule] == ["a", "b", "c", "a", "b", "c"]
    # relative round-robin order is kept: each round is a rotation of the list
    assert schedule[1] == ["b", "c", "a"]


def test_interleaved_order_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rounds"):
        bench_stats.interleaved_order(["a"], 0)
    with pytest.raises(ValueError, match="unique"):
        bench_stats.interleaved_order(["a", "a"], 2)
    assert bench_stats.interleaved_order([], 2) == [[], []]


def test_paired_speedup_cancels_drift_between_rounds():
    # the machine slows down 4x over the run; the backend is always exactly 2x faster within a round
    slowdown = [1.0, 2.0, 3.0, 4.0]
    base = [[10.0 * s, 10.0 * s] for s in slowdown]
    fast = [[5.0 * s, 5.0 * s] for s in slowdown]
    result = bench_stats.paired_speedup(base, fast)
    assert result.paired_median == pytest.approx(2.0)
    assert result.paired_min == pytest.approx(2.0)
    assert result.paired_max == pytest.approx(2.0)
    assert result.overall == pytest.approx(np.median([10, 20, 30, 40] * 2) / np.median([5, 10, 15, 20] * 2))


def test_paired_speedup_needs_matching_rounds():
    with pytest.raises(ValueError, match="same, non-zero number of rounds"):
        bench_stats.paired_speedup([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="same, non-zero number of rounds"):
        bench_stats.paired_speedup([], [])


def test_psnr_known_value_identity_and_shape_check():
    ref = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    test = ref.copy()
    assert psnr(ref, test, 255.0) == math.inf
    test[0, 0, 0, 0] = 255  # one full-scale error in 96 values: mse = 255^2 / 96
    assert psnr(ref, test, 255.0) == pytest.approx(10 * math.log10(96))
    with pytest.raises(InputError, match="one shape"):
        psnr(ref, ref[:1], 255.0)


def test_host_memory_peak_resets_and_sees_a_new_allocation():
    memory = HostMemory()
    if not memory.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    del block
    memory.reset()
    after_reset = memory.peak_bytes()
    block = np.ones(64 * 2**20 // 8)
    assert memory.peak_bytes() >= after_reset + 60 * 2**20
    del block
    assert memory.current_bytes() <= memory.peak_bytes()


def test_machine_info_names_cpu_and_library_versions():
    info = machine_info()
    assert info["cpu"]["usable_cpus"] >= 1
    assert info["libraries"]["numpy"] == np.__version__
    assert "python" in info["libraries"]
