"""Image fidelity metrics in numpy (torch-free): PSNR and SSIM on uint8 (or [0, 1] float) HWC images.

SSIM is the standard one of Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) statistics, computed per channel on the "valid" region (no padding) and
averaged over the region and the channels. This matches ``skimage.metrics.structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` (its filtered borders are cropped off).
"""

from __future__ import annotations

import math

import numpy as np

from nrp_deploy.errors import InputError

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): the window truncated at 3.5 sigma, as skimage does -> 11x11
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"metrics compare two HWC images of one shape, got {a.shape} and {b.shape}")
    peak = 255.0 if a.dtype == np.uint8 else 1.0
    return a.astype(np.float64), b.astype(np.float64), peak


def psnr(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two arrays of one shape (images, NCHW batches); ``inf`` when equal.

    The peak is ``data_range`` if given, else 255 for uint8 and 1 for float arrays.
    """
    if a.shape != b.shape:
        raise InputError(f"PSNR compares two arrays of one shape, got {a.shape} and {b.shape}")
    peak = data_range if data_range is not None else (255.0 if a.dtype == np.uint8 else 1.0)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of an (H, W, C) array with ``window`` on both axes, valid region only."""
    size = len(window)
    rows = sum(w * image[i : image.shape[0] - size + 1 + i] for i, w in enumerate(window))
    return sum(w * rows[:, i : rows.shape[1] - size + 1 + i] for i, w in enumerate(window))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two HWC images (each side >= 11 pixels)."""
    x, y, peak = _pair(a, b)
    size = 2 * SSIM_RADIUS + 1
    if min(x.shape[:2]) < size:
        raise InputError(f"SSIM needs images of at least {size}x{size} pixels, got {x.shape[0]}x{x.shape[1]}")
    window = _gaussian_window()
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())
