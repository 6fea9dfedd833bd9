"""`nrp attack ssp|pgd` on small image folders: layout kept, sizes batched, budget held, errors reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrp_deploy.cli import main
from nrp_deploy.images import read_image, write_png
from nrp_deploy.models import NRP_resG


@pytest.fixture
def image_tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    files = {"a.png": (32, 40), "sub/b.png": (24, 24), "sub/c.png": (32, 40)}  # two sizes, nested
    for name, (h, w) in files.items():
        write_png(root / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (root / "sub" / "broken.png").write_bytes(b"not an image")
    return root, sorted(files)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(NRP_resG(nf=8, nb=1).state_dict(), path)
    return path


def _check_outputs(root, out, names, eps_levels):
    for name in names:
        clean = read_image(root / name).astype(int)
        adv = read_image(out / name).astype(int)
        assert adv.shape == clean.shape
        assert np.abs(adv - clean).max() <= eps_levels
        assert np.abs(adv - clean).max() > 0


def test_attack_ssp_writes_pngs_in_the_input_layout(image_tree, tmp_path):
    root, names = image_tree
    out = tmp_path / "out"
    code = main(
        ["attack", "ssp", str(root), "-o", str(out), "--iterations", "2", "--eps", "8/255", "--no-progress"]
    )
    assert code == 1  # the broken file is reported, the others are written
    _check_outputs(root, out, names, eps_levels=8)
    assert not (out / "sub" / "broken.png").exists()
    again = tmp_path / "again"
    main(
        ["attack", "ssp", str(root), "-o", str(again), "--iterations", "2", "--eps", "8/255", "--no-progress"]
    )
    assert all(np.array_equal(read_image(out / n), read_image(again / n)) for n in names)  # seeded


@pytest.mark.parametrize("mode", ["bpda", "eot"])
def test_attack_pgd_through_a_tiny_purifier(image_tree, tiny_checkpoint, tmp_path, mode):
    root, _ = image_tree
    out = tmp_path / "out"
    args = [
        "attack",
        "pgd",
        str(root / "a.png"),
        str(root / "sub"),
        "-o",
        str(out),
        "--model",
        str(tiny_checkpoint),
    ]
    code = main(
        [*args, "--mode", mode, "--iterations", "2", "--eot-samples", "2", "--untargeted", "--no-progress"]
    )
    assert code == 1  # sub/broken.png
    assert (out / "a.png").is_file() and (out / "b.png").is_file() and (out / "c.png").is_file()
    for produced, source in (("a.png", "a.png"), ("b.png", "sub/b.png")):
        diff = read_image(out / produced).astype(int) - read_image(root / source).astype(int)
        assert 0 < np.abs(diff).max() <= 16


def test_attack_reports_bad_options_in_one_line(image_tree, tmp_path, capsys):
    root, _ = image_tree
    out = str(tmp_path / "out")
    assert main(["attack", "ssp", str(root), "-o", out, "--step", "0"]) == 2
    assert "eps and step must be > 0" in capsys.readouterr().err
    assert main(["attack", "pgd", str(root), "-o", out, "--model", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "ssp", str(root), "-o", out, "--eps", "sixteen"])
    assert "not a number or fraction" in capsys.readouterr().err


def test_attack_pgd_on_a_user_classifier_with_random_start_stays_inside_an_off_grid_budget(
    image_tree, tiny_checkpoint, tmp_path
):
    root, _ = image_tree
    net = tmp_path / "net.py"
    net.write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), "
        "nn.Linear(16, 10))\n"
    )
    out = tmp_path / "out"
    args = ["attack", "pgd", str(root / "a.png"), "-o", str(out), "--model", str(tiny_checkpoint)]
    args += ["--classifier", f"{net}:build?norm=none", "--mode", "bpda", "--random-start", "--restarts", "2"]
    assert main([*args, "--eps", "0.01", "--step", "0.005", "--iterations", "2", "--no-progress"]) == 0
    diff = read_image(out / "a.png").astype(int) - read_image(root / "a.png").astype(int)
    assert 0 < np.abs(diff).max() <= 2  # 0.01 is 2.55 levels: rounding never steps past the budget
