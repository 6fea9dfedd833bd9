"""``nrp bench``: latency and fidelity of the backends against the eager baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, throughput, memory and fidelity of every backend against eager PyTorch",
        description="Time the backends that run here (eager PyTorch FP32 is the baseline) on each model, "
        "resolution, batch size and scenario, in interleaved rounds so speed-ups are measured side by side; "
        "write bench.json, bench.md and PNG plots to OUT. Backends that cannot run here are listed as "
        "skipped with the reason. Registry models whose weights are absent run with seeded random weights.",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("bench_out"), help="output folder (default: bench_out)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="NRP_resG, 224 px, batch 1 and 2, model and e2e-dynamic, 4 rounds: minutes on a CPU",
    )
    p.add_argument(
        "--models", nargs="+", help="registry names or checkpoints (default: NRP_resG NRP default)"
    )
    p.add_argument("--backends", nargs="+", help="backend names (default: all for the device); see --list")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes (default: 1 4 8)")
    p.add_argument("--resolutions", nargs="+", type=int, help="square image sides in px (default: 224)")
    p.add_argument("--scenarios", nargs="+", help="model, e2e, e2e-dynamic (default: all three)")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="(default: auto: cuda if torch sees one)"
    )
    p.add_argument("--rounds", type=int, help="interleaved timed rounds per backend (default: 10)")
    p.add_argument("--reps", type=int, help="timed calls per backend per round (default: 1)")
    p.add_argument("--warmup", type=int, help="untimed calls per backend before timing (default: 2)")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend (default: library's)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and Markdown only")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render a bench.json into OUT")
    p.add_argument("--list", action="store_true", help="list the backends with what each is, and exit")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from nrp_deploy.bench.catalogue import CATALOGUE
    from nrp_deploy.bench.harness import QUICK, BenchConfig, run_benchmark, with_overrides
    from nrp_deploy.bench.report import console_table, read_result, write_partial, write_report

    if args.list:
        for name, entry in CATALOGUE.items():
            print(f"{name:24} {entry.precision:5} {'/'.join(entry.devices):9} {entry.description}")
        return 0
    if args.render:
        doc = read_result(args.render)
    else:
        config = with_overrides(
            QUICK if args.quick else BenchConfig(),
            models=tuple(args.models) if args.models else None,
            backends=tuple(args.backends) if args.backends else None,
            batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None,
            resolutions=tuple(args.resolutions) if args.resolutions else None,
            scenarios=tuple(args.scenarios) if args.scenarios else None,
            device=args.device,
            rounds=args.rounds,
            reps=args.reps,
            warmup=args.warmup,
            threads=args.threads,
        )
        doc = run_benchmark(config, on_result=lambda partial: write_partial(partial, args.output))
    print(console_table(doc))
    for path in write_report(doc, args.output, plots=not args.no_plots):
        print(f"wrote {path}", file=sys.stderr)
    return 0
