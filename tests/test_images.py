"""Image decoding covers the layouts users hand us; writing is lossless and atomic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nrp_deploy.errors import ImageError
from nrp_deploy.images import collect_images, read_image, write_png


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip_is_lossless(tmp_path):
    image = _rgb()
    write_png(tmp_path / "a" / "x.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "x.png"), image)
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_grey_palette_rgba_cmyk_become_rgb(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (5, 6, 3) and np.array_equal(out[..., 1], grey)

    rgba = np.dstack([_rgb(), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])

    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (6, 5, 3)

    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (6, 5, 3)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(_rgb(4, 8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "r.jpg").shape == (8, 4, 3)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"t\.png"):
        read_image(tmp_path / "t.png")


def test_collect_walks_folders_and_keeps_layout(tmp_path):
    for rel in ("a.png", "sub/b.JPG", "sub/deeper/c.webp", "notes.txt", ".hidden.png"):
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    tasks = collect_images([tmp_path / "in"])
    assert sorted(str(t.relative) for t in tasks) == ["a.png", "sub/b.JPG", "sub/deeper/c.webp"]
    assert tasks[1].output_path(tmp_path / "out").name == "b.png"
    with pytest.raises(ImageError, match="missing"):
        collect_images([tmp_path / "missing"])


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    write_png(tmp_path / "m.png", _rgb())
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o666 & ~mask
