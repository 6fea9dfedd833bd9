"""What every benchmark backend shares: the catalogue of backends, the model under test, the ``Runner``.

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

# name -> (precision, devices it runs on, what it is)
CATALOGUE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "torch-fp32": ("fp32", ("cpu", "cuda"), "eager PyTorch FP32, NCHW: the published baseline"),
    "torch-fp32-cl": ("fp32", ("cpu", "cuda"), "eager PyTorch FP32, channels_last"),
    "torch-fp16-cl": ("fp16", ("cuda",), "eager PyTorch FP16, channels_last"),
    "torch-compile-fp32": ("fp32", ("cpu", "cuda"), "torch.compile (inductor) FP32"),
    "torch-compile-fp16-cl": ("fp16", ("cuda",), "torch.compile (inductor) FP16, channels_last"),
    "torch-compile-graphs-fp16-cl": (
        "fp16",
        ("cuda",),
        "torch.compile (inductor, mode reduce-overhead: CUDA graphs) FP16, channels_last",
    ),
    "fused-torch-fp32": (
        "fp32",
        ("cuda",),
        "the runtime's torch backend on CUDA, FP32, fused uint8/noise kernels",
    ),
    "fused-torch-fp16-cl": (
        "fp16",
        ("cuda",),
        "the runtime's torch backend on CUDA, FP16 channels_last, fused uint8/noise kernels",
    ),
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
