"""``nrp demo`` end to end on tiny inputs: a near-identity purifier, two small photos, one SSP iteration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nrp_deploy.cli import main
from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.demo import EXAMPLES_DIR, run_demo
from nrp_deploy.images import write_png
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.training import save_weights
from nrp_deploy.training.objective import identity_init


@pytest.fixture(scope="module")
def identity_purifier(tmp_path_factory):
    """An NRP_resG checkpoint that is exactly the identity map (so its effect is known in advance)."""
    torch.manual_seed(0)
    model = ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build()
    identity_init(model, residual_scale=0.0)
    path = tmp_path_factory.mktemp("model") / "identity.safetensors"
    save_weights(model, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(2):
        write_png(root / f"photo{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NRP_DEPLOY_CACHE", str(tmp_path / "cache"))  # the ONNX export lands here
    torch.set_num_threads(1)


def test_demo_attacks_purifies_and_reports(identity_purifier, photos, tmp_path, capsys):
    out = tmp_path / "out"
    report = run_demo(out, model=identity_purifier, images=photos, iterations=1, progress=False)
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "grid_none.png", "grid_ssp.png"}
    data = json.loads((out / "report.json").read_text())
    by_attack = {a["attack"]: a for a in data["attacks"]}
    assert set(by_attack) == {"none", "ssp"}
    assert by_attack["none"]["images"] == by_attack["ssp"]["images"] == 2
    # The identity purifier returns clean images unchanged, and SSP moved the attacked ones.
    assert by_attack["none"]["agreement"]["purified"] == 1.0
    assert by_attack["none"]["psnr_purified_db"] is None or by_attack["none"]["psnr_purified_db"] > 60
    assert by_attack["ssp"]["psnr_adversarial_db"] < 40
    assert by_attack["ssp"]["psnr_purified_db"] == pytest.approx(
        by_attack["ssp"]["psnr_adversarial_db"], abs=0.1
    )
    printed = capsys.readouterr()
    assert "| ssp" in printed.out and "| none" in printed.out
    assert "done in" in printed.err
    assert report.results[1].name == "ssp"


def test_demo_command_line(identity_purifier, photos, tmp_path):
    out = tmp_path / "cli"
    argv = ["demo", "-o", str(out), "--model", str(identity_purifier), "--images", str(photos)]
    assert main([*argv, "--iterations", "1", "--backend", "torch", "--no-progress"]) == 0
    assert (out / "grid_ssp.png").is_file()


def test_demo_refuses_a_folder_without_images(tmp_path):
    with pytest.raises(InputError, match="not a folder with images"):
        run_demo(tmp_path / "out", images=tmp_path / "missing")


def test_the_example_images_are_there():
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.png")), "the packaged example photos are missing"


def test_demo_with_the_shipped_default_purifier_restores_attacked_photos(tmp_path):
    """The real default purifier (NRP_resG, 6 blocks) on two example photos, one SSP iteration: clean photos
    pass nearly unchanged, without a colour cast, and keep their class, and the purified adversaries are
    closer to the clean photos than the adversaries were (what a purifier is for). This measures again what
    the manifest's metrics claim (test_training.py checks only that they are recorded consistently)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        (photos / name).write_bytes((EXAMPLES_DIR / name).read_bytes())
    run_demo(tmp_path / "out", images=photos, iterations=1, progress=False)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["settings"]["defence"].startswith("NRP_resG(in_nc=3, out_nc=3, nf=64, nb=6)")
    by_attack = {a["attack"]: a for a in data["attacks"]}
    assert by_attack["none"]["agreement"]["purified"] == 1.0
    assert by_attack["none"]["psnr_purified_db"] > 35.0
    clean = by_attack["none"]["fidelity"]["purified"]  # re-measured here, not read from the manifest
    assert clean["ciede2000"] < 3 and all(abs(v) < 2 for v in clean["rgb_shift"])  # no colour cast
    ssp = by_attack["ssp"]
    assert ssp["psnr_purified_db"] > ssp["psnr_adversarial_db"] + 2.0
