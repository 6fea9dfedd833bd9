"""The training-free baseline defences: what they do to images, and their refusal of unknown names."""

from __future__ import annotations

import numpy as np
import pytest

from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.baselines import baseline_defences, box_blur_twice, jpeg_round_trip


def test_blur_keeps_flat_images_and_smooths_noise():
    flat = np.full((2, 12, 10, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(box_blur_twice(flat), flat)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8)
    blurred = box_blur_twice(noisy)
    assert blurred.dtype == np.uint8 and blurred.shape == noisy.shape
    assert blurred.std() < 0.5 * noisy.std()  # two 3x3 means: variance of white noise down ~9x or more
    assert abs(float(blurred.mean()) - float(noisy.mean())) < 2.0  # mean kept


def test_jpeg_round_trip_is_close_on_smooth_images_and_lossy_on_noise():
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1).astype(np.uint8)[None]
    out = jpeg_round_trip(smooth)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3
    noisy = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert np.abs(jpeg_round_trip(noisy).astype(int) - noisy).mean() > 10


def test_unknown_baselines_are_refused_by_name():
    assert list(baseline_defences(("jpeg", "blur"))) == ["jpeg", "blur"]
    with pytest.raises(InputError, match="median"):
        baseline_defences(("median",))
