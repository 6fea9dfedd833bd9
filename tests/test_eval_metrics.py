"""PSNR / SSIM against scikit-image's implementation, CIEDE2000 against its published test pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.metrics import channel_shift, ciede2000, mean_ciede2000, psnr, srgb_to_lab, ssim


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


# Published CIEDE2000 test pairs (Sharma, Wu and Dalal 2005, table 1): Lab 1, Lab 2, difference.
SHARMA_PAIRS = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_the_published_test_pairs():
    lab1 = np.array([p[0] for p in SHARMA_PAIRS])
    lab2 = np.array([p[1] for p in SHARMA_PAIRS])
    np.testing.assert_allclose(ciede2000(lab1, lab2), [p[2] for p in SHARMA_PAIRS], atol=1e-4)
    np.testing.assert_allclose(ciede2000(lab2, lab1), [p[2] for p in SHARMA_PAIRS], atol=1e-4)


def test_colour_shift_figures_on_images():
    rng = np.random.default_rng(1)
    image = rng.integers(20, 230, (16, 16, 3), dtype=np.uint8)
    assert mean_ciede2000(image, image) == 0.0
    bluer = image.copy()
    bluer[..., 2] += 20
    assert mean_ciede2000(bluer, image) > 2.0  # clearly visible
    np.testing.assert_allclose(channel_shift(bluer, image), [0.0, 0.0, 20.0])
    lab = srgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0, 0], [100.0, 0.0, 0.0], atol=0.01)  # D65 white
    np.testing.assert_allclose(lab[0, 1], [0.0, 0.0, 0.0], atol=1e-6)
