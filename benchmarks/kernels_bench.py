"""Micro-benchmark of the fused kernels against the unfused torch sequence (needs a CUDA GPU and torch).

For batches of 224x224 uint8 RGB images it times, with CUDA events and the median of many runs:
- pre+noise: the fused kernel (uint8 NHWC -> noise, projection, clamp -> float16 NCHW) against torch's
  to-float / 255, randn_like, add, max, min, clamp, to-half; also with FusedKernels(fast_sincos=True);
- pre: the same without noise against to-float / 255, clamp, to-half;
- post: float16 NCHW -> uint8 NHWC against clamp, * 255, round, to-uint8, NHWC copy.
and reports the fused kernel's effective bandwidth (bytes it must read + write / time) as a share of the
device's peak (memory clock x bus width x 2, from the driver, or --peak-gbps) and of the measured
device-to-device copy bandwidth (a 512 MiB torch copy: what a memory-bound kernel can reach in practice).
Goal: >= 4x the unfused speed and >= 70 % of peak at batch 64.

Timing method (the same for both sides): before every run the GPU is kept busy for ~1 ms
(torch.cuda._sleep) so the CPU has enqueued the whole run before it starts (no launch gaps are timed),
and L2 is flushed by zeroing a buffer twice its size, so the data comes from DRAM as in a real pipeline.

    python benchmarks/kernels_bench.py [--batches 1 8 64] [--reps 200] [--peak-gbps 3350] [--output F]

Writes benchmarks/results/kernels_bench_<gpu>.json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

SIGMA, EPS, SEED = 0.05, 16 / 255, 1234
HEIGHT = WIDTH = 224
RESULTS = Path(__file__).resolve().parent / "results"


def peak_bandwidth_gbps(device: int) -> float | None:
    """Theoretical DRAM bandwidth from the driver: memory clock (kHz) x bus width (bits) x 2 (DDR)."""
    from cuda.bindings import driver

    attr = driver.CUdevice_attribute
    values = []
    for a in (attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH):
        err, value = driver.cuDeviceGetAttribute(a, device)
        if int(err) != 0 or value <= 0:
            return None
        values.append(value)
    clock_khz, bus_bits = values
    return clock_khz * 1e3 * bus_bits * 2 / 8 / 1e9


def copy_bandwidth_gbps(torch, nbytes: int = 512 << 20, reps: int = 20) -> float:
    """Measured device-to-device copy bandwidth: bytes read + written per second, median of ``reps``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times[2:]) / 1e9


def time_runs(fn: Callable[[], None], reps: int, flush, torch) -> float:
    """Median GPU time of ``fn`` in microseconds (see the module docstring for the method)."""
    for _ in range(5):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        torch.cuda._sleep(2_000_000)
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=True))


def bench_batch(batch: int, reps: int, kernels, fast_kernels, flush, torch) -> list[dict]:
    """Fused vs unfused timings for one batch size; one record per operation."""
    stream = torch.cuda.current_stream().cuda_stream
    images = torch.randint(0, 256, (batch, HEIGHT, WIDTH, 3), dtype=torch.uint8, device="cuda")
    fused_out = torch.empty((batch, 3, HEIGHT, WIDTH), dtype=torch.float16, device="cuda")
    post_out = torch.empty_like(images)
    elements = images.numel()

    def fused_pre(sigma: float, fused=kernels) -> Callable[[], None]:
        def run() -> None:
            fused.preprocess(
                images.data_ptr(), fused_out.data_ptr(), batch, HEIGHT, WIDTH, "float16",
                sigma, EPS, SEED, 0, stream,
            )  # fmt: skip

        return run

    def to_float():
        return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format) / 255

    def unfused_noise() -> None:
        x = to_float()
        noise = torch.randn_like(x)
        y = torch.add(x, noise, alpha=SIGMA)
        y = torch.max(y, x - EPS)
        y = torch.min(y, x + EPS)
        y.clamp(0, 1).half()

    def unfused_plain() -> None:
        to_float().clamp(0, 1).half()

    def fused_post() -> None:
        kernels.postprocess(
            fused_out.data_ptr(), post_out.data_ptr(), batch, HEIGHT, WIDTH, "float16", stream
        )

    def unfused_post() -> None:
        y = fused_out.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        y.permute(0, 2, 3, 1).contiguous()

    cases = [
        ("pre+noise", fused_pre(SIGMA), unfused_noise, elements * (1 + 2)),
        ("pre+noise fast-sincos", fused_pre(SIGMA, fast_kernels), unfused_noise, elements * (1 + 2)),
        ("pre", fused_pre(0.0), unfused_plain, elements * (1 + 2)),
        ("post", fused_post, unfused_post, elements * (2 + 1)),
    ]
    records = []
    for name, fused, unfused, nbytes in cases:
        fused_us = time_runs(fused, reps, flush, torch)
        unfused_us = time_runs(unfused, reps, flush, torch)
        records.append(
            {
                "op": name,
                "batch": batch,
                "fused_us": fused_us,
                "unfused_us": unfused_us,
                "speedup": unfused_us / fused_us,
                "bytes": nbytes,
                "fused_gbps": nbytes / fused_us / 1e3,
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--reps", type=int, default=200, help="timed runs per measurement (median)")
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--peak-gbps", type=float, help="peak DRAM bandwidth, if the driver cannot tell")
    parser.add_argument("--output", type=Path, help="JSON report path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)

    import torch

    from nrp_deploy.fileutil import write_json_atomic
    from nrp_deploy.kernels import FusedKernels

    if not torch.cuda.is_available():
        print("kernels_bench needs a CUDA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.device)
    props = torch.cuda.get_device_properties(args.device)
    peak = args.peak_gbps or peak_bandwidth_gbps(args.device)
    copy_gbps = copy_bandwidth_gbps(torch)
    flush = torch.empty(max(2 * props.L2_cache_size, 64 << 20), dtype=torch.uint8, device="cuda")
    with FusedKernels(args.device) as kernels, FusedKernels(args.device, fast_sincos=True) as fast:
        records = [r for b in args.batches for r in bench_batch(b, args.reps, kernels, fast, flush, torch)]

    print(
        f"{props.name}  peak {peak or float('nan'):.0f} GB/s, measured copy {copy_gbps:.0f} GB/s  "
        f"({HEIGHT}x{WIDTH} RGB, float16 engine input)"
    )
    print(
        f"{'op':<22} {'batch':>5} {'fused us':>9} {'unfused us':>11} {'speed-up':>9} {'GB/s':>7} "
        f"{'% peak':>7} {'% copy':>7}"
    )
    for r in records:
        r["peak_share"] = r["fused_gbps"] / peak if peak else None
        r["copy_share"] = r["fused_gbps"] / copy_gbps
        share = f"{100 * r['peak_share']:.1f}" if peak else "n/a"
        print(
            f"{r['op']:<22} {r['batch']:>5} {r['fused_us']:>9.2f} {r['unfused_us']:>11.2f} "
            f"{r['speedup']:>8.1f}x {r['fused_gbps']:>7.0f} {share:>7} {100 * r['copy_share']:>7.1f}"
        )
    report = {
        "device": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "peak_gbps": peak,
        "copy_gbps": copy_gbps,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": "CUDA events, median of reps; GPU pre-occupied ~1 ms and L2 flushed before each run",
        "shape": [HEIGHT, WIDTH, 3],
        "sigma": SIGMA,
        "eps": EPS,
        "results": records,
    }
    path = (
        args.output or RESULTS / f"kernels_bench_{re.sub(r'[^A-Za-z0-9]+', '_', props.name).strip('_')}.json"
    )
    write_json_atomic(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
