"""PSNR / SSIM against scikit-image's implementation and their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.metrics import psnr, ssim


def _pair(shape=(40, 53, 3), noise=20, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_matches_definition_and_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _pair()
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255))
    assert psnr(a / 255.0, b / 255.0) == pytest.approx(psnr(a, b))  # float images: peak 1
    assert psnr(a, a) == math.inf


@pytest.mark.parametrize("shape,noise", [((40, 53, 3), 20), ((11, 11, 3), 5), ((64, 48, 3), 60)])
def test_ssim_matches_skimage_gaussian_ssim(shape, noise):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _pair(shape, noise)
    expected = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)


def test_ssim_properties():
    a, b = _pair()
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    _, worse = _pair(noise=80)
    assert ssim(a, worse) < ssim(a, b) < 1.0


def test_metrics_reject_mismatched_or_tiny_images():
    a, b = _pair()
    with pytest.raises(InputError, match="one shape"):
        psnr(a, b[:-1])
    with pytest.raises(InputError, match="11x11"):
        ssim(a[:10], b[:10])
