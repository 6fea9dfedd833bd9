"""scripts/blend_weights.py: weight-space blends of two purifiers of one architecture."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def blend_module(load_script):
    return load_script("blend_weights")


def _tiny(seed: int, nb: int = 1) -> dict[str, torch.Tensor]:
    from nrp_deploy.models.spec import ModelSpec

    torch.manual_seed(seed)
    return ModelSpec("NRP_resG", {"nf": 4, "nb": nb}).build().state_dict()


def test_blend_is_the_weighted_sum_and_loads_as_the_architecture(blend_module, tmp_path, monkeypatch) -> None:
    a, b = _tiny(0), _tiny(1)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    out = tmp_path / "blend.safetensors"
    argv = ["blend_weights.py", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    monkeypatch.setattr(sys, "argv", [*argv, "--alpha", "0.25", "--out", str(out)])
    assert blend_module.main() == 0
    blended = load_file(out)
    for key in a:
        torch.testing.assert_close(blended[key], 0.75 * a[key] + 0.25 * b[key])
    from nrp_deploy.models import load_model

    assert load_model(out).spec.config["nb"] == 1


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_ends_are_the_inputs(blend_module, alpha: float) -> None:
    a, b = _tiny(0), _tiny(1)
    end = b if alpha else a
    blended = blend_module.blend(a, b, alpha)
    assert all(torch.equal(blended[k], end[k]) for k in a)


def test_different_architectures_are_refused(blend_module, tmp_path, monkeypatch, capsys) -> None:
    save_file(_tiny(0, nb=1), tmp_path / "a.safetensors")
    save_file(_tiny(1, nb=2), tmp_path / "b.safetensors")
    argv = ["blend_weights.py", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    monkeypatch.setattr(sys, "argv", [*argv, "--alpha", "0.5", "--out", str(tmp_path / "out.safetensors")])
    assert blend_module.main() == 1
    assert "different tensors" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
