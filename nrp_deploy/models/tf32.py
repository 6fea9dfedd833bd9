"""torch's TF32 switches, set for a block of work and restored after.

On Ampere and newer GPUs torch lets cuDNN run FP32 convolutions in TF32 by default
(``torch.backends.cudnn.allow_tf32``), which rounds their inputs to 10 mantissa bits; the TensorRT and ONNX
Runtime FP32 paths run true FP32. So the FP32 torch backend and the benchmark's FP32 baseline switch TF32
off around their work, and the benchmark's ``torch-tf32`` target switches it on: fidelity and speed-ups
then compare like with like. The switches are process-wide, so they are restored when the block ends
rather than left for the caller's own torch code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 in cuDNN convolutions and CUDA matmuls for the block, then restore."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    previous = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = previous
