"""Where registry names find their files: the packaged folder, the user's models folder, a checkout."""

from __future__ import annotations

import json

import pytest

from nrp_deploy.assets import shipped_models_dir
from nrp_deploy.errors import ModelNotFoundError
from nrp_deploy.models import registry
from nrp_deploy.models.registry import MODELS_DIR_ENV, load_manifest, models_dir, resolve, search_dirs
from nrp_deploy.models.spec import ModelSpec


@pytest.fixture
def no_user_folders(tmp_path, monkeypatch):
    """An empty per-user cache and no checkout: only the packaged files and what the test puts in place."""
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(registry, "_checkout_models_dir", lambda: None)
    return tmp_path / "xdg" / "nrp_deploy" / "models"


@pytest.fixture
def tiny_checkpoint(tmp_path):
    import torch

    path = tmp_path / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), path)
    return path


def test_default_is_found_inside_the_package(no_user_folders):
    resolved = resolve("default")
    assert resolved.path.parent == shipped_models_dir()
    assert resolved.entry.location == shipped_models_dir()


def test_the_user_folder_is_the_per_user_cache_unless_the_variable_names_one(no_user_folders, monkeypatch):
    assert models_dir() == no_user_folders and search_dirs() == [no_user_folders]
    monkeypatch.setenv(MODELS_DIR_ENV, "/srv/models")
    assert models_dir().as_posix() == "/srv/models" and search_dirs() == [models_dir()]


def test_published_weights_are_found_in_the_user_folder(no_user_folders, tiny_checkpoint):
    with pytest.raises(ModelNotFoundError) as missing:
        resolve("NRP_resG")
    message = str(missing.value)
    assert str(no_user_folders / "NRP_resG.pth") in message and "NRP_DEPLOY_MODELS_DIR" in message
    no_user_folders.mkdir(parents=True)
    (no_user_folders / "NRP_resG.pth").write_bytes(tiny_checkpoint.read_bytes())
    assert resolve("NRP_resG").path == no_user_folders / "NRP_resG.pth"


def test_a_checkout_saved_models_folder_is_searched_last(
    no_user_folders, tmp_path, monkeypatch, tiny_checkpoint
):
    checkout = tmp_path / "checkout" / "saved_models"
    checkout.mkdir(parents=True)
    (checkout / "NRP.pth").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(registry, "_checkout_models_dir", lambda: checkout)
    assert search_dirs() == [no_user_folders, checkout]
    assert resolve("NRP").path == checkout / "NRP.pth"
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "elsewhere"))  # an explicit folder is the only one
    with pytest.raises(ModelNotFoundError):
        resolve("NRP")


def test_a_user_manifest_adds_and_overrides_entries(no_user_folders, tiny_checkpoint):
    no_user_folders.mkdir(parents=True)
    (no_user_folders / "mine.pth").write_bytes(tiny_checkpoint.read_bytes())
    entry = {"name": "mine", "file": "mine.pth", "architecture": "NRP_resG", "config": {"nf": 8, "nb": 1}}
    (no_user_folders / "manifest.json").write_text(json.dumps({"format": 1, "models": [entry]}))
    manifest = load_manifest()
    assert {"default", "NRP", "NRP_resG", "mine"} <= set(manifest)
    assert resolve("mine").path == no_user_folders / "mine.pth"
    override = {**entry, "name": "default"}
    (no_user_folders / "manifest.json").write_text(json.dumps({"format": 1, "models": [override]}))
    assert resolve("default").path == no_user_folders / "mine.pth"
