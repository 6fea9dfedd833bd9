"""`nrp purify` end to end on a messy folder, with the eager baseline on a tiny purifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_deploy.cli import main
from nrp_deploy.images import read_image
from nrp_deploy.models import ModelSpec, load_model
from nrp_deploy.models.eager import EagerPurifier, dynamic_input


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build().state_dict(), path)
    return path


@pytest.fixture()
def messy_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 16), dtype=np.uint8)).save(root / "grey.png")
    rgba = rng.integers(0, 256, (18, 22, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(root / "sub" / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (17, 19), dtype=np.uint16)).save(root / "deep16.png")
    (root / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    return root


def test_messy_folder(tiny_checkpoint, messy_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(messy_folder), "-o", str(out), "--model", str(tiny_checkpoint), "--no-progress"]
    assert main(["purify", *argv]) == 1
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "3 written" in err and "1 failed" in err
    for rel, size in (("grey.png", (16, 20)), ("sub/alpha.png", (22, 18)), ("deep16.png", (19, 17))):
        with Image.open(out / rel) as img:
            assert img.size == size and img.mode == "RGB"
    assert not (out / "sub" / "corrupt.png").exists()

    # A second run keeps what is there; --overwrite replaces it.
    marker = np.zeros((20, 16, 3), np.uint8)
    Image.fromarray(marker).save(out / "grey.png")
    assert main(["purify", *argv]) == 1
    assert "3 skipped" in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(out / "grey.png"), marker)
    assert main(["purify", *argv, "--overwrite"]) == 1
    assert not np.array_equal(read_image(out / "grey.png"), marker)


def test_eager_output_is_clamped_rounded_model_output(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    images = np.random.default_rng(1).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    out = EagerPurifier(loaded.module)(images)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        expected = (loaded.module(x).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, expected)


def test_dynamic_input_stays_in_eps_ball_and_range():
    x = torch.rand(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    y = dynamic_input(x, sigma=0.5, eps=16 / 255, generator=gen)
    assert (y - x).abs().max() <= 16 / 255 + 1e-6
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, dynamic_input(x, sigma=0.5, eps=16 / 255, generator=gen))


def test_registry_missing_file_and_checksum_mismatch(tmp_path, monkeypatch, tiny_checkpoint, capsys):
    manifest = {
        "models": [
            {
                "name": "NRP",
                "file": "NRP.pth",
                "architecture": "NRP",
                "how_to_get": "Download NRP.pth by hand.",
            },
            {"name": "tiny", "file": "tiny.pth", "architecture": "NRP_resG", "sha256": "0" * 64},
        ]
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "tiny.pth").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setenv("NRP_DEPLOY_MODELS_DIR", str(tmp_path))
    out = str(tmp_path / "out")
    assert main(["purify", str(tmp_path), "-o", out, "--model", "NRP"]) == 2
    err = capsys.readouterr().err
    assert "NRP.pth" in err and "Download NRP.pth by hand." in err and "Traceback" not in err
    assert main(["purify", str(tmp_path), "-o", out, "--model", "tiny"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(["purify", str(tmp_path), "-o", out, "--model", "nope"]) == 2
    assert "registered: NRP, NRP_resG, default, tiny" in capsys.readouterr().err


def test_eager_baseline_feeds_plain_nchw(tiny_checkpoint):
    """The baseline must run the module on contiguous NCHW input, as the published script does."""
    loaded = load_model(tiny_checkpoint)
    seen = []
    loaded.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    EagerPurifier(loaded.module)(np.zeros((1, 8, 8, 3), np.uint8))
    assert seen == [True]
