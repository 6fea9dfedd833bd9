"""ONNX Runtime static INT8 quantisation (QDQ format) for CPU deployment; torch-free, run in its own process.

``int8.export_int8(method="ort")`` calls ``quantize_ort_qdq`` in a freshly spawned process: once ModelOpt
has quantised a model, it has replaced methods of ONNX Runtime's calibrator and quantiser classes for the
rest of that process, and ``quantize_static`` then fails. This module therefore imports nothing heavy, so
the child starts in about a second.

Settings: the graph is first pre-processed as ONNX Runtime recommends (shape inference, basic graph
optimisation); activations uint8, weights int8 per output channel, every operator ONNX Runtime can
quantise gets Q/DQ (its CPU provider then fuses the graph into integer kernels). ``reduce_range`` keeps
weights to 7 bits so that the U8S8 kernels of x86-64 CPUs without VNNI cannot saturate
(``nrp_deploy.cpu_features`` explains the arithmetic).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

ORT_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class _CropReader:
    """ONNX Runtime calibration reader: one crop per batch, with a progress bar."""

    def __init__(self, crops: np.ndarray, input_name: str, progress: bool) -> None:
        batches = [crops[i : i + 1] for i in range(len(crops))]
        self._batches: Iterator[np.ndarray] = iter(tqdm(batches, desc="calibration", disable=not progress))
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize_ort_qdq(
    fp32: str | os.PathLike[str],
    target: str | os.PathLike[str],
    crops: np.ndarray,
    method: str = "minmax",
    progress: bool = True,
    input_name: str = "input",
    reduce_range: bool = False,
) -> None:
    """Quantise the FP32 ONNX ``fp32`` into ``target`` (QDQ), calibrated on NCHW ``crops`` one at a time;
    ``reduce_range`` limits weights to [-64, 64]."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    prepared = Path(target).with_suffix(".pre.onnx")
    quant_pre_process(os.fspath(fp32), os.fspath(prepared))
    quantize_static(
        os.fspath(prepared),
        os.fspath(target),
        _CropReader(crops, input_name, progress),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate_method,
        reduce_range=reduce_range,
    )
