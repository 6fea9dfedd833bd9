"""``nrp bench``: latency, throughput, memory and fidelity of every backend against the eager baseline.

For each model, resolution, batch size and scenario (``model``: the network alone; ``e2e``: uint8 host
images in and out; ``e2e-dynamic``: the same with the dynamic defence) the backends are warmed up and then
timed in interleaved rounds (``stats.interleaved_order``), so the speed-up over the baseline is
measured side by side in the same minutes. Each result carries the machine, the fidelity against the eager
FP32 output on the same images, and the roofline context (achieved FLOP/s over the device's peak).
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.metadata import psnr
from nrp_deploy.assets import examples_dir
from nrp_deploy.bench import stats as bench_stats
from nrp_deploy.bench.catalogue import BASELINE, CATALOGUE, default_backends, is_eager
from nrp_deploy.bench.machine import HostMemory, machine_info
from nrp_deploy.bench.peaks import Peak, cpu_peak, gpu_peak
from nrp_deploy.bench.runner import BenchModel, Runner, TargetContext
from nrp_deploy.bench.targets import build_runner
from nrp_deploy.errors import BackendUnavailableError, InputError, NRPDeployError

SCHEMA = "nrp-bench/1"
SCENARIOS = ("model", "e2e", "e2e-dynamic")
EXAMPLES = examples_dir()


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``backends=None`` means every backend catalogued for the device.

    ``warmup`` counts the untimed calls per backend and case before the timed rounds; the first of them
    is timed on its own (``first_call_ms``: lazy initialisation, compilation) and the second gives the
    output that fidelity is judged on, so at least those two always run.
    """

    models: tuple[str, ...] = ("NRP_resG", "NRP", "default")
    backends: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    resolutions: tuple[int, ...] = (224,)
    scenarios: tuple[str, ...] = SCENARIOS
    device: str = "auto"
    warmup: int = 2
    rounds: int = 10
    reps: int = 1
    threads: int | None = None
    seed: int = 0
    measure_peak: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "resolutions"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise InputError(f"{name} must be positive integers, got {values}")
        for name in ("rounds", "reps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise InputError(f"scenarios must be among {', '.join(SCENARIOS)}, got {list(self.scenarios)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.models:
            raise InputError("no model to benchmark")
        unknown = set(self.backends or ()) - set(CATALOGUE)
        if unknown:
            raise InputError(f"unknown backend(s) {sorted(unknown)}; known: {', '.join(CATALOGUE)}")


#: ``nrp bench --quick``: the light model at 224 px, batch 1 and 2, model only and end to end with the
#: dynamic defence, 4 rounds: about five minutes for every CPU backend on 2 idle cores.
QUICK = BenchConfig(
    models=("NRP_resG",),
    batch_sizes=(1, 2),
    resolutions=(224,),
    scenarios=("model", "e2e-dynamic"),
    warmup=2,
    rounds=4,
)


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` where torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def bench_images(resolution: int, batch: int, seed: int, folder: Path = EXAMPLES) -> np.ndarray:
    """uint8 NHWC batch: the example photos resized to the resolution (seeded noise images without them).

    Natural photos make the fidelity figures meaningful; their content does not change the latency.
    """
    from PIL import Image

    from nrp_deploy.images import collect_images, read_image

    photos = [read_image(t.source) for t in collect_images([folder])] if folder.is_dir() else []
    rng = np.random.default_rng(seed)
    out = np.empty((batch, resolution, resolution, 3), dtype=np.uint8)
    for i in range(batch):
        if photos:
            image = Image.fromarray(photos[i % len(photos)]).resize((resolution, resolution), Image.BICUBIC)
            out[i] = np.asarray(image)
        else:
            out[i] = rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
    return out


@dataclass
class _Slot:
    """One backend's state inside one case: its samples by round, memory peaks, fidelity."""

    runner: Runner
    rounds: list[list[float]] = field(default_factory=list)
    first_call_ms: float = math.nan
    host_peak: int = 0
    host_delta: int = 0
    device_peak: int | None = None
    output: np.ndarray | None = None
    error: str | None = None


def _case_call(runner: Runner, scenario: str, images: np.ndarray, x: Any) -> Callable[[], float]:
    if scenario == "model":
        return lambda: runner.time_infer(x)
    return lambda: runner.time_purify(images, scenario == "e2e-dynamic")


def _case_output(runner: Runner, scenario: str, images: np.ndarray, x: Any) -> np.ndarray | None:
    """The output fidelity is judged on; None for the dynamic scenario (each backend draws its own noise)."""
    if scenario == "model":
        return np.clip(runner.fetch(runner.infer(x)), 0.0, 1.0)
    if scenario == "e2e":
        return runner.purify(images, False)
    return None


def _fidelity(reference: np.ndarray | None, output: np.ndarray | None, scenario: str) -> dict[str, Any]:
    if scenario == "e2e-dynamic":
        return {
            "psnr_db": None,
            "max_abs_err": None,
            "note": "not compared: each backend draws its own noise",
        }
    if reference is None or output is None:
        return {"psnr_db": None, "max_abs_err": None, "note": "no baseline output to compare with"}
    data_range = 255.0 if scenario == "e2e" else 1.0
    value = psnr(reference, output, data_range)
    max_err = float(np.max(np.abs(reference.astype(np.float64) - output.astype(np.float64))))
    unit = "uint8 levels" if scenario == "e2e" else "on [0, 1]"
    return {
        "psnr_db": None if math.isinf(value) else round(value, 2),
        "identical": math.isinf(value),
        "max_abs_err": max_err,
        "note": f"vs {BASELINE} on the same images, clamped output, max error {unit}",
    }


class _Progress:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        if self.stream is not None:
            print(message, file=self.stream, flush=True)


def _run_case(
    slots: dict[str, _Slot], scenario: str, images: np.ndarray, config: BenchConfig, memory: HostMemory
) -> None:
    """Warm up every backend, then time them in interleaved rounds (see module docstring)."""
    x_host = (images.transpose(0, 3, 1, 2).astype(np.float32)) / np.float32(255.0)
    inputs: dict[str, Any] = {}
    for name, slot in slots.items():
        try:
            inputs[name] = slot.runner.put(np.ascontiguousarray(x_host))
            call = _case_call(slot.runner, scenario, images, inputs[name])
            slot.first_call_ms = call()
            slot.output = _case_output(slot.runner, scenario, images, inputs[name])
            for _ in range(config.warmup - 2):  # the two calls above are warm-up calls too
                call()
        except Exception as exc:  # a backend failing at one shape must not end the whole benchmark
            slot.error = f"{type(exc).__name__}: {exc}"
    live = [name for name, slot in slots.items() if slot.error is None]
    for order in bench_stats.interleaved_order(live, config.rounds):
        for name in order:
            slot = slots[name]
            if slot.error is not None:
                continue
            call = _case_call(slot.runner, scenario, images, inputs[name])
            before = memory.current_bytes()
            memory.reset()
            if slot.runner.reset_device_memory:
                slot.runner.reset_device_memory()
            try:
                slot.rounds.append([call() for _ in range(config.reps)])
            except Exception as exc:
                slot.error = f"{type(exc).__name__}: {exc}"
                continue
            peak = memory.peak_bytes()
            slot.host_peak = max(slot.host_peak, peak)
            slot.host_delta = max(slot.host_delta, peak - before)
            if slot.runner.device_memory:
                slot.device_peak = max(slot.device_peak or 0, slot.runner.device_memory() or 0)


def _case_results(
    slots: dict[str, _Slot], scenario: str, batch: int, flops_per_image: float, peak: Peak | None
) -> list[dict[str, Any]]:
    baseline = slots.get(BASELINE)
    base_ok = baseline is not None and baseline.error is None and baseline.rounds
    timed = {name: slot for name, slot in slots.items() if slot.error is None and slot.rounds}
    torch_variants = [name for name in timed if is_eager(name)]
    # the strongest torch configuration here (FP16, channels_last, compile): what a deployment must beat
    best_torch = min(torch_variants, key=lambda n: np.median(timed[n].rounds), default=None)
    results = []
    for name, slot in slots.items():
        entry: dict[str, Any] = {"backend": name, "precision": slot.runner.precision}
        if slot.error is not None or not slot.rounds:
            entry.update(status="failed", reason=slot.error or "no timed rounds")
            results.append(entry)
            continue
        stats = bench_stats.summarise([s for rnd in slot.rounds for s in rnd])
        achieved = flops_per_image * batch / (stats.median_ms / 1000.0)
        speedup = bench_stats.paired_speedup(baseline.rounds, slot.rounds).to_dict() if base_ok else None
        entry.update(
            status="ok",
            latency_ms=stats.to_dict(),
            throughput_ips=stats.throughput(batch),
            speedup_vs_baseline=speedup,
            speedup_vs_best_torch=(
                {
                    "best_torch": best_torch,
                    **bench_stats.paired_speedup(timed[best_torch].rounds, slot.rounds).to_dict(),
                }
                if best_torch and not is_eager(name)
                else None
            ),
            fidelity=_fidelity(baseline.output if base_ok else None, slot.output, scenario),
            achieved_tflops=achieved / 1e12,
            **(
                peak.ceiling(slot.runner.precision, achieved).to_result() if peak else {"peak_fraction": None}
            ),
            first_call_ms=slot.first_call_ms,
            host_peak_rss_mib=slot.host_peak / 2**20,
            host_peak_increase_mib=slot.host_delta / 2**20,
            device_peak_mib=None if slot.device_peak is None else slot.device_peak / 2**20,
            samples_ms=slot.rounds,
        )
        results.append(entry)
    return results


def _device_peak(device: str, info: dict[str, Any], config: BenchConfig) -> Peak | None:
    if device == "cuda":
        gpu = info.get("gpu") or {}
        return gpu_peak(gpu.get("name", "")) if gpu else None
    if not config.measure_peak:
        return cpu_peak(info["cpu"], None, config.threads)
    from nrp_deploy.bench.torch_configs import matmul_flops

    return cpu_peak(info["cpu"], matmul_flops(config.threads), config.threads)


def _prepare_models(
    config: BenchConfig, work_dir: Path, progress: _Progress
) -> tuple[list[BenchModel], list]:
    try:
        from nrp_deploy.bench.torch_configs import bench_model
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the benchmark's baseline is eager PyTorch: install torch ({exc})"
        ) from exc

    models, skipped = [], []
    for source in config.models:
        try:
            models.append(bench_model(source, work_dir, config.seed))
            progress(f"model {source}: {models[-1].spec.describe()}, {models[-1].weights}")
        except NRPDeployError as exc:  # reported, and the other models still run
            skipped.append({"model": source, "reason": f"{type(exc).__name__}: {exc}"})
            progress(f"model {source}: skipped ({exc})")
    return models, skipped


def run_benchmark(
    config: BenchConfig,
    progress: Any = sys.stderr,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark described by ``config`` and return the result document (see ``SCHEMA``).

    The ONNX and engine artifacts backends build live in the runtime's artifact cache
    (``$NRP_DEPLOY_CACHE``), keyed by checkpoint content, so later runs reuse them. ``on_result`` is
    called with the document so far each time it grows (a model's backends set up, a case timed), so a run
    stopped part way (a time limit) can still leave what it measured.
    """
    say = _Progress(progress)
    device = resolve_device(config.device)
    backends = list(config.backends) if config.backends is not None else default_backends(device)
    if BASELINE not in backends:
        backends.insert(0, BASELINE)  # every speed-up is relative to it, so it always runs
    info = machine_info()
    say(
        f"machine: {info['cpu']['model']} ({info['cpu']['isa']}), {info['cpu']['usable_cpus']} cpus, gpu {info['gpu']}"
    )
    peak = _device_peak(device, info, config)
    memory = HostMemory()
    with tempfile.TemporaryDirectory(prefix="nrp-bench-") as tmp:
        models, skipped_models = _prepare_models(config, Path(tmp), say)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "machine": info,
            "device": device,
            "peak": peak.to_dict() if peak else None,
            "config": {**asdict(config), "backends": backends},
            "host_memory_method": memory.method,
            "models": [],
            "skipped_models": skipped_models,
            "cases": [],
        }
        for model in models:
            _bench_one_model(model, backends, device, config, peak, memory, doc, say, on_result or _ignore)
    doc["machine"]["load_average_end"] = machine_info()["load_average"]
    return doc


def _bench_one_model(
    model: BenchModel,
    backends: Sequence[str],
    device: str,
    config: BenchConfig,
    peak: Peak | None,
    memory: HostMemory,
    doc: dict[str, Any],
    say: _Progress,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Set up every backend for ``model`` (its entry in ``doc["models"]`` says which could not run and
    why), then time the cases into ``doc["cases"]``."""
    ctx = TargetContext(device, config.threads)
    statuses, runners = [], {}
    for name in backends:
        status = {"backend": name}
        try:
            runners[name] = build_runner(name, model, ctx)
            status.update(status="ok", description=runners[name].description, details=runners[name].details)
        except BackendUnavailableError as exc:
            status.update(status="skipped", reason=str(exc))
        except Exception as exc:  # a broken backend is reported, the others still run
            status.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        say(
            f"  {model.name} / {name}: {status['status']}{': ' + status.get('reason', '') if 'reason' in status else ''}"
        )
        statuses.append(status)
    macs = model.spec.macs_per_pixel
    doc["models"].append(
        {
            "name": model.name,
            "spec": model.spec.to_dict(),
            "describe": model.spec.describe(),
            "weights": model.weights,
            "random_weights": model.random_weights,
            "macs_per_pixel": macs,
            "backends": statuses,
        }
    )
    on_result(doc)
    try:
        for resolution in config.resolutions:
            flops_per_image = 2.0 * macs * resolution * resolution
            for batch in config.batch_sizes:
                images = bench_images(resolution, batch, config.seed)
                for scenario in config.scenarios:
                    slots = {name: _Slot(runner) for name, runner in runners.items()}
                    _run_case(slots, scenario, images, config, memory)
                    results = _case_results(slots, scenario, batch, flops_per_image, peak)
                    doc["cases"].append(
                        {
                            "model": model.name,
                            "resolution": resolution,
                            "batch": batch,
                            "scenario": scenario,
                            "flops_per_image": flops_per_image,
                            "results": results,
                        }
                    )
                    say(_case_line(doc["cases"][-1]))
                    on_result(doc)
    finally:
        for runner in runners.values():
            runner.close()


def _ignore(doc: dict[str, Any]) -> None:
    """The default ``on_result``: nothing to keep."""


def _case_line(case: dict[str, Any]) -> str:
    parts = []
    for r in case["results"]:
        if r["status"] == "ok":
            speed = r["speedup_vs_baseline"]
            parts.append(
                f"{r['backend']} {r['latency_ms']['median_ms']:.1f} ms"
                + (f" x{speed['paired_median']:.2f}" if speed else "")
            )
        else:
            parts.append(f"{r['backend']} failed")
    head = f"  {case['model']} {case['resolution']}px b{case['batch']} {case['scenario']}:"
    return head + " " + "; ".join(parts)


def with_overrides(base: BenchConfig, **overrides: Any) -> BenchConfig:
    """``base`` with the given fields replaced (None values leave the field as it is)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
