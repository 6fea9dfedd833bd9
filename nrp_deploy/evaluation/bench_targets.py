"""The backends a benchmark can time, each behind one small ``Runner`` interface.

A runner offers two timed paths: ``infer`` (model only: the input already where and how the engine wants
it, the output left there) and ``purify`` (end to end: uint8 NHWC host images in, uint8 NHWC host images
out, dynamic defence on or off). The torch variants are built here from the eager module; every other
backend comes from the runtime's public ``load_purifier``, so the benchmark times exactly what users run.
A backend that cannot run here raises ``BackendUnavailableError`` with the reason, which the report shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.export.metadata import read_metadata

# name -> (precision, devices it runs on, what it is)
CATALOGUE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "torch-fp32": ("fp32", ("cpu", "cuda"), "eager PyTorch FP32, NCHW: the published baseline"),
    "torch-fp32-cl": ("fp32", ("cpu", "cuda"), "eager PyTorch FP32, channels_last"),
    "torch-fp16-cl": ("fp16", ("cuda",), "eager PyTorch FP16, channels_last"),
    "torch-compile-fp32": ("fp32", ("cpu", "cuda"), "torch.compile (inductor) FP32"),
    "torch-compile-fp16-cl": ("fp16", ("cuda",), "torch.compile (inductor) FP16, channels_last"),
    "onnxruntime-cpu-fp32": ("fp32", ("cpu",), "ONNX Runtime, CPU execution provider, FP32 ONNX"),
    "onnxruntime-cpu-int8": ("int8", ("cpu",), "ONNX Runtime, CPU execution provider, INT8 Q/DQ ONNX"),
    "openvino-cpu-fp32": (
        "fp32",
        ("cpu",),
        "OpenVINO CPU plugin, FP32 ONNX (optional: pip install openvino)",
    ),
    "openvino-cpu-bf16": ("bf16", ("cpu",), "OpenVINO CPU plugin, FP32 ONNX run in BF16 (AVX512-BF16/AMX)"),
    "openvino-cpu-int8": (
        "int8",
        ("cpu",),
        "OpenVINO CPU plugin, the INT8 Q/DQ ONNX of onnxruntime-cpu-int8",
    ),
    "onnxruntime-cuda-fp32": ("fp32", ("cuda",), "ONNX Runtime, CUDA execution provider, FP32 ONNX"),
    "onnxruntime-cuda-fp16": ("fp16", ("cuda",), "ONNX Runtime, CUDA execution provider, FP16 ONNX"),
    "onnxruntime-trtep-fp16": ("fp16", ("cuda",), "ONNX Runtime, TensorRT execution provider, FP16 ONNX"),
    "tensorrt-fp32": ("fp32", ("cuda",), "native TensorRT engine, FP32"),
    "tensorrt-fp16": ("fp16", ("cuda",), "native TensorRT engine, FP16 (mixed-precision ONNX)"),
    "tensorrt-int8": ("int8", ("cuda",), "native TensorRT engine, INT8 Q/DQ"),
}
BASELINE = "torch-fp32"


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


def default_backends(device: str) -> list[str]:
    """Every catalogued backend that runs on ``device``, the baseline first."""
    return [name for name, (_, devices, _) in CATALOGUE.items() if device in devices]


def build_runner(name: str, model: BenchModel, ctx: TargetContext) -> Runner:
    """Prepare backend ``name`` for ``model``; ``BackendUnavailableError`` says why it cannot run here."""
    if name not in CATALOGUE:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(CATALOGUE)}")
    _, devices, _ = CATALOGUE[name]
    if ctx.device not in devices:
        raise BackendUnavailableError(f"{name} runs on {' or '.join(devices)}, not on {ctx.device}")
    if name.startswith("torch-"):
        try:
            from nrp_deploy.evaluation.bench_torch import torch_runner
        except ImportError as exc:
            raise BackendUnavailableError(f"{name} needs torch (pip install torch): {exc}") from exc
        return torch_runner(name, model, ctx)
    return _runtime_runner(name, model, ctx)


# --- runtime backends (ONNX Runtime, TensorRT) ----------------------------------------------------------

# benchmark name -> (runtime backend, options for load_purifier)
_RUNTIME: dict[str, tuple[str, dict[str, Any]]] = {
    "onnxruntime-cpu-fp32": ("onnxruntime", {}),
    "onnxruntime-cpu-int8": ("onnxruntime", {}),
    "onnxruntime-cuda-fp32": ("onnxruntime", {}),
    "onnxruntime-cuda-fp16": ("onnxruntime", {}),
    "onnxruntime-trtep-fp16": ("onnxruntime", {"execution_provider": "tensorrt"}),
    "tensorrt-fp32": ("tensorrt", {}),
    "tensorrt-fp16": ("tensorrt", {}),
    "tensorrt-int8": ("tensorrt", {}),
}


def _runtime_runner(name: str, model: BenchModel, ctx: TargetContext) -> Runner:
    """A runner over the runtime's Purifier: ``infer`` for model only, the call itself end to end."""
    from nrp_deploy.runtime import DynamicDefense

    precision, _, description = CATALOGUE[name]
    purifier, details = _open_purifier(name, precision, model, ctx)
    if purifier.precision != precision:
        purifier.close()
        raise BackendUnavailableError(
            f"{name}: the runtime gave a {purifier.precision} model, not {precision}"
        )
    noise = DynamicDefense(seed=0)

    def purify(images: np.ndarray, dynamic: bool) -> np.ndarray:
        return purifier(images, dynamic=noise if dynamic else None)

    runner = Runner(
        name,
        precision,
        ctx.device,
        description,
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


def _open_purifier(name: str, precision: str, model: BenchModel, ctx: TargetContext) -> tuple[Any, dict]:
    """The runtime's Purifier for a benchmark backend, and what the INT8 artifact's sidecar says of it."""
    from nrp_deploy.runtime import Purifier, load_purifier
    from nrp_deploy.runtime.artifacts import identify, onnx_for

    details: dict[str, Any] = {}
    if ctx.device == "cpu" and precision == "int8":
        # the runtime's artifact cache makes CPU INT8 with ONNX Runtime's static Q/DQ quantisation
        int8 = onnx_for(identify(model.checkpoint), "int8", int8_method="ort")
        details["int8_artifact"] = {"path": str(int8), "verdict": read_metadata(int8).verdict.line}
    if name.startswith("openvino-"):  # not a runtime backend: wrapped here, driven by the same Purifier
        from nrp_deploy.evaluation.bench_openvino import openvino_backend

        path = (
            onnx_for(identify(model.checkpoint), "fp32")
            if precision != "int8"
            else Path(details["int8_artifact"]["path"])
        )
        return Purifier(openvino_backend(path, precision, ctx.threads, model.spec)), details
    backend, options = _RUNTIME[name]
    device = "cuda:0" if ctx.device == "cuda" else "cpu"
    purifier = load_purifier(
        model.checkpoint,
        backend=backend,
        precision=precision,
        device=device,
        threads=ctx.threads,
        options=options or None,
    )
    return purifier, details


def _device_model_only(runner: Runner, backend: Any) -> None:
    """On a GPU, model only means device buffers in and out: use the backend's ``infer_device`` when it has
    one (with torch's allocator for the buffers), and read device memory in use from the driver."""
    from nrp_deploy.evaluation.bench_machine import device_memory_in_use

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
