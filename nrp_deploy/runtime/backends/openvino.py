"""The OpenVINO backend: Intel's CPU runtime on the same ONNX artifacts as ONNX Runtime.

OpenVINO's CPU plugin runs the FP32 export and the INT8 Q/DQ model of ONNX Runtime's static quantisation
(which it executes with VNNI / AMX integer kernels where the CPU has them); with
``OpenVinoOptions(inference_precision="bf16")`` it runs the FP32 model's arithmetic in BF16 on CPUs with
AVX512-BF16 or AMX. The artifacts are the ones ONNX Runtime's CPU path uses (``runtime.on_demand``, INT8
by the ``ort`` quantiser), so their fidelity verdicts apply, and a FAILed one is refused the same way. BF16
arithmetic has a verdict of its own, measured on this machine at first use and cached
(``runtime.bf16_verdict``); a FAILed one is refused like a FAILed artifact.
One compiled model serves the Purifier; its calls are serialised (one infer request at a time). OpenVINO is
imported only when this backend is checked or opened.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nrp_deploy.artifacts.metadata import check_verdict, read_metadata, sidecar_path
from nrp_deploy.artifacts.sources import ModelSource, artifact_spec
from nrp_deploy.artifacts.specs import ShapeProfile, TensorSpec
from nrp_deploy.errors import BackendUnavailableError, InputError, ModelError
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime.backends.base import BaseBackend, engine_unavailable, import_engine
from nrp_deploy.runtime.backends.options import BackendOptions, OpenVinoOptions
from nrp_deploy.runtime.bf16_verdict import bf16_verdict
from nrp_deploy.runtime.on_demand import onnx_for

INSTALL_HINT = "pip install 'nrp-deploy[openvino]' (OpenVINO for Intel and AMD x86-64 CPUs)"
#: OpenVINO's inference-precision hint for each precision the models run at (INT8 comes from the Q/DQ nodes).
_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
#: The CPU capability (OPTIMIZATION_CAPABILITIES) each kind of arithmetic needs.
_CAPABILITY = {"int8": "INT8", "bf16": "BF16"}


def _openvino() -> Any:
    return import_engine("openvino", "OpenVINO", INSTALL_HINT)


def unavailable_reason() -> str | None:
    """None when OpenVINO imports, else why not and what to install."""
    return engine_unavailable("openvino", "OpenVINO", INSTALL_HINT)


def open_backend(
    source: ModelSource,
    precision: str | None,
    device: str | None,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> OpenVinoBackend:
    """An inactive OpenVINO backend for ``source`` (a checkpoint's ONNX comes from the cache or an export).

    ``precision=None`` means the artifact's own (fp32 for a checkpoint); fp16 artifacts are GPU artifacts and
    are refused. ``device`` must be None or ``cpu``. BF16 arithmetic is refused when its verdict here FAILs
    (unless ``source.allow_failed``).
    """
    options = OpenVinoOptions.coerce(options)
    if source.kind == "engine":
        raise BackendUnavailableError(f"OpenVINO cannot run the TensorRT engine {source.path}")
    if device not in (None, "cpu"):
        raise BackendUnavailableError(f"the openvino backend runs on the cpu, not {device!r}")
    precision = precision or source.precision or "fp32"
    if precision not in ("fp32", "int8"):
        raise BackendUnavailableError(f"the openvino backend runs fp32 and int8 models, not {precision}")
    if options.inference_precision == "bf16" and precision != "fp32":
        raise InputError(f"inference_precision='bf16' runs an fp32 model in BF16; this one is {precision}")
    path = onnx_for(source, precision, int8_method="ort")
    spec = source.spec or artifact_spec(path)
    if options.inference_precision == "bf16":
        _check_bf16(path, spec, options, source.allow_failed)
    return OpenVinoBackend(path, precision, spec, options)


def _check_bf16(path: Path, spec: ModelSpec | None, options: OpenVinoOptions, allow_failed: bool) -> None:
    """Refuse BF16 arithmetic on ``path`` where its verdict on this machine FAILs (see ``bf16_verdict``)."""
    sha256 = read_metadata(path).artifact_sha256 if sidecar_path(path).is_file() else sha256_file(path)

    def backend(arithmetic: str) -> OpenVinoBackend:
        precision = "bf16" if arithmetic == "bf16" else None
        return OpenVinoBackend(
            path, "fp32", spec, dataclasses.replace(options, inference_precision=precision)
        )

    verdict = bf16_verdict(path, sha256, backend)
    check_verdict(
        Path(f"{path} with BF16 arithmetic"),
        verdict,
        allow_failed,
        remedy="Run it with FP32 arithmetic (precision fp32) or at INT8",
    )


class OpenVinoBackend(BaseBackend):
    """One OpenVINO compiled model for one ONNX file on the CPU; see the module docstring."""

    device = "cpu"
    thread_safe = False  # one infer request; the Purifier serialises calls

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        precision: str = "fp32",
        spec: ModelSpec | None = None,
        options: OpenVinoOptions | None = None,
    ) -> None:
        super().__init__()
        options = options or OpenVinoOptions()
        self.path = Path(onnx_path)
        self.precision = precision
        self.spec = spec
        self.arithmetic = options.inference_precision or precision
        self.threads = options.threads or len(os.sched_getaffinity(0))
        self.name = "openvino-cpu" + ("-bf16" if self.arithmetic == "bf16" else "")
        self._model: Any = None
        self._input: TensorSpec | None = None
        self._output: TensorSpec | None = None

    def activate_impl(self) -> None:
        ov = _openvino()
        if not self.path.is_file():
            raise InputError(f"ONNX model {self.path} does not exist")
        core = ov.Core()
        needed = _CAPABILITY.get(self.arithmetic)
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if needed and needed not in capabilities:
            raise BackendUnavailableError(
                f"this CPU has no {needed} path in OpenVINO (capabilities: {', '.join(capabilities)})"
            )
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(self.threads),
            "INFERENCE_PRECISION_HINT": _HINT[self.arithmetic],
        }
        try:
            model = core.compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses with C++ traces
            raise BackendUnavailableError(f"OpenVINO cannot load {self.path}: {_first_line(exc)}") from exc
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ModelError(
                f"{self.path}: a purifier has one input and one output, got {len(model.inputs)} and "
                f"{len(model.outputs)}"
            )
        self._model = model
        self._input = TensorSpec(model.input(0).get_any_name(), "float32", (-1, 3, -1, -1))
        self._output = TensorSpec(model.output(0).get_any_name(), "float32", (-1, 3, -1, -1))

    def deactivate_impl(self) -> None:
        self._model = None

    @property
    def input_spec(self) -> TensorSpec:
        self.check_active("its tensor specs are known after activate()")
        assert self._input is not None
        return self._input

    @property
    def output_spec(self) -> TensorSpec:
        self.check_active("its tensor specs are known after activate()")
        assert self._output is not None
        return self._output

    @property
    def profile(self) -> ShapeProfile | None:
        return None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            y = self._model(np.ascontiguousarray(x, dtype=np.float32))[0]
        except Exception as exc:  # OpenVINO's own error types
            raise ModelError(
                f"OpenVINO failed to run {self.path} on an input of shape {tuple(x.shape)}: {_first_line(exc)}"
            ) from exc
        return np.asarray(y, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
