"""Numpy twins of the fused kernels: what ``FusedKernels.preprocess`` / ``postprocess`` must return.

The GPU tests compare the kernels with these element by element: exactly without noise, and within 2e-6
(one unit for float16 outputs) with it, since the device's log/sin/cos are not numpy's float32 ones. A CPU
pipeline can call them to get the GPU path's numbers within that rounding.
"""

from __future__ import annotations

import numpy as np

from nrp_deploy.errors import InputError
from nrp_deploy.kernels.philox import apply_dynamic_defense

_OUT_DTYPES = {"float16": np.float16, "float32": np.float32}


def preprocess_reference(
    images: np.ndarray,
    out_dtype: str = "float16",
    sigma: float = 0.0,
    eps: float = 0.0,
    seed: int = 0,
    start_index: int = 0,
) -> np.ndarray:
    """uint8 NHWC (or float32 NCHW) -> ``out_dtype`` NCHW in [0, 1], with the dynamic defence when sigma > 0.

    uint8 becomes float32 by a correctly rounded division by 255; without noise the values are only
    clamped to [0, 1]; the final cast to float16 rounds to nearest even.
    """
    if out_dtype not in _OUT_DTYPES:
        raise InputError(f"out_dtype must be one of {sorted(_OUT_DTYPES)}, got {out_dtype!r}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images must be a 4-d batch (uint8 NHWC or float32 NCHW), got shape {images.shape}")
    if images.dtype == np.uint8:
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255)
    elif images.dtype == np.float32:
        x = images
    else:
        raise InputError(f"images must be uint8 NHWC or float32 NCHW, got {images.dtype}")
    if sigma > 0:
        y = apply_dynamic_defense(x, sigma, eps, seed, start_index)
    else:
        y = np.clip(x, np.float32(0), np.float32(1))
    return y.astype(_OUT_DTYPES[out_dtype])


def postprocess_reference(x: np.ndarray) -> np.ndarray:
    """float16/float32 NCHW -> uint8 NHWC: clamp to [0, 1], * 255 in float32, round half to even."""
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype not in (np.float16, np.float32):
        raise InputError(f"x must be a float16/float32 NCHW array, got {x.dtype} with shape {x.shape}")
    y = np.clip(x.astype(np.float32), np.float32(0), np.float32(1)) * np.float32(255)
    return np.rint(y).astype(np.uint8).transpose(0, 2, 3, 1).copy()
