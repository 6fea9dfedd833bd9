"""Build the benchmark's runners: the torch variants (``torch_configs``) and every runtime backend.

The non-torch backends come from the runtime's public ``load_purifier``, so the benchmark times exactly
what users run. A backend that cannot run here raises ``BackendUnavailableError`` with the reason, which
the report shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nrp_deploy.artifacts.metadata import read_metadata
from nrp_deploy.bench.catalogue import CATALOGUE, BenchBackend, Family
from nrp_deploy.bench.runner import BenchModel, Runner, TargetContext
from nrp_deploy.errors import BackendUnavailableError


def build_runner(name: str, model: BenchModel, ctx: TargetContext) -> Runner:
    """Prepare backend ``name`` for ``model``; ``BackendUnavailableError`` says why it cannot run here."""
    if name not in CATALOGUE:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(CATALOGUE)}")
    entry = CATALOGUE[name]
    if ctx.device not in entry.devices:
        raise BackendUnavailableError(f"{name} runs on {' or '.join(entry.devices)}, not on {ctx.device}")
    if entry.family is Family.EAGER:
        try:
            from nrp_deploy.bench.torch_configs import torch_runner
        except ImportError as exc:
            raise BackendUnavailableError(f"{name} needs torch (pip install torch): {exc}") from exc
        return torch_runner(name, model, ctx)
    return _runtime_runner(name, entry, model, ctx)


# --- runtime backends (ONNX Runtime, TensorRT, the runtime's torch backend) ----------------------------


def _runtime_runner(name: str, entry: BenchBackend, model: BenchModel, ctx: TargetContext) -> Runner:
    """A runner over the runtime's Purifier: ``infer`` for model only, the call itself end to end."""
    from nrp_deploy.runtime import DynamicDefense

    precision = entry.precision
    purifier, details = _open_purifier(name, entry, model, ctx)
    if precision == "auto":  # the runtime chose: report what it runs
        precision = "bf16" if purifier.backend_name.endswith("-bf16") else purifier.precision
        choice = purifier.auto_choice
        details["auto_choice"] = choice.summary() if choice else "no timed choice (preference order)"
    elif purifier.precision != entry.model_precision:
        purifier.close()
        raise BackendUnavailableError(
            f"{name}: the runtime gave a {purifier.precision} model, not {entry.model_precision}"
        )
    noise = DynamicDefense(seed=0)

    def purify(images: np.ndarray, dynamic: bool) -> np.ndarray:
        return purifier(images, dynamic=noise if dynamic else None)

    runner = Runner(
        name,
        precision,
        ctx.device,
        entry.description,
        put=np.ascontiguousarray,
        infer=purifier.infer,
        fetch=np.asarray,
        purify=purify,
        close=purifier.close,
    )
    runner.details = {"runtime": purifier.describe(), **details}
    if ctx.device == "cuda":
        _device_model_only(runner, purifier.backend)
    return runner


def _open_purifier(name: str, entry: BenchBackend, model: BenchModel, ctx: TargetContext) -> tuple[Any, dict]:
    """The runtime's Purifier for a benchmark backend, and what the INT8 artifact's sidecar says of it."""
    from nrp_deploy.artifacts.sources import identify
    from nrp_deploy.runtime import load_purifier
    from nrp_deploy.runtime.on_demand import onnx_for

    precision = entry.precision
    details: dict[str, Any] = {}
    if ctx.device == "cpu" and precision == "int8":
        # the runtime's artifact cache makes CPU INT8 with ONNX Runtime's static Q/DQ quantisation
        int8 = onnx_for(identify(model.checkpoint), "int8", int8_method="ort")
        details["int8_artifact"] = {"path": str(int8), "verdict": read_metadata(int8).verdict.line}
    device = "cuda:0" if ctx.device == "cuda" else "cpu"
    purifier = load_purifier(
        model.checkpoint,
        backend=entry.runtime_backend or "auto",
        precision=entry.model_precision,
        device=device,
        threads=ctx.threads,
        options=entry.options,
    )
    return purifier, details


def _device_model_only(runner: Runner, backend: Any) -> None:
    """On a GPU, model only means device buffers in and out: use the backend's ``infer_device`` when it has
    one (with torch's allocator for the buffers), and read device memory in use from the driver."""
    from nrp_deploy.bench.machine import device_memory_in_use

    runner.device_memory = device_memory_in_use
    if not hasattr(backend, "infer_device"):
        return
    try:
        import torch
    except ImportError:
        return
    dtype = getattr(torch, backend.input_spec.dtype)

    def put(x: np.ndarray) -> Any:
        return torch.from_numpy(x).to("cuda", dtype=dtype)

    def infer(x: Any) -> Any:
        out = torch.empty_like(x, dtype=getattr(torch, backend.output_spec.dtype))
        stream = torch.cuda.current_stream().cuda_stream
        backend.infer_device(x.data_ptr(), out.data_ptr(), tuple(x.shape), stream)
        return out

    runner.put, runner.infer, runner.fetch = put, infer, lambda y: y.float().cpu().numpy()
    runner.sync = torch.cuda.synchronize
