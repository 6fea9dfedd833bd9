"""Image fidelity metrics in numpy (torch-free): PSNR and SSIM on uint8 (or [0, 1] float) HWC images.

SSIM is the standard one of Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) statistics, computed per channel on the "valid" region (no padding) and
averaged over the region and the channels. This matches ``skimage.metrics.structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` (its filtered borders are cropped off).
"""

from __future__ import annotations

import numpy as np

from nrp_deploy.artifacts.metadata import psnr as psnr  # the package's one PSNR, handed on
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


# sRGB (IEC 61966-2-1) to CIE XYZ, D65 white, and that white point: the conversion behind CIELAB.
_SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65_WHITE = _SRGB_TO_XYZ.sum(axis=1)


def srgb_to_lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an HWC sRGB image, uint8 or float in [0, 1]."""
    rgb = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) of two CIELAB arrays (..., 3), element-wise.

    The formula of Sharma, Wu and Dalal (2005); about 1 is the smallest difference an observer notices.
    """
    l1, a1, b1 = np.moveaxis(lab1.astype(np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(lab2.astype(np.float64), -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    d_lp, d_cp = l2 - l1, c2p - c1p
    d_hp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = np.where(np.abs(h1p - h2p) > 180, np.where(h_sum < 360, h_sum + 360, h_sum - 360), h_sum) / 2
    h_bar = np.where(chroma_zero, h_sum, h_bar)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = (
        -2
        * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
        * np.sin(np.radians(60 * np.exp(-(((h_bar - 275) / 25) ** 2))))
    )
    return np.sqrt(
        (d_lp / s_l) ** 2 + (d_cp / s_c) ** 2 + (d_hp / s_h) ** 2 + r_t * (d_cp / s_c) * (d_hp / s_h)
    )


def mean_ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 difference of two HWC sRGB images: the colour-shift figure of the evaluation."""
    _x, _y, _ = _pair(a, b)
    return float(ciede2000(srgb_to_lab(a), srgb_to_lab(b)).mean())


def channel_shift(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Mean of ``a - b`` per channel, in 0..255 units: the sign says which way a colour cast goes."""
    x, y, peak = _pair(a, b)
    return [float(v) * 255.0 / peak for v in (x - y).mean(axis=(0, 1))]
