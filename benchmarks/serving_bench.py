"""Serving benchmark: `nrp serve` (HTTP and gRPC) against the in-process Purifier, side by side.

Run in the serving environment (nvidia-pytriton needs numpy<2) with ONNX purifiers exported in the main one:

    .venv/bin/nrp export onnx --model default -o /tmp/default.onnx
    .venv-serving/bin/python benchmarks/serving_bench.py --onnx default=/tmp/default.onnx [--threads 2]

For each model and concurrency (1, 8, 32 clients, each sending one 224x224 image per request, one request
after another), the three targets are timed in rounds whose order rotates: the in-process Purifier called
from that many threads, and the server over HTTP and over gRPC (one connection per client thread). Reported
per target: throughput (img/s over the round's wall time), p50 / p99 request latency over all rounds, and
the server's mean executed batch size (from its Prometheus counters). Writes serving_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from nrp_deploy.bench.machine import machine_info
from nrp_deploy.bench.stats import summarise
from nrp_deploy.runtime import load_purifier
from nrp_deploy.serving import PurifierClient
from nrp_deploy.serving.triton_server import free_ports

TARGETS = ("in-process", "http", "grpc")


def start_server(onnx: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, list[int]]:
    ports = free_ports(3)
    command = [
        sys.executable, "-m", "nrp_deploy", "serve", "--model", str(onnx), "--threads", str(args.threads),
        "--max-batch", "8", "--max-queue-delay-us", str(args.delay_us),
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = PurifierClient(f"http://127.0.0.1:{ports[0]}")
    try:
        client.wait_ready(timeout_s=300)
    except Exception:
        stop_server(server)
        raise
    client.close()
    return server, ports


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def batch_counters(client: PurifierClient) -> tuple[int, int]:
    """(inferences, executions) of the served model from Triton's statistics: their ratio is the mean
    executed batch size."""
    stats = client._client().get_inference_statistics(client.model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def run_round(call, concurrency: int, requests: int, image: np.ndarray) -> tuple[list[float], float]:
    """``concurrency`` threads, each sending ``requests`` one after another: (latencies ms, wall s)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def client(k: int) -> None:
        barrier.wait()
        for _ in range(requests):
            start = time.perf_counter()
            call(image)
            latencies[k].append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], time.perf_counter() - start


def bench_model(label: str, onnx: Path, args: argparse.Namespace, work: Path) -> dict:
    purifier = load_purifier(onnx, threads=args.threads)
    server, ports = start_server(onnx, args, work / f"serve-{label}.log")
    clients = {
        "http": PurifierClient(f"http://127.0.0.1:{ports[0]}"),
        "grpc": PurifierClient(f"grpc://127.0.0.1:{ports[1]}"),
    }
    calls = {"in-process": purifier, "http": clients["http"].purify, "grpc": clients["grpc"].purify}
    image = np.random.default_rng(0).integers(
        0, 256, size=(1, args.resolution, args.resolution, 3), dtype=np.uint8
    )
    expected = purifier(image)
    assert all(np.array_equal(c.purify(image), expected) for c in clients.values()), "server output differs"
    results = []
    try:
        for concurrency in args.concurrency:
            requests = max(1, -(-args.min_requests // concurrency))
            for target in TARGETS:  # warm-up: every thread's connection opened, the server's batcher warmed
                run_round(calls[target], concurrency, 1, image)
            samples = {t: [] for t in TARGETS}
            walls = {t: [] for t in TARGETS}
            batches = {t: [0, 0] for t in TARGETS}
            for r in range(args.rounds):
                for target in TARGETS[r % 3 :] + TARGETS[: r % 3]:
                    before = batch_counters(clients["http"])
                    latencies, wall = run_round(calls[target], concurrency, requests, image)
                    after = batch_counters(clients["http"])
                    samples[target] += latencies
                    walls[target].append(len(latencies) / wall)
                    batches[target] = [
                        b + (a - p) for b, a, p in zip(batches[target], after, before, strict=True)
                    ]
            for target in TARGETS:
                stats = summarise(samples[target])
                inferences, executions = batches[target]
                results.append({
                    "model": label, "concurrency": concurrency, "target": target, "requests": len(samples[target]),
                    "img_per_s": float(np.median(walls[target])), "p50_ms": stats.median_ms, "p99_ms": stats.p99_ms,
                    "mean_batch": inferences / executions if target != "in-process" and executions else None,
                })  # fmt: skip
                print(json.dumps(results[-1]), flush=True)
    finally:
        for c in clients.values():
            c.close()
        stop_server(server)
        purifier.close()
    return {"model": label, "onnx": str(onnx), "describe": purifier.describe(), "rows": results}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Serving: `nrp serve` (Triton, HTTP / gRPC) vs the in-process Purifier",
        "",
        f"Machine: {m['cpu']['model']} ({m['cpu']['usable_cpus']} usable CPUs, "
        f"{', '.join(m['cpu']['vector_extensions'])}), no GPU; load average "
        f"at start {', '.join(f'{x:.1f}' for x in m['load_average'])}; {m['time_utc']}. Settings: "
        f"{doc['settings']}.",
        "",
        "| model | clients | target | img/s | p50 ms | p99 ms | p50 over in-process | mean batch |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in doc["models"]:
        rows = model["rows"]
        base = {(r["concurrency"]): r for r in rows if r["target"] == "in-process"}
        for r in rows:
            over = r["p50_ms"] - base[r["concurrency"]]["p50_ms"]
            batch = f"{r['mean_batch']:.2f}" if r["mean_batch"] else "-"
            lines.append(
                f"| {r['model']} | {r['concurrency']} | {r['target']} | {r['img_per_s']:.2f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {'-' if r['target'] == 'in-process' else f'{over:+.1f} ms'} | {batch} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", nargs="+", required=True, metavar="LABEL=MODEL.onnx")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--min-requests", type=int, default=32, help="requests per round, at least one per client"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, in process and served")
    parser.add_argument(
        "--delay-us", type=int, default=2000, help="the server's dynamic-batching queue delay"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    doc = {
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("onnx", "out")},
    }
    doc["settings"]["out"] = str(args.out)
    with tempfile.TemporaryDirectory() as work:
        doc["models"] = [
            bench_model(label, Path(path), args, Path(work))
            for label, path in (x.split("=", 1) for x in args.onnx)
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_cpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "serving_cpu.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
