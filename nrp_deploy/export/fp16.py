"""Calibrated mixed-precision FP16 ONNX (NVIDIA ModelOpt AutoCast), checked against FP32 torch.

TensorRT 11 dropped the FP16 builder flag: precision lives in the ONNX graph, and a strongly typed network
runs each node in the type the graph gives it. AutoCast (``modelopt.onnx.autocast``) writes such a graph:
it converts nodes and weights to FP16 and inserts casts around the nodes that must stay FP32.

Which nodes stay FP32 is decided from activations on real images, by AutoCast's own rule: a node stays
FP32 when any tensor it reads or writes exceeds ``data_max`` in magnitude on the calibration crops (512
by default: FP16's spacing there is 0.5, and 65504 overflows), or when one of its weights exceeds
``init_max``. AutoCast can gather those activations itself, but its reference runner holds every
intermediate tensor of every calibration batch at once (about 15 GB per 224x224 crop for the full NRP), so
the ranges are streamed here instead (``ranges.collect_absmax``: segment by segment, one crop at a time,
with a progress bar), the rule is applied to them, and the chosen nodes are handed to AutoCast as
``nodes_to_exclude`` (with its own range pass disabled). The nodes that end up FP32 are read back from the
converted graph and recorded in the metadata with the activation that put them there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nrp_deploy.artifacts.metadata import DEFAULT_MIN_PSNR_DB, DEFAULT_OPSET
from nrp_deploy.errors import ExportError
from nrp_deploy.export.calibration import CalibrationOptions, PictureSource, options_from_keywords
from nrp_deploy.export.fidelity import measure_fidelity
from nrp_deploy.export.onnx import opset_of
from nrp_deploy.export.output import ExportResult, ModelLike, check_output, write_artifact
from nrp_deploy.export.ranges import collect_absmax
from nrp_deploy.export.source import fp32_source

#: AutoCast's defaults: the largest activation and weight magnitudes a node may have and still run in FP16.
DEFAULT_DATA_MAX = 512.0
DEFAULT_INIT_MAX = float(np.finfo(np.float16).max)


def select_fp32_nodes(model: onnx.ModelProto, absmax: dict[str, float], data_max: float) -> dict[str, float]:
    """Nodes any of whose input or output tensors exceeds ``data_max``, with that largest magnitude.

    The same test as AutoCast's ``IORangeRule`` (weights are not activations and are left to its
    ``init_max`` rule).
    """
    chosen = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        worst = max((absmax.get(name, 0.0) for name in (*node.input, *node.output) if name), default=0.0)
        if worst > data_max:
            chosen[node.name] = worst
    return chosen


def fp32_nodes_in(model: onnx.ModelProto) -> list[str]:
    """Nodes of a mixed-precision graph that compute in FP32 (casts inserted by the conversion excluded)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {
        vi.name: vi.type.tensor_type.elem_type for vi in (*graph.value_info, *graph.input, *graph.output)
    }
    return [
        node.name
        for node in graph.node
        if node.op_type != "Cast" and any(types.get(out) == onnx.TensorProto.FLOAT for out in node.output)
    ]


@contextlib.contextmanager
def quiet_modelopt() -> Iterator[None]:
    """ModelOpt logs every step at INFO on stdout; keep its warnings and errors only."""
    loggers = [logging.getLogger(name) for name in ("modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class Fp16Options:
    """How ``export_fp16`` converts: the ``calibration`` images (and held-out ones), ``keep_io_types``
    (float32 input/output with casts inside the graph; False makes them float16), ``data_max`` (nodes whose
    activations exceed it stay FP32), ``init_max`` (AutoCast's limit for initializers), the verdict's
    ``min_psnr_db`` and the ``opset`` of the FP32 export."""

    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    keep_io_types: bool = True
    data_max: float = DEFAULT_DATA_MAX
    init_max: float = DEFAULT_INIT_MAX
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB["fp16"]
    opset: int = DEFAULT_OPSET


def export_fp16(
    source: ModelLike,
    output: str | os.PathLike[str],
    calibration: PictureSource | None = None,
    *,
    options: Fp16Options | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **keywords: Any,
) -> ExportResult:
    """Write a calibrated mixed-precision FP16 ONNX of ``source`` to ``output`` (+ its metadata sidecar).

    ``source``: registry name, checkpoint, ``LoadedModel`` or an FP32 ONNX artifact from ``export_onnx``.
    ``options``: an ``Fp16Options``; or its field names (and ``CalibrationOptions``', with ``calibration``
    for the images) as keywords, e.g. ``export_fp16(model, out, "photos/", crop_size=512)``.
    """
    options = options_from_keywords(Fp16Options, options, calibration, keywords)
    data_max, init_max, keep_io_types = options.data_max, options.init_max, options.keep_io_types
    out = check_output(output, overwrite)
    calib, held = options.calibration.crops()
    with tempfile.TemporaryDirectory(prefix="nrp-fp16-") as tmp:
        base = fp32_source(source, Path(tmp), options.opset)
        fp32_model = onnx.load(base.onnx_path)
        crops = (calib.batch[i : i + 1] for i in range(len(calib.batch)))
        absmax = collect_absmax(fp32_model, crops, progress=progress, total=len(calib.batch))
        by_range = select_fp32_nodes(fp32_model, absmax, data_max)
        try:
            from modelopt.onnx.autocast import convert_to_mixed_precision

            with quiet_modelopt():
                converted = convert_to_mixed_precision(
                    str(base.onnx_path),
                    low_precision_type="fp16",
                    nodes_to_exclude=[re.escape(name) + "$" for name in by_range],
                    data_max=math.inf,  # ranges were applied above; skip AutoCast's in-memory reference run
                    init_max=init_max,
                    keep_io_types=keep_io_types,
                    providers=["cpu"],
                )
            onnx.checker.check_model(converted)
        except ImportError as exc:
            raise ExportError(
                f"FP16 export needs NVIDIA ModelOpt (pip install nvidia-modelopt): {exc}"
            ) from exc
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"AutoCast's FP16 graph fails onnx.checker: {exc}") from exc
        model_bytes = converted.SerializeToString()
        kept = fp32_nodes_in(converted)
        op_of = {n.name: n.op_type for n in converted.graph.node}
        total = sum(1 for n in converted.graph.node if n.op_type != "Cast")
        calibration_summary = {
            **calib.summary(),
            "method": "modelopt.onnx.autocast.convert_to_mixed_precision; FP32 nodes from streamed ranges",
            "data_max": data_max
            if math.isfinite(data_max)
            else None,  # None: no range rule (JSON has no inf)
            "init_max": init_max,
            "max_activation": max(absmax.values(), default=0.0),
            "nodes_total": total,
            "nodes_fp16": total - len(kept),
            "nodes_fp32": kept,
            "nodes_fp32_ops": dict(Counter(op_of[name] for name in kept).most_common()),
            "nodes_fp32_by_range": by_range,
        }
        fidelity = measure_fidelity(model_bytes, base.loaded, held.batch, progress=progress)
        return write_artifact(
            out,
            model_bytes,
            precision="fp16",
            io_dtype="float32" if keep_io_types else "float16",
            opset=opset_of(converted),
            loaded=base.loaded,
            fidelity=fidelity,
            fidelity_images={"description": held.describe(), **held.summary()},
            min_psnr_db=options.min_psnr_db,
            calibration=calibration_summary,
            derived_from=base.derived_from,
        )
