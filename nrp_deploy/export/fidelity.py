"""Fidelity of an ONNX artifact: ONNX Runtime (CPU) against the FP32 torch module, on the same images.

Every artifact is judged this way before it is written off as fit to deploy: the torch module in float32
is the reference (it is what the published purifier computes), the artifact runs where anyone can run it
(ONNX Runtime's CPU provider, which executes FP16 and Q/DQ graphs as written), and the errors are taken on
the raw outputs (see ``metadata`` for why not after the clamp). Batches run one at a time, so a full-size
NRP on a handful of crops fits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from nrp_deploy.artifacts.metadata import Fidelity, psnr_db
from nrp_deploy.models import LoadedModel
from nrp_deploy.models.tf32 import tf32_allowed

__all__ = ["ErrorStats", "Fidelity", "cpu_session", "measure_fidelity", "run_session"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class ErrorStats:
    """Running max / sum of absolute and squared errors, so fidelity can be pooled over batches."""

    max_abs: float = 0.0
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    count: int = 0

    def add(self, actual: np.ndarray, expected: np.ndarray) -> None:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = float(diff.max()) if diff.size else 0.0
        # A NaN or infinity on either side is the worst error there is (max() would drop a NaN silently).
        self.max_abs = max(self.max_abs, worst if np.isfinite(worst) else float("inf"))
        self.sum_abs += float(diff.sum())
        self.sum_sq += float(np.square(diff).sum())
        self.count += diff.size

    def fidelity(self) -> Fidelity:
        if not self.count:
            raise ValueError("no outputs were compared")
        mse = self.sum_sq / self.count
        nan = not (np.isfinite(self.sum_sq) and np.isfinite(self.max_abs))
        return Fidelity(
            max_abs=float("inf") if nan else self.max_abs,
            mean_abs=float("inf") if nan else self.sum_abs / self.count,
            psnr_db=float("-inf") if nan else psnr_db(mse),
        )


def cpu_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session (warnings silenced; ``threads`` None lets ORT use every core).

    Its worker threads do not spin-wait between runs: they would otherwise keep every core busy while the
    torch reference runs in between, slowing it tens of times.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Run a one-input purifier session on float32 NCHW ``x``; float32 out whatever the graph's I/O dtype."""
    spec = session.get_inputs()[0]
    dtype = _ORT_DTYPES.get(spec.type)
    if dtype is None:
        raise TypeError(f"unsupported ONNX input type {spec.type}")
    (out,) = session.run(None, {spec.name: np.ascontiguousarray(x, dtype=dtype)})
    return out.astype(np.float32, copy=False)


def _as_batches(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"expected NCHW images, got shape {images.shape}")
        return [images[i : i + 1] for i in range(images.shape[0])]
    return [np.asarray(b) for b in images]


@torch.no_grad()
def compare(
    session: ort.InferenceSession,
    reference: torch.nn.Module,
    images: np.ndarray | Sequence[np.ndarray],
    progress: bool = False,
) -> list[ErrorStats]:
    """Per-batch error statistics of ``session`` against ``reference`` (an NCHW array runs image by image).

    The reference is true FP32 on any device: TF32 is off while it runs (``models.tf32``)."""
    reference = reference.float().eval()
    device = next(reference.parameters()).device
    stats = []
    for batch in tqdm(_as_batches(images), desc="fidelity", unit="batch", disable=not progress):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with tf32_allowed(False):
            expected = reference(torch.from_numpy(batch).to(device)).cpu().numpy()
        stat = ErrorStats()
        stat.add(run_session(session, batch), expected)
        stats.append(stat)
    return stats


def pooled(stats: Sequence[ErrorStats]) -> Fidelity:
    total = ErrorStats()
    for s in stats:
        total.max_abs = max(total.max_abs, s.max_abs)
        total.sum_abs += s.sum_abs
        total.sum_sq += s.sum_sq
        total.count += s.count
    return total.fidelity()


def measure_fidelity(
    onnx_path: str | os.PathLike[str] | bytes,
    reference: torch.nn.Module | LoadedModel,
    images: np.ndarray | Sequence[np.ndarray],
    progress: bool = False,
) -> Fidelity:
    """Max / mean absolute error and PSNR of the ONNX model against the FP32 torch module on ``images``.

    ``onnx_path``: a file, or the serialised model. ``images``: float32 NCHW in [0, 1], either one array (run image by image) or a sequence of batches
    (each run as is, so shapes may differ). Use held-out images, not the calibration crops.
    """
    module = reference.module if isinstance(reference, LoadedModel) else reference
    return pooled(compare(cpu_session(onnx_path), module, images, progress))
