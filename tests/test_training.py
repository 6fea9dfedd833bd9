"""The training loop on tiny data: the loss goes down, resume is exact, checkpoints and configs are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nrp_deploy.assets import examples_dir
from nrp_deploy.errors import CheckpointError, InputError
from nrp_deploy.fileutil import sha256_file
from nrp_deploy.images import write_png
from nrp_deploy.models import load_model
from nrp_deploy.training import TrainConfig, train
from nrp_deploy.training.data import SKIMAGE_HELD_OUT, SKIMAGE_TRAIN, Augment, CropSampler, skimage_data_dir
from nrp_deploy.training.objective import identity_init, relativistic_losses
from nrp_deploy.training.publish import publish_model


class TinyFeatures(nn.Module):
    """A fixed random conv stand-in for EfficientNet-Lite0: two strided convs with a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(123)
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3, generator=gen) * 0.5, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(8, 8, 3, 3, generator=gen) * 0.3, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(nn.functional.conv2d(x, self.w1, stride=2, padding=1))
        return nn.functional.conv2d(h, self.w2, stride=2, padding=1)


class TinyClassifier(nn.Module):
    """A fixed random stand-in for an ImageNet classifier: a strided conv, global pooling, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(16, 3, 3, 3, generator=gen), requires_grad=False)
        self.head = nn.Parameter(torch.randn(10, 16, generator=gen), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(nn.functional.conv2d(x - 0.5, self.w, stride=2, padding=1)).mean((2, 3))
        return h @ self.head.t()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Three small smooth 'photos' (gradients plus blobs) so crops differ but have structure."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    for i in range(3):
        channels = [np.sin(3 * xx * (c + 1) + i) * np.cos(2 * yy + c) for c in range(3)]
        image = (np.stack(channels, -1) * 0.4 + 0.5 + rng.normal(0, 0.02, (40, 48, 3))).clip(0, 1)
        write_png(root / f"p{i}.png", (image * 255).round().astype(np.uint8))
    return root


def tiny_config(data, **overrides) -> TrainConfig:
    base = dict(
        data=str(data),
        model_config={"nf": 8, "nb": 1},
        steps=6,
        batch_size=4,
        crop=16,
        lr=3e-3,
        lr_min=3e-3,
        ssp_iterations=2,
        ssp_step=0.03,
        checkpoint_every=3,
        log_every=1,
        max_zoom=1.5,
    )
    return TrainConfig(**{**base, **overrides})


def _run(config, run_dir, resume=False):
    torch.set_num_threads(1)
    classifiers = [TinyClassifier() for _ in config.classifiers]
    return train(
        config, run_dir, resume=resume, progress=False, features=TinyFeatures(), classifiers=classifiers
    )


def test_training_lowers_the_loss(photo_dir, tmp_path):
    # Random init (no identity start), so there is a large reconstruction error to learn away.
    config = tiny_config(photo_dir, steps=40, identity_init=False, log_every=10, checkpoint_every=40)
    result = _run(config, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["total"] < 0.5 * log[0]["total"]
    assert log[-1]["pixel"] < log[0]["pixel"]
    assert result.steps == 40
    loaded = load_model(result.weights)  # the weights alone load as a normal purifier
    assert loaded.spec.to_dict() == {
        "architecture": "NRP_resG",
        "config": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 1},
    }


def test_resume_continues_from_the_saved_step_with_identical_state(photo_dir, tmp_path):
    straight = _run(tiny_config(photo_dir, steps=6), tmp_path / "straight")
    _run(tiny_config(photo_dir, steps=3), tmp_path / "split")
    first_half = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert first_half["step"] == 3
    resumed = _run(tiny_config(photo_dir, steps=6), tmp_path / "split", resume=True)
    steps_logged = [
        json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    ]
    assert steps_logged == [1, 2, 3, 4, 5, 6]  # continued at step 4, nothing repeated
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert resumed.steps == straight.steps == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    torch.testing.assert_close(a["rng"]["data"], b["rng"]["data"], rtol=0, atol=0)
    assert resumed.losses == pytest.approx(straight.losses)


def test_resume_refuses_a_changed_configuration_and_a_missing_checkpoint(photo_dir, tmp_path):
    _run(tiny_config(photo_dir, steps=1, checkpoint_every=1), tmp_path / "run")
    with pytest.raises(InputError, match="--resume"):
        _run(tiny_config(photo_dir, steps=2), tmp_path / "run")
    with pytest.raises(CheckpointError, match="pixel_weight"):
        _run(tiny_config(photo_dir, steps=2, pixel_weight=2.0), tmp_path / "run", resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        _run(tiny_config(photo_dir), tmp_path / "other", resume=True)


def test_bad_configurations_are_refused(photo_dir, tmp_path):
    with pytest.raises(InputError, match="smaller than the crop"):
        _run(tiny_config(photo_dir, crop=64), tmp_path / "a")
    with pytest.raises(InputError, match="no images"):
        _run(tiny_config(tmp_path), tmp_path / "b")
    with pytest.raises(InputError, match="lr_min"):
        _run(tiny_config(photo_dir, lr=1e-3, lr_min=1e-2), tmp_path / "e")
    with pytest.raises(InputError, match="clean_fraction"):
        _run(tiny_config(photo_dir, clean_fraction=1.5), tmp_path / "c")
    with pytest.raises(InputError, match="identity"):
        _run(tiny_config(photo_dir, architecture="NRP", model_config={"nf": 8, "nb": 1}), tmp_path / "d")
    with pytest.raises(InputError, match="clean crops"):
        _run(tiny_config(photo_dir, clean_fraction=0.0, identity_weight=1.0), tmp_path / "f")
    with pytest.raises(InputError, match="lowfreq_kernel"):
        _run(tiny_config(photo_dir, lowfreq_weight=1.0, lowfreq_kernel=32), tmp_path / "g")
    with pytest.raises(InputError, match="--no-identity-init"):
        _run(tiny_config(photo_dir, init_weights=str(tmp_path / "w.safetensors")), tmp_path / "h")


def test_fidelity_terms_are_trained_and_logged(photo_dir, tmp_path):
    config = tiny_config(photo_dir, steps=2, identity_weight=2.0, lowfreq_weight=3.0, lowfreq_kernel=4)
    result = _run(config, tmp_path / "run")
    losses = result.losses
    assert {"identity", "lowfreq"} <= set(losses)
    weighted = losses["feature"] + 5 * losses["pixel"] + 2 * losses["identity"] + 3 * losses["lowfreq"]
    assert losses["total"] == pytest.approx(weighted, rel=1e-5)


def test_pgd_adversaries_and_the_logit_term_are_trained_and_logged(photo_dir, tmp_path):
    config = tiny_config(
        photo_dir, steps=2, classifiers=["tiny"], pgd_fraction=0.5, pgd_iterations=2, logit_weight=2.0
    )
    result = _run(config, tmp_path / "run")
    losses = result.losses
    assert "logit" in losses
    assert losses["total"] == pytest.approx(
        losses["feature"] + 5 * losses["pixel"] + 2 * losses["logit"], rel=1e-5
    )
    assert "--classifiers tiny --pgd-fraction 0.5" in config.command("out")


def test_pgd_crops_follow_the_clean_ones_and_move_the_classifier_within_the_budget(photo_dir):
    from nrp_deploy.training.loop import _Trainer

    torch.set_num_threads(1)
    config = tiny_config(
        photo_dir, batch_size=8, classifiers=["tiny"], pgd_fraction=0.5, pgd_iterations=4, noise_fraction=0.0
    )
    classifier = TinyClassifier()
    trainer = _Trainer(config, TinyFeatures(), [classifier])
    clean = trainer.sampler.sample(8)
    inputs = trainer._inputs(clean, classifier)
    n_clean = round(config.clean_fraction * 8)  # 2 clean, then 3 PGD, then 3 SSP
    torch.testing.assert_close(inputs[:n_clean], clean[:n_clean], rtol=0, atol=0)
    assert (inputs - clean).abs().amax() <= config.eps + 1e-6
    assert (inputs[n_clean:] - clean[n_clean:]).abs().amax((1, 2, 3)).min() > config.eps / 4
    with torch.no_grad():
        moved = (classifier(inputs) - classifier(clean)).abs().sum(1)
    pgd, ssp = moved[n_clean : n_clean + 3], moved[n_clean + 3 :]
    assert pgd.min() > 0 and pgd.mean() > ssp.mean()  # aimed at the logits, PGD moves them most


def test_noisy_clean_crops_carry_the_dynamic_defence_input_and_train_back_to_clean(photo_dir):
    from nrp_deploy.kernels.philox import PUBLISHED_EPS
    from nrp_deploy.training.loop import _Trainer

    torch.set_num_threads(1)
    config = tiny_config(
        photo_dir, batch_size=8, clean_fraction=0.5, clean_noise_fraction=0.5, noise_fraction=0.0
    )
    trainer = _Trainer(config, TinyFeatures(), [])
    clean = trainer.sampler.sample(8)
    inputs = trainer._inputs(clean, None)
    # 4 clean crops: the first 2 untouched, the next 2 with the published noise inside its eps-ball
    torch.testing.assert_close(inputs[:2], clean[:2], rtol=0, atol=0)
    change = (inputs[2:4] - clean[2:4]).abs()
    assert change.amax() <= PUBLISHED_EPS + 1e-6
    assert change.mean((1, 2, 3)).min() > 0.01
    with pytest.raises(InputError, match="clean_noise_fraction"):
        tiny_config(photo_dir, clean_noise_fraction=1.5).validate()


def test_transfer_adversaries_come_from_the_ensemble_within_the_budget(photo_dir):
    from nrp_deploy.training.loop import _Trainer

    torch.set_num_threads(1)
    config = tiny_config(
        photo_dir,
        batch_size=8,
        classifiers=["tiny", "tiny"],
        pgd_fraction=0.5,
        transfer_fraction=1.0,
        transfer_iterations=4,
        transfer_ti_kernel=5,
        noise_fraction=0.0,
    )
    members = [TinyClassifier(), TinyClassifier()]
    members[1].head.data = -members[1].head.data  # two sources that disagree
    trainer = _Trainer(config, TinyFeatures(), members)
    clean = trainer.sampler.sample(8)
    inputs = trainer._inputs(clean, members[0])
    n_clean = round(config.clean_fraction * 8)  # 2 clean, then 3 transfer adversaries, then 3 SSP
    torch.testing.assert_close(inputs[:n_clean], clean[:n_clean], rtol=0, atol=0)
    assert (inputs - clean).abs().amax() <= config.eps + 1e-6
    assert (inputs[n_clean:] - clean[n_clean:]).abs().amax((1, 2, 3)).min() > config.eps / 4
    transfer = slice(n_clean, n_clean + 3)

    def ensemble_log_p(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log_softmax(m(x), 1) for m in members]).mean(0)

    with torch.no_grad():
        labels = ensemble_log_p(clean[transfer]).argmax(1, keepdim=True)  # the sources' clean consensus
        before = ensemble_log_p(clean[transfer]).gather(1, labels).mean()
        after = ensemble_log_p(inputs[transfer]).gather(1, labels).mean()
    assert after < before  # the adversaries climbed the ensemble's averaged loss
    assert not members[0].training and not members[1].training  # attack libraries cannot unpin eval mode
    with pytest.raises(InputError, match="TI kernel"):
        tiny_config(photo_dir, classifiers=["tiny"], transfer_fraction=0.5, transfer_ti_kernel=0).validate()
    with pytest.raises(InputError, match="--classifiers"):
        tiny_config(photo_dir, transfer_fraction=0.5).validate()


def test_snapshots_keep_intermediate_weights(photo_dir, tmp_path):
    result = _run(tiny_config(photo_dir, steps=4, snapshot_every=2), tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert names == ["step_000002.safetensors", "step_000004.safetensors"]
    assert sha256_file(tmp_path / "run" / "snapshots" / names[-1]) == sha256_file(result.weights)
    load_model(tmp_path / "run" / "snapshots" / names[0])


def test_pgd_and_the_logit_term_need_a_classifier(photo_dir, tmp_path):
    with pytest.raises(InputError, match="--classifiers"):
        _run(tiny_config(photo_dir, pgd_fraction=0.5), tmp_path / "a")
    with pytest.raises(InputError, match="--classifiers"):
        _run(tiny_config(photo_dir, logit_weight=1.0), tmp_path / "b")
    with pytest.raises(InputError, match="pgd_fraction"):
        _run(tiny_config(photo_dir, classifiers=["tiny"], pgd_fraction=2.0), tmp_path / "c")


def test_a_run_saved_before_newer_settings_existed_still_resumes(photo_dir, tmp_path):
    _run(tiny_config(photo_dir, steps=2, checkpoint_every=2), tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for key in ("classifiers", "pgd_fraction", "pgd_iterations", "pgd_step", "logit_weight"):
        del state["config"][key]
    torch.save(state, path)
    assert _run(tiny_config(photo_dir, steps=3), tmp_path / "run", resume=True).steps == 3


def test_lowfreq_loss_sees_a_colour_cast_that_pixel_noise_hides():
    from nrp_deploy.training.objective import lowfreq_loss, pixel_loss

    clean = torch.rand(1, 3, 16, 16)
    cast = clean + torch.tensor([0.0, 0.0, 0.03]).view(1, 3, 1, 1)  # a blue cast
    checkerboard = (torch.arange(16).view(16, 1) + torch.arange(16).view(1, 16)) % 2 * 2.0 - 1.0
    noise = clean + 0.09 * checkerboard  # high-frequency, zero mean over every block, larger L1
    assert pixel_loss(noise, clean) > pixel_loss(cast, clean)
    assert lowfreq_loss(cast, clean, 8) > 2 * lowfreq_loss(noise, clean, 8)


def test_fine_tuning_starts_from_given_weights_and_refuses_others(photo_dir, tmp_path):
    from nrp_deploy.models.spec import ModelSpec
    from nrp_deploy.training import save_weights

    torch.manual_seed(3)
    start = ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build()
    save_weights(start, tmp_path / "start.safetensors")
    config = tiny_config(
        photo_dir,
        steps=1,
        identity_init=False,
        init_weights=str(tmp_path / "start.safetensors"),
        lr=1e-9,
        lr_min=1e-9,
    )
    result = _run(config, tmp_path / "run")
    tuned = load_model(result.weights).module
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], tensor, atol=1e-6, rtol=0)  # lr ~0: unchanged
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["init_weights_sha256"] == sha256_file(tmp_path / "start.safetensors")
    save_weights(ModelSpec("NRP_resG", {"nf": 8, "nb": 2}).build(), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not hold NRP_resG"):
        _run(
            tiny_config(photo_dir, identity_init=False, init_weights=str(tmp_path / "other.safetensors")),
            tmp_path / "run2",
        )


def test_shallower_resg_weights_start_a_deeper_purifier_as_the_same_function(photo_dir, tmp_path):
    from nrp_deploy.models.spec import ModelSpec
    from nrp_deploy.training import save_weights

    torch.manual_seed(4)
    start = ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().eval()
    with torch.no_grad():  # a trained-looking block, not the near-identity init
        for p in start.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_weights(start, tmp_path / "start.safetensors")
    config = tiny_config(
        photo_dir,
        steps=1,
        model_config={"nf": 8, "nb": 3},
        identity_init=False,
        init_weights=str(tmp_path / "start.safetensors"),
        lr=1e-9,
        lr_min=1e-9,
    )
    deeper = load_model(_run(config, tmp_path / "run").weights).module.eval()
    assert len(deeper.recon_trunk) == 3
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(deeper(x), start(x), atol=1e-5, rtol=0)
        assert deeper.recon_trunk[2].conv1.weight.abs().sum() > 0  # fresh, not zero: it can learn
    # NRP's RRDB blocks have no exact identity: a shallower NRP is refused, as any other mismatch
    save_weights(ModelSpec("NRP", {"nf": 8, "nb": 1, "gc": 4}).build(), tmp_path / "nrp.safetensors")
    refused = tiny_config(
        photo_dir,
        architecture="NRP",
        model_config={"nf": 8, "nb": 2, "gc": 4},
        identity_init=False,
        init_weights=str(tmp_path / "nrp.safetensors"),
    )
    with pytest.raises(CheckpointError, match="does not hold NRP"):
        _run(refused, tmp_path / "run2")


def test_adversarial_loss_option_trains_a_discriminator(photo_dir, tmp_path):
    config = tiny_config(photo_dir, steps=2, adv_weight=0.01, checkpoint_every=2)
    result = _run(config, tmp_path / "run")
    assert {"adv", "disc"} <= set(result.losses)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "discriminator" in state and "d_optimizer" in state


def test_relativistic_losses_prefer_the_right_side():
    real, fake = torch.full((4, 1), 3.0), torch.full((4, 1), -3.0)
    d_good, g_bad = relativistic_losses(real, fake)
    d_bad, g_good = relativistic_losses(fake, real)
    assert d_good < d_bad and g_good < g_bad


def test_identity_init_starts_at_the_identity():
    from nrp_deploy.models.spec import ModelSpec

    torch.manual_seed(0)
    model = ModelSpec("NRP_resG", {"nf": 16, "nb": 2}).build()
    identity_init(model, residual_scale=0.0)
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(model(x), x)


def test_crops_are_seeded_and_augmented():
    images = [np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)]
    a = CropSampler(images, 16, Augment(), torch.Generator().manual_seed(5)).sample(6)
    b = CropSampler(images, 16, Augment(), torch.Generator().manual_seed(5)).sample(6)
    c = CropSampler(images, 16, Augment(), torch.Generator().manual_seed(6)).sample(6)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_skimage_training_photos_are_shipped_and_exclude_the_examples():
    root = skimage_data_dir()
    assert all((root / name).is_file() for name in SKIMAGE_TRAIN + SKIMAGE_HELD_OUT)
    example_stems = {p.stem for p in examples_dir().glob("*.png")}
    train_stems = {name.rsplit(".", 1)[0] for name in SKIMAGE_TRAIN}
    assert example_stems, "the packaged example photos are missing"
    assert not example_stems & train_stems
    assert example_stems <= {name.rsplit(".", 1)[0] for name in SKIMAGE_HELD_OUT}


def test_publish_adds_a_verified_registry_entry_and_keeps_the_others(photo_dir, tmp_path, monkeypatch):
    run = _run(tiny_config(photo_dir, steps=2), tmp_path / "run")
    models = tmp_path / "models"
    models.mkdir()
    other = {"name": "NRP", "file": "NRP.pth", "architecture": "NRP", "config": {"nf": 64}, "sha256": None}
    (models / "manifest.json").write_text(json.dumps({"format": 1, "models": [other]}))
    report = {
        "settings": {"images": 2, "iterations": 3},
        "attacks": [{"attack": "ssp", "eps": 0.06, "images": 2, "psnr_purified_db": 30.0, "per_image": [{}]}],
    }
    for _ in range(2):  # publishing again replaces the entry instead of adding a second one
        target = publish_model(run.run_dir, "tiny", metrics={"examples": report}, directory=models)
    manifest = json.loads((models / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["NRP", "tiny"]
    assert manifest["models"][0] == other
    entry = manifest["models"][1]
    assert entry["file"] == "tiny.safetensors" and target == models / "tiny.safetensors"
    assert entry["sha256"] == sha256_file(target) == sha256_file(run.weights)
    assert entry["metrics"] == {
        "examples": {
            "settings": {"images": 2, "iterations": 3},
            "attacks": {"ssp": {"eps": 0.06, "images": 2, "psnr_purified_db": 30.0}},
        }
    }
    worst = {"black-box": {"defences": {"purified": {"worst_case": 0.5, "recovered_points": 25.0}}}}
    publish_model(
        run.run_dir, "tiny", metrics={"heldout": {**report, "threat_models": worst}}, directory=models
    )
    entry = json.loads((models / "manifest.json").read_text())["models"][1]
    assert entry["metrics"]["heldout"]["threat_models"] == worst  # the threat models' worst cases are kept
    assert entry["training"]["steps"] == 2
    assert entry["training"]["command"].startswith(f"nrp train --out {run.run_dir} --data {photo_dir}")
    monkeypatch.setenv("NRP_DEPLOY_MODELS_DIR", str(models))
    assert load_model("tiny").spec.config["nf"] == 8


def test_publish_describes_a_photo_corpus_from_its_manifest(photo_dir, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    for image in sorted(photo_dir.glob("*.png")):
        (corpus / "train" / image.name).write_bytes(image.read_bytes())
    photos = [
        {"id": "p0", "split": "train"},
        {"id": "h1", "split": "heldout"},
        {"id": "p1", "split": "train"},
        {"id": "v0", "split": "validation"},
    ]
    (corpus / "manifest.json").write_text(json.dumps({"format": 1, "photos": photos}))
    run = _run(tiny_config(corpus / "train", steps=1), tmp_path / "run")
    publish_model(run.run_dir, "tiny", directory=tmp_path / "models")
    entry = json.loads((tmp_path / "models" / "manifest.json").read_text())["models"][0]
    data = entry["training"]["data"]
    assert data["train"] == ["p0", "p1"] and data["held_out"] == ["h1"] and data["validation"] == ["v0"]
    assert data["manifest_sha256"] == sha256_file(corpus / "manifest.json")
    assert entry["training"]["init_weights_sha256"] is None


def test_publish_names_the_pgd_adversaries_and_the_logit_term(photo_dir, tmp_path):
    config = tiny_config(photo_dir, steps=1, classifiers=["tiny"], pgd_fraction=0.5, logit_weight=1.0)
    run = _run(config, tmp_path / "run")
    publish_model(run.run_dir, "tiny", directory=tmp_path / "models")
    entry = json.loads((tmp_path / "models" / "manifest.json").read_text())["models"][0]
    assert (
        "SSP adversaries on efficientnet_lite0 features and PGD (50% of the adversaries) on tiny logits"
        in (entry["provenance"])
    )
    assert "feature + pixel + logit loss" in entry["provenance"]
    assert "--classifiers tiny" in entry["training"]["command"]


def test_publish_a_chosen_snapshot_names_its_step_and_the_new_training_inputs(photo_dir, tmp_path):
    config = tiny_config(
        photo_dir,
        steps=4,
        snapshot_every=2,
        clean_fraction=0.5,
        clean_noise_fraction=0.5,
        classifiers=["tiny"],
        pgd_fraction=0.5,
        transfer_fraction=0.5,
        transfer_iterations=2,
    )
    run = _run(config, tmp_path / "run")
    snapshot = run.run_dir / "snapshots" / "step_000002.safetensors"
    target = publish_model(run.run_dir, "tiny", directory=tmp_path / "models", snapshot=snapshot)
    entry = json.loads((tmp_path / "models" / "manifest.json").read_text())["models"][0]
    assert entry["sha256"] == sha256_file(snapshot) == sha256_file(target) != sha256_file(run.weights)
    assert entry["training"]["steps"] == 2 and entry["training"]["run_steps"] == 4
    assert "2 steps, a snapshot of a 4-step run," in entry["provenance"]
    assert "MI-FGSM / DI-FGSM / TI-DIM on their logit ensemble" in entry["provenance"]
    assert "dynamic defence's noise trained back to clean" in entry["provenance"]
    for foreign in (run.weights, tmp_path / "run" / "snapshots" / "step_000009.safetensors"):
        with pytest.raises(InputError, match="not a snapshot"):
            publish_model(run.run_dir, "tiny", directory=tmp_path / "models", snapshot=foreign)


def test_publish_refuses_an_unfinished_run_and_foreign_metrics(photo_dir, tmp_path):
    with pytest.raises(InputError, match="not finished"):
        publish_model(tmp_path, "x", directory=tmp_path)
    run = _run(tiny_config(photo_dir, steps=1), tmp_path / "run")
    with pytest.raises(InputError, match="nrp eval"):
        publish_model(run.run_dir, "x", metrics={"a": {"psnr": 1}}, directory=tmp_path / "models")


@pytest.mark.gpu
def test_training_runs_on_cuda(photo_dir, tmp_path):
    result = train(
        tiny_config(photo_dir, steps=2, device="cuda"),
        tmp_path / "run",
        progress=False,
        features=TinyFeatures(),
    )
    assert result.steps == 2 and load_model(result.weights).spec.config["nf"] == 8


def test_the_shipped_default_purifier_is_registered_verified_and_small():
    """The manifest's record of the default purifier is consistent; test_demo.py measures its clean-photo
    fidelity and its effect on SSP adversaries again, independently of what the manifest says."""
    from nrp_deploy.models.registry import load_manifest, resolve

    manifest = load_manifest()
    assert {"default", "NRP", "NRP_resG"} <= set(manifest)
    resolved = resolve("default")  # raises if the file's sha256 differs from the manifest's
    assert resolved.path.suffix == ".safetensors" and resolved.path.stat().st_size < 10 * 2**20
    entry = manifest["default"]
    corpus = json.loads((Path(__file__).resolve().parents[1] / "corpus" / "manifest.json").read_text())
    held_out = sorted(p["id"] for p in corpus["photos"] if p["split"] == "heldout")
    assert entry.extra["training"]["data"]["held_out"] == held_out  # measured on photos it never saw
    assert not set(held_out) & set(entry.extra["training"]["data"]["train"])
    crops = entry.metrics["heldout_crops"]
    assert crops["settings"]["classifier"] == "efficientnet_lite2"  # a classifier training never used
    ssp = crops["attacks"]["ssp"]
    assert ssp["psnr_purified_db"] > ssp["psnr_adversarial_db"]
    clean = crops["attacks"]["none"]["fidelity"]["purified"]
    assert clean["ciede2000"] < 3 and all(abs(v) < 2 for v in clean["rgb_shift"])  # no colour cast
    loaded = load_model("default")
    assert loaded.spec.to_dict() == {"architecture": entry.architecture, "config": entry.config}
