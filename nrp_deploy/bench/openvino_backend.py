"""OpenVINO on the CPU as an optional benchmark backend (``pip install openvino``).

OpenVINO's CPU plugin runs the same ONNX files as ONNX Runtime: the FP32 export, and the INT8 Q/DQ model
from ONNX Runtime's static quantisation, which it executes with VNNI integer kernels; on CPUs with
AVX512-BF16 it can also run the FP32 model in BF16. It is wrapped in the runtime's backend protocol and
driven through the runtime's ``Purifier``, so end to end it shares the same validation, pre/post-processing
and dynamic defence as every other backend; only the engine differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.errors import BackendUnavailableError
from nrp_deploy.models.spec import ModelSpec

# OpenVINO's name for each benchmark precision (the INT8 one comes from the model's Q/DQ nodes)
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class OpenVinoBackend:
    """One OpenVINO compiled model for one ONNX file, on the CPU (runtime ``Backend`` protocol)."""

    device = "cpu"
    thread_safe = False  # one infer request; the Purifier serialises calls

    def __init__(self, path: Path, precision: str, threads: int | None, spec: ModelSpec | None) -> None:
        self.path = Path(path)
        self.precision = precision
        self.spec = spec
        self.name = f"openvino-cpu-{precision}"
        self.threads = threads or len(os.sched_getaffinity(0))
        self._model: Any = None

    def activate(self) -> None:
        import openvino

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[self.precision],
        }
        self._model = openvino.Core().compile_model(str(self.path), "CPU", config)

    def deactivate(self) -> None:
        self._model = None

    @property
    def input_spec(self) -> TensorSpec:
        return TensorSpec(self._model.input(0).get_any_name(), "float32", (-1, 3, -1, -1))

    @property
    def output_spec(self) -> TensorSpec:
        return TensorSpec(self._model.output(0).get_any_name(), "float32", (-1, 3, -1, -1))

    @property
    def profile(self) -> ShapeProfile | None:
        return None

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(np.ascontiguousarray(x, dtype=np.float32))[0], dtype=np.float32)


def openvino_backend(
    path: Path, precision: str, threads: int | None, spec: ModelSpec | None
) -> OpenVinoBackend:
    """An inactive OpenVINO backend, or ``BackendUnavailableError`` when OpenVINO or the ISA is missing."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"openvino-cpu-{precision}: pip install openvino ({exc})") from exc
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    needed = {"bf16": "BF16", "int8": "INT8"}.get(precision)
    if needed and needed not in capabilities:
        raise BackendUnavailableError(
            f"openvino-cpu-{precision}: this CPU has no {needed} path in OpenVINO (capabilities: "
            f"{', '.join(capabilities)})"
        )
    return OpenVinoBackend(path, precision, threads, spec)
