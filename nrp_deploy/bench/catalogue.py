"""The benchmark's backends: one entry per name, saying what it runs and how its runner is built.

Two families: ``EAGER`` (the torch variants, built by ``torch_configs``: dtype, ``channels_last``,
``torch.compile`` with or without CUDA graphs) and ``RUNTIME`` (the runtime's ``load_purifier`` with a
backend and its typed options, built by ``targets``; OpenVINO included, so what is timed is the runtime's
own object). Torch-free, so ``nrp bench --list`` needs no torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nrp_deploy.runtime.backends.options import BackendOptions, OpenVinoOptions, OrtOptions, TorchOptions


class Family(enum.Enum):
    EAGER = "eager torch"
    RUNTIME = "the runtime's load_purifier"


@dataclass(frozen=True)
class BenchBackend:
    """One benchmark backend. ``runtime_backend`` / ``options``: what ``load_purifier`` is given (RUNTIME);
    ``channels_last``, ``compiled``, ``cuda_graphs`` and ``tf32``: how the eager module is prepared and run
    (EAGER); FP32 variants run true FP32 unless ``tf32``."""

    family: Family
    precision: str
    devices: tuple[str, ...]
    description: str
    runtime_backend: str | None = None
    options: BackendOptions | None = None
    channels_last: bool = False
    compiled: bool = False
    cuda_graphs: bool = False
    tf32: bool = False

    @property
    def model_precision(self) -> str:
        """The precision of the model the runtime loads: a BF16 entry runs the FP32 model in BF16; ``auto``
        lets the runtime choose."""
        return "fp32" if self.precision == "bf16" else self.precision


_CPU_CUDA, _CUDA, _CPU = ("cpu", "cuda"), ("cuda",), ("cpu",)
_EAGER, _RUNTIME = Family.EAGER, Family.RUNTIME


def _ort(precision: str, devices: tuple[str, ...], what: str, **options: object) -> BenchBackend:
    return BenchBackend(_RUNTIME, precision, devices, what, "onnxruntime", OrtOptions(**options))


def _openvino(precision: str, what: str, **options: object) -> BenchBackend:
    return BenchBackend(_RUNTIME, precision, _CPU, what, "openvino", OpenVinoOptions(**options))


CATALOGUE: dict[str, BenchBackend] = {
    "torch-fp32": BenchBackend(_EAGER, "fp32", _CPU_CUDA, "eager PyTorch FP32, NCHW: the published baseline"),
    "torch-tf32": BenchBackend(
        _EAGER,
        "tf32",
        _CUDA,
        "eager PyTorch FP32 with TF32 convolutions and matmuls (torch's cuDNN default on Ampere and newer)",
        tf32=True,
    ),
    "torch-fp32-cl": BenchBackend(
        _EAGER, "fp32", _CPU_CUDA, "eager PyTorch FP32, channels_last", channels_last=True
    ),
    "torch-fp16-cl": BenchBackend(
        _EAGER, "fp16", _CUDA, "eager PyTorch FP16, channels_last", channels_last=True
    ),
    "torch-compile-fp32": BenchBackend(
        _EAGER, "fp32", _CPU_CUDA, "torch.compile (inductor) FP32", compiled=True
    ),
    "torch-compile-fp16-cl": BenchBackend(
        _EAGER,
        "fp16",
        _CUDA,
        "torch.compile (inductor) FP16, channels_last",
        channels_last=True,
        compiled=True,
    ),
    "torch-compile-graphs-fp16-cl": BenchBackend(
        _EAGER,
        "fp16",
        _CUDA,
        "torch.compile (inductor, mode reduce-overhead: CUDA graphs) FP16, channels_last",
        channels_last=True,
        compiled=True,
        cuda_graphs=True,
    ),
    "fused-torch-fp32": BenchBackend(
        _RUNTIME,
        "fp32",
        _CUDA,
        "the runtime's torch backend on CUDA, FP32, fused uint8/noise kernels",
        "torch",
        TorchOptions(),
    ),
    "fused-torch-fp16-cl": BenchBackend(
        _RUNTIME,
        "fp16",
        _CUDA,
        "the runtime's torch backend on CUDA, FP16 channels_last, fused uint8/noise kernels",
        "torch",
        TorchOptions(channels_last=True),
    ),
    "onnxruntime-cpu-fp32": _ort("fp32", _CPU, "ONNX Runtime, CPU execution provider, FP32 ONNX"),
    "onnxruntime-cpu-int8": _ort("int8", _CPU, "ONNX Runtime, CPU execution provider, INT8 Q/DQ ONNX"),
    "openvino-cpu-fp32": _openvino("fp32", "OpenVINO CPU plugin, FP32 ONNX (optional: pip install openvino)"),
    "openvino-cpu-bf16": _openvino(
        "bf16", "OpenVINO CPU plugin, FP32 ONNX run in BF16 (AVX512-BF16/AMX)", inference_precision="bf16"
    ),
    "openvino-cpu-int8": _openvino("int8", "OpenVINO CPU plugin, the INT8 Q/DQ ONNX of onnxruntime-cpu-int8"),
    "onnxruntime-cuda-fp32": _ort("fp32", _CUDA, "ONNX Runtime, CUDA execution provider, FP32 ONNX"),
    "onnxruntime-cuda-fp16": _ort("fp16", _CUDA, "ONNX Runtime, CUDA execution provider, FP16 ONNX"),
    "onnxruntime-trtep-fp16": _ort(
        "fp16", _CUDA, "ONNX Runtime, TensorRT execution provider, FP16 ONNX", execution_provider="tensorrt"
    ),
    "tensorrt-fp32": BenchBackend(_RUNTIME, "fp32", _CUDA, "native TensorRT engine, FP32", "tensorrt"),
    "tensorrt-fp16": BenchBackend(
        _RUNTIME, "fp16", _CUDA, "native TensorRT engine, FP16 (mixed-precision ONNX)", "tensorrt"
    ),
    "tensorrt-int8": BenchBackend(_RUNTIME, "int8", _CUDA, "native TensorRT engine, INT8 Q/DQ", "tensorrt"),
    "auto": BenchBackend(
        _RUNTIME,
        "auto",
        _CPU_CUDA,
        "load_purifier's defaults: backend and precision auto (on a CPU the fastest that passes its fidelity "
        "check, timed once and recorded; its precision column says what it picked)",
        "auto",
    ),
}
BASELINE = "torch-fp32"


def default_backends(device: str) -> list[str]:
    """Every catalogued backend that runs on ``device``, the baseline first."""
    return [name for name, entry in CATALOGUE.items() if device in entry.devices]


def is_eager(name: str) -> bool:
    """Whether ``name`` is one of the eager torch variants (the configurations a deployment must beat)."""
    return CATALOGUE[name].family is Family.EAGER
