"""The transfer attacks (torchattacks' MI-FGSM, DI-FGSM, TI-DIM) on a source ensemble, and saved adversaries
rounded inside their budget."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nrp_deploy.attacks.files import round_within_budget, tensor_to_images
from nrp_deploy.attacks.transfer import TRANSFER_ATTACKS, LossEnsemble, transfer_attack
from nrp_deploy.errors import BackendUnavailableError, InputError

NUM_CLASSES = 10


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, NUM_CLASSES),
    )
    return net.eval().requires_grad_(False)


def _images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(4))


def test_the_ensemble_cross_entropy_is_the_mean_of_the_sources_and_so_is_its_gradient():
    sources = [_net(0), _net(1), _net(2)]
    ensemble = LossEnsemble(sources)
    x = _images().requires_grad_(True)
    labels = torch.arange(8) % NUM_CLASSES
    got = F.cross_entropy(ensemble(x), labels)
    expected = torch.stack([F.cross_entropy(s(x), labels) for s in sources]).mean()
    assert torch.allclose(got, expected, atol=1e-5)
    (g_got,) = torch.autograd.grad(got, x)
    (g_expected,) = torch.autograd.grad(expected, x)
    assert torch.allclose(g_got, g_expected, atol=1e-6)
    logit_mean = torch.stack([s(x) for s in sources]).mean(0)  # the other ensemble: not what is attacked
    assert not torch.allclose(F.cross_entropy(logit_mean, labels), expected, atol=1e-3)
    ensemble.train()
    assert not any(m.training for m in ensemble.modules())
    assert torch.equal(LossEnsemble([sources[0]])(x), sources[0](x))  # one source: its own logits


@pytest.mark.parametrize("name", TRANSFER_ATTACKS)
def test_transfer_attacks_fool_their_sources_within_the_budget_and_replay_from_the_seed(name):
    pytest.importorskip("torchattacks")
    sources = [_net(0), _net(1)]
    x = _images()
    eps = 8 / 255
    adv = transfer_attack(name, x, sources, eps=eps, iterations=5, generator=torch.Generator().manual_seed(0))
    again = transfer_attack(
        name, x, sources, eps=eps, iterations=5, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(adv, again)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ensemble = LossEnsemble(sources)
    before = ensemble.predict(x)
    # TI smooths the gradient with a 15x15 kernel, which on 16 px images leaves it the weakest of the three
    assert (ensemble.predict(adv) != before).float().mean() >= (0.25 if name == "ti-dim" else 0.5)
    state = torch.random.get_rng_state()
    transfer_attack(name, x, sources, eps=eps, iterations=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


def test_a_missing_torchattacks_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        transfer_attack("mi-fgsm", _images(2), [_net(0)])


def test_transfer_attack_rejects_bad_requests():
    with pytest.raises(InputError, match="unknown transfer attack"):
        transfer_attack("si-fgsm", _images(2), [_net(0)])
    with pytest.raises(InputError, match="at least one source"):
        LossEnsemble([])
    with pytest.raises(InputError, match="target labels"):
        transfer_attack("mi-fgsm", _images(2), [_net(0)], targeted=True)


def test_saved_adversaries_are_rounded_inside_a_budget_off_the_255_grid():
    clean = np.full((1, 4, 4, 3), 100, dtype=np.uint8)
    eps = 0.01  # 2.55 levels: plain rounding of clean + eps gives 103, i.e. 3/255 = 0.0118 > eps
    adv = torch.full((1, 3, 4, 4), 100 / 255 + eps)
    assert int(tensor_to_images(adv).max()) == 103
    kept = tensor_to_images(adv, clean, eps)
    assert int(kept.max()) == 102 and np.abs(kept.astype(int) - 100).max() / 255 <= eps
    assert round_within_budget(np.full_like(clean, 116), clean, 16 / 255).max() == 116  # on the grid: kept
    low = np.zeros_like(clean)
    assert round_within_budget(np.full_like(clean, 9), low, 8 / 255).max() == 8
