"""The torch variants of the benchmark: eager FP32 (the baseline), TF32, channels_last, FP16, torch.compile.

All share the baseline's pre/post-processing (``EagerPurifier``); only the module's dtype, memory layout
and compilation change, so a speed-up here is the model's, not a different host path's.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from nrp_deploy.bench.catalogue import BASELINE, CATALOGUE
from nrp_deploy.bench.runner import BenchModel, Runner, TargetContext
from nrp_deploy.errors import BackendUnavailableError, ModelNotFoundError
from nrp_deploy.models import ModelSpec, load_model
from nrp_deploy.models.eager import EagerPurifier
from nrp_deploy.models.registry import load_manifest
from nrp_deploy.models.tf32 import tf32_allowed


class AsFloat32(torch.nn.Module):
    """A module of another dtype / layout that takes and returns float32 NCHW, as the baseline's does."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype, memory_format: torch.memory_format):
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.memory_format = memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype).contiguous(memory_format=self.memory_format)).float()


def torch_runner(name: str, model: BenchModel, ctx: TargetContext) -> Runner:
    """Build the eager torch variant ``name`` (an ``EAGER`` entry of ``CATALOGUE``) on ``ctx.device``."""
    entry = CATALOGUE[name]
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"{name}: torch {torch.__version__} sees no CUDA device")
    if entry.compiled and ctx.device == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise BackendUnavailableError(f"{name}: torch.compile on CPU needs a C++ compiler (none found)")
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    precision, description = entry.precision, entry.description
    dtype = torch.float16 if precision == "fp16" else torch.float32  # tf32: FP32 tensors, TF32 math
    memory_format = torch.channels_last if entry.channels_last else torch.contiguous_format
    device = torch.device(ctx.device)

    module = load_model(model.checkpoint, device=device).module.to(dtype=dtype, memory_format=memory_format)
    if entry.compiled:
        module = torch.compile(module, mode="reduce-overhead" if entry.cuda_graphs else None)
    e2e = EagerPurifier(module if name == BASELINE else AsFloat32(module, dtype, memory_format), device)

    def put(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(device=device, dtype=dtype).contiguous(memory_format=memory_format)

    @torch.no_grad()
    def infer(x: torch.Tensor) -> torch.Tensor:
        with tf32_allowed(entry.tf32):
            return module(x)

    def fetch(y: torch.Tensor) -> np.ndarray:
        return y.float().cpu().numpy()

    def purify(images: np.ndarray, dynamic: bool) -> np.ndarray:
        e2e.dynamic = dynamic
        with tf32_allowed(entry.tf32):
            return e2e(images)

    runner = Runner(name, precision, ctx.device, description, put, infer, fetch, purify)
    runner.details = {"threads": torch.get_num_threads()}
    if ctx.device == "cuda":
        runner.sync = torch.cuda.synchronize
        runner.infer_timer = _cuda_event_ms
        runner.device_memory = torch.cuda.max_memory_allocated
        runner.reset_device_memory = torch.cuda.reset_peak_memory_stats
    return runner


def _cuda_event_ms(fn: Any) -> float:
    """GPU time of ``fn``'s work on the current stream, between two recorded CUDA events."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def bench_model(source: str, work_dir: Path, seed: int) -> BenchModel:
    """The model to benchmark: its own weights, or seeded random ones where a registry file is absent.

    Latency does not depend on weight values, so a registry model whose published weights are not on
    disk is still measured, on its recorded architecture, and the result says so.
    """
    try:
        loaded = load_model(source)
    except ModelNotFoundError:
        entry = load_manifest().get(source)
        if entry is None:
            raise
        spec = ModelSpec(entry.architecture, entry.config)
        torch.manual_seed(seed)
        module = spec.build()
        # safetensors bytes depend only on the tensors (torch.save adds a random id), so the file's sha256,
        # which keys the runtime's artifact cache, is the same on every run and the exports are reused
        path = work_dir / f"{source}-random-seed{seed}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(module.state_dict(), str(path))
        weights = f"seeded random weights (seed {seed}): {entry.file} is not on disk"
        return BenchModel(source, spec, path, weights, random_weights=True)
    weights = f"{loaded.path.name} (sha256 {loaded.sha256[:12]})"
    return BenchModel(loaded.name, loaded.spec, loaded.path, weights, random_weights=False)


def matmul_flops(threads: int | None, n: int = 1024, repeats: int = 25) -> float:
    """Best FP32 FLOP/s of an n x n torch matmul on ``threads`` threads: an achievable CPU peak.

    The best of many short runs, so that on a shared machine one quiet moment is enough; measured with the
    backends' thread count because a core boosts higher when fewer are busy.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.rand(n, n, generator=generator)
        b = torch.rand(n, n, generator=generator)
        torch.mm(a, b)  # warm-up: thread pool start, page faults
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / best
