"""scripts/dynamic_noise_ceiling.py: the outputs it compares are what their rows say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def study(load_script):
    return load_script("dynamic_noise_ceiling")


def _batch(n: int = 2, size: int = 24) -> np.ndarray:
    """Smooth images (ramps), where a denoiser has something to keep: noise-free detail is not noise."""
    ramp = np.linspace(0.2, 0.8, size, dtype=np.float32)
    image = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 1 - ramp) / 2, np.tile(ramp, (size, 1))]
    )
    return np.stack([image] * n).astype(np.float32)


def test_every_row_is_an_image_batch_and_the_noise_rows_keep_their_level(study) -> None:
    x = _batch()
    calls = []

    def purify(images, dynamic):
        calls.append(dynamic)
        return images if dynamic is None else dynamic.apply(images, dynamic.seed)

    rows = study.outputs(x, purify)
    assert all(out.shape == x.shape and out.dtype == np.float32 for out in rows.values())
    np.testing.assert_array_equal(rows["purifier, no noise"], x)
    for sigma in study.NOISE_LEVELS:
        residual = rows[f"noise sigma {sigma}, no purifier"] - x
        assert np.abs(residual).max() <= 16 / 255 + 1e-6
        assert residual.std() == pytest.approx(sigma, rel=0.25)
    purified_levels = sorted(d.sigma for d in calls if d is not None)
    assert purified_levels == sorted([*study.PURIFIED_LEVELS, *[0.05] * 4])
    # the denoisers remove part of the published noise
    noisy_error = np.abs(study.PUBLISHED.apply(x, 0) - x).mean()
    assert np.abs(rows["noise sigma 0.05, total-variation denoiser"] - x).mean() < noisy_error


def test_blur_keeps_a_flat_image_and_jpeg_stays_close(study) -> None:
    flat = np.full((1, 3, 20, 20), 0.4, dtype=np.float32)
    np.testing.assert_allclose(study.gaussian_blur(flat, 0.7), flat, atol=1e-6)
    x = _batch(1)
    assert np.abs(study.jpeg(x, 95) - x).mean() < np.abs(study.jpeg(x, 20) - x).mean()


def test_centre_crops_are_224_px_from_the_shorter_side_at_256(study, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((300, 512, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((640, 400, 3), 255, dtype=np.uint8)).save(tmp_path / "tall.png")
    crops = study.centre_crops(tmp_path)
    assert crops.shape == (2, 3, 224, 224)
    assert crops[0].min() == 1.0 and crops[1].max() == 0.0  # sorted by name: tall, then wide
    with pytest.raises(SystemExit, match="no PNG photos"):
        study.centre_crops(tmp_path / "empty")
