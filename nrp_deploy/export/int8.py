"""INT8 ONNX with explicit Q/DQ, calibrated on images, checked against FP32 torch.

Two producers, for two runtimes (``method``):

- ``"modelopt"`` (default; for TensorRT): ``modelopt.onnx.quantization.quantize``. Q/DQ pairs go on the
  inputs of every convolution TensorRT can run in INT8 (activations per tensor, weights per channel,
  entropy calibration by default), which is where TensorRT 11 reads INT8 precision from, now that the INT8
  builder flag and calibrators are gone. The rest of the graph is FP16 (``high_precision="fp16"``) or FP32.
  ModelOpt leaves out convolutions with fewer than 16 input and output channels (unless a multiple of 8),
  as TensorRT has no fast INT8 kernel for them; the published purifiers have none.
- ``"ort"`` (for ONNX Runtime on CPUs): ONNX Runtime's static quantisation in QDQ format, uint8 activations
  and per-channel int8 weights, every operator it can quantise given Q/DQ (its default), which its CPU
  provider fuses into integer kernels. MinMax calibration by default, with ranges streamed by the export
  itself (``ort_quant``), so calibration holds one segment's activations of one crop, whereas ONNX
  Runtime's histogram methods (entropy, percentile) keep every calibrated tensor of every crop. ModelOpt's
  entropy calibration reduces crop by crop but still holds one crop's convolution inputs (about 9 GB for
  the full NRP at 224x224): calibrate that one on smaller crops on a small machine.

ONNX Runtime's INT8 artifacts have a target CPU (``target_cpu``; ``nrp_deploy.cpu_features`` explains why):
``any`` (default) keeps weights within [-64, 64], exact on every CPU; ``vnni`` keeps full 8-bit weights,
exact only where the CPU has VNNI; ``auto`` takes what is exact on the exporting machine. ``any`` is the
default because an artifact is often exported on one machine and deployed on others, and it costs little:
38.3 dB against 38.4 dB for ``vnni`` on NRP_resG, at the same speed on a VNNI CPU
(benchmarks/results/export_int8_cpu_targets_zen4.md). The sidecar records the target and the exporting
CPU's features, and the runtime warns when an artifact runs on a CPU its target does not cover.

Which one serves CPU deployment better was measured (README, benchmarks/results/export_int8_cpu.md).
The metadata records the method, the calibration, and how many convolutions got Q/DQ on both inputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from nrp_deploy import cpu_features
from nrp_deploy.artifacts.metadata import DEFAULT_MIN_PSNR_DB, DEFAULT_OPSET
from nrp_deploy.cpu_features import resolve_int8_target
from nrp_deploy.errors import ExportError, InputError
from nrp_deploy.export.calibration import CalibrationOptions, CropSet, PictureSource, options_from_keywords
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.export.onnx import opset_of
from nrp_deploy.export.ort_quant import ORT_CALIBRATION_METHODS, quantize_ort_qdq_isolated
from nrp_deploy.export.output import ExportResult, ModelLike, check_output, write_artifact
from nrp_deploy.export.source import fp32_source

METHODS = ("modelopt", "ort")
CALIBRATION_METHODS = {"modelopt": ("entropy", "max"), "ort": ORT_CALIBRATION_METHODS}
_DEFAULT_CALIBRATION_METHOD = {"modelopt": "entropy", "ort": "minmax"}


def qdq_coverage(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts of Q/DQ nodes and of convolutions whose activation and weight both come through
    DequantizeLinear, and the names of the convolutions left in floating point."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if all(producer.get(name) == "DequantizeLinear" for name in n.input[:2])]
    ops = [n.op_type for n in model.graph.node]
    return {
        "conv_nodes": len(convs),
        "quantized_convs": len(quantized),
        "float_convs": sorted(n.name for n in convs if n not in quantized),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
    }


def _modelopt_int8(fp32: Path, target: Path, calib: CropSet, method: str, high_precision: str) -> None:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise ExportError(f"INT8 export with ModelOpt needs nvidia-modelopt: {exc}") from exc
    quantize(
        str(fp32),
        quantize_mode="int8",
        calibration_data=calib.batch,
        calibration_method=method,
        calibration_eps=["cpu"],
        output_path=str(target),
        high_precision_dtype=high_precision,
        log_level="WARNING",
    )


def _ort_target_summary(cpu_target: str) -> dict[str, Any]:
    """What the sidecar records of an ORT artifact's CPU target: the choice, the weights, the exporting CPU."""
    return {
        "target_cpu": cpu_target,
        "weight_range": [-64, 64] if cpu_target == "any" else [-127, 127],
        "export_cpu": cpu_features.host_isa().to_dict(),
    }


@dataclass(frozen=True)
class Int8Options:
    """How ``export_int8`` quantises: ``method`` (``modelopt`` for TensorRT, ``ort`` for ONNX Runtime on
    CPUs; see the module docstring), the ``calibration`` images (and held-out ones), ``calibration_method``
    (modelopt ``entropy`` (default) / ``max``; ort ``minmax`` (default) / ``entropy`` / ``percentile``),
    ``high_precision`` (``fp16`` or ``fp32`` for what ModelOpt leaves unquantised), ``target_cpu`` (ort:
    ``auto``, ``vnni`` or ``any``), the verdict's ``min_psnr_db`` and the ``opset`` of the FP32 export."""

    method: str = "modelopt"
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    calibration_method: str | None = None
    high_precision: str = "fp16"
    target_cpu: str = "any"
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB["int8"]
    opset: int = DEFAULT_OPSET


def export_int8(
    source: ModelLike,
    output: str | os.PathLike[str],
    method: str | None = None,
    calibration: PictureSource | None = None,
    *,
    options: Int8Options | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **keywords: Any,
) -> ExportResult:
    """Write an INT8 Q/DQ ONNX of ``source`` to ``output`` (+ its metadata sidecar).

    ``options``: an ``Int8Options``; or its field names (and ``CalibrationOptions``', with ``calibration``
    for the images) as keywords, e.g. ``export_int8(model, out, "ort", crop_size=128)``. Sources as for
    ``export_fp16``.
    """
    if method is not None:
        keywords["method"] = method
    options = options_from_keywords(Int8Options, options, calibration, keywords)
    method, target_cpu, high_precision = options.method, options.target_cpu, options.high_precision
    calibration_method = options.calibration_method
    if method not in METHODS:
        raise ExportError(f"INT8 method must be one of {', '.join(METHODS)}, not {method!r}")
    try:
        cpu_target = resolve_int8_target(target_cpu)
    except InputError as exc:
        raise ExportError(str(exc)) from exc
    calibration_method = calibration_method or _DEFAULT_CALIBRATION_METHOD[method]
    if calibration_method not in CALIBRATION_METHODS[method]:
        raise ExportError(
            f"calibration method {calibration_method!r} is not one of {', '.join(CALIBRATION_METHODS[method])} "
            f"for method {method!r}"
        )
    if high_precision not in ("fp16", "fp32"):
        raise ExportError(f"high_precision must be fp16 or fp32, not {high_precision!r}")
    out = check_output(output, overwrite)
    calib, held = options.calibration.crops()
    with tempfile.TemporaryDirectory(prefix="nrp-int8-") as tmp:
        base = fp32_source(source, Path(tmp), options.opset)
        # Both quantisers write scratch files beside their input: keep them out of the user's folder.
        fp32 = Path(tmp) / "fp32.onnx"
        if base.onnx_path != fp32:
            shutil.copyfile(base.onnx_path, fp32)
        target = Path(tmp) / "int8.onnx"
        try:
            if method == "modelopt":
                _modelopt_int8(fp32, target, calib, calibration_method, high_precision)
            else:
                # A fresh process: once ModelOpt has quantised anything, it has patched ONNX Runtime's
                # quantisation classes for the rest of the process, and quantize_static then fails.
                quantize_ort_qdq_isolated(
                    fp32, target, calib.batch, calibration_method, progress, reduce_range=cpu_target == "any"
                )
            model = onnx.load(target)
            onnx.checker.check_model(model)
        except (FileNotFoundError, onnx.checker.ValidationError) as exc:
            raise ExportError(f"INT8 quantisation ({method}) produced no valid model: {exc}") from exc
        model_bytes = model.SerializeToString()
    coverage = qdq_coverage(model)
    if not coverage["quantized_convs"]:
        raise ExportError(
            f"INT8 quantisation ({method}) put Q/DQ on none of {coverage['conv_nodes']} convolutions"
        )
    calibration_summary: dict[str, Any] = {
        **calib.summary(),
        "method": method,
        "calibration_method": calibration_method,
        **({"high_precision": high_precision} if method == "modelopt" else {}),
        **(_ort_target_summary(cpu_target) if method == "ort" else {}),
        **coverage,
    }
    fidelity = measure_fidelity(model_bytes, base.loaded, held.batch, progress=progress)
    return write_artifact(
        out,
        model_bytes,
        precision="int8",
        io_dtype="float32",
        opset=opset_of(model),
        loaded=base.loaded,
        fidelity=fidelity,
        fidelity_images={"description": held.describe(), **held.summary()},
        min_psnr_db=options.min_psnr_db,
        calibration=calibration_summary,
        derived_from=base.derived_from,
    )
