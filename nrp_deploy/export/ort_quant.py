"""ONNX Runtime static INT8 quantisation (QDQ format) for CPU deployment; torch-free, run in its own process.

``int8.export_int8(method="ort")`` quantises through ``quantize_ort_qdq_isolated``, in a fresh process:
once ModelOpt has quantised a model, it has replaced methods of ONNX Runtime's calibrator and quantiser
classes for the rest of that process, and ``quantize_static`` then fails. That process is
``python -m nrp_deploy.export.ort_quant``, not a ``multiprocessing`` spawn: spawn re-imports the caller's
``__main__``, which reruns the top-level code of a user's script without a ``__name__`` guard and cannot
be done at all for code read from stdin, and INT8 is exported on first use from exactly such scripts.
This module therefore imports nothing heavy, so the child starts in about a second.

Settings: the graph is first pre-processed as ONNX Runtime recommends (shape inference, basic graph
optimisation); activations uint8, weights int8 per output channel, every operator ONNX Runtime can
quantise gets Q/DQ (its CPU provider then fuses the graph into integer kernels), except the convolutions
at the image's two ends (``image_convolutions``: the one reading the input and the one writing the output),
which stay FP32. They hold under 1 % of a purifier's multiply-adds, but theirs are the errors nothing
averages away: the first rounds the 3-channel image itself, and the last writes every output pixel from
quantised features. Keeping them FP32 measured +3.9 dB against FP32 on the default purifier (42.2 ->
46.1 dB on its held-out crop) at no measurable cost in speed. ``reduce_range`` keeps
weights to 7 bits so that the U8S8 kernels of x86-64 CPUs without VNNI cannot saturate
(``nrp_deploy.cpu_features`` explains the arithmetic).

MinMax ranges are measured by the export's own streamed pass (``ranges.collect_ranges``: the graph run in
segments, each tensor reduced as soon as it exists) and handed to ``quantize_static`` as its calibration
cache, so ONNX Runtime runs no calibration session of its own. Its session for the augmented graph (every
tensor feeding ReduceMin/ReduceMax nodes) needed more than 23 GiB for the full NRP on 224x224 crops; the
streamed pass needs one segment's activations for one crop. The histogram methods (entropy, percentile)
still use ONNX Runtime's calibrator, which keeps every calibrated tensor of every crop: use small crops.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

import nrp_deploy
from nrp_deploy.errors import ExportError

if TYPE_CHECKING:
    import onnx

ORT_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
_MODULE = "nrp_deploy.export.ort_quant"


class _CropReader:
    """ONNX Runtime calibration reader: one crop per batch, with a progress bar."""

    def __init__(self, crops: np.ndarray, input_name: str, progress: bool) -> None:
        batches = [crops[i : i + 1] for i in range(len(crops))]
        self._batches: Iterator[np.ndarray] = iter(tqdm(batches, desc="calibration", disable=not progress))
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def image_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the convolutions at the image's ends: the first in graph order (ONNX graphs are sorted
    topologically, so it is the one nearest the input) and the last (nearest the output)."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


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
    import onnx
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
    fp32_convolutions = image_convolutions(onnx.load(prepared))
    cache: dict[str, str] = {}
    if method == "minmax" and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        cache_path = Path(target).with_suffix(".ranges.json")
        _write_minmax_cache(prepared, crops, input_name, progress, cache_path)
        cache = {"calibration_cache_path": os.fspath(cache_path)}
    quantize_static(
        os.fspath(prepared),
        os.fspath(target),
        None if cache else _CropReader(crops, input_name, progress),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate_method,
        reduce_range=reduce_range,
        nodes_to_exclude=fp32_convolutions,
        **cache,
    )


def _write_minmax_cache(
    prepared: Path, crops: np.ndarray, input_name: str, progress: bool, cache_path: Path
) -> None:
    """Every tensor's (min, max) over ``crops``, streamed, saved in ONNX Runtime's calibration-cache format."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    from nrp_deploy.export.ranges import collect_ranges

    batches = (crops[i : i + 1] for i in range(len(crops)))
    ranges = collect_ranges(onnx.load(prepared), batches, input_name, progress=progress, total=len(crops))
    as_float32 = {
        name: TensorData(lowest=np.array([low], np.float32), highest=np.array([high], np.float32))
        for name, (low, high) in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, as_float32), cache_path)


def quantize_ort_qdq_isolated(
    fp32: str | os.PathLike[str],
    target: str | os.PathLike[str],
    crops: np.ndarray,
    method: str = "minmax",
    progress: bool = True,
    reduce_range: bool = False,
) -> None:
    """``quantize_ort_qdq`` in a child ``python -m nrp_deploy.export.ort_quant``, which imports only this
    package, never the caller's ``__main__``. The crops travel in a ``.npy`` beside ``target``; progress
    bars go to this process's stderr; a failure in the child is raised here as an ``ExportError`` that
    carries the child's message."""
    crops_path = Path(target).with_suffix(".crops.npy")
    np.save(crops_path, crops)
    argv = [os.fspath(fp32), os.fspath(target), os.fspath(crops_path), "--method", method]
    argv += [*([] if progress else ["--no-progress"]), *(["--reduce-range"] if reduce_range else [])]
    # The package is importable in the child wherever it was imported from here (a checkout, a sys.path edit).
    package_root = os.fspath(Path(nrp_deploy.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", _MODULE, *argv], env=env, stdout=subprocess.PIPE, text=True, check=False
        )
    finally:
        crops_path.unlink(missing_ok=True)
    if done.returncode != 0:
        reason = done.stdout.strip() or f"exit status {done.returncode}"
        raise ExportError(f"ONNX Runtime INT8 quantisation failed in its own process: {reason}")


def main(args: Sequence[str] | None = None) -> int:
    """The child's entry point: quantise, and on failure print the reason on stdout for the parent."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=quantize_ort_qdq.__doc__)
    parser.add_argument("fp32")
    parser.add_argument("target")
    parser.add_argument("crops", help="NCHW float32 calibration crops, saved with numpy.save")
    parser.add_argument("--method", choices=ORT_CALIBRATION_METHODS, default="minmax")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--reduce-range", action="store_true")
    opts = parser.parse_args(args)
    try:
        crops = np.load(opts.crops)
        quantize_ort_qdq(
            opts.fp32, opts.target, crops, opts.method, opts.progress, reduce_range=opts.reduce_range
        )
    except Exception as exc:  # any failure is reported to the parent, which raises it
        print(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
