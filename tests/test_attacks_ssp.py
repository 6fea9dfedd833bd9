"""SSP on tiny feature networks: budget, range, objective, batching, reproducibility, no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nrp_deploy.attacks import feature_distance, ssp_attack
from nrp_deploy.errors import InputError

EPS = 16 / 255


def _tiny_features(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    return net.eval()


def _images(n: int = 3, size: int = 24, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen)


def test_ssp_stays_in_budget_and_range_and_raises_feature_distance():
    features = _tiny_features()
    x = _images()
    x[0, :, :4] = 0.0  # saturated pixels: the clamp to [0, 1] must hold at the edges of the range
    x[1, :, :4] = 1.0
    adv = ssp_attack(x, features, iterations=10, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    start = ssp_attack(x, features, iterations=0, generator=torch.Generator().manual_seed(0))
    assert torch.all(feature_distance(features, adv, x) > feature_distance(features, start, x))


def test_ssp_beats_random_sign_noise_of_the_same_size():
    features = _tiny_features()
    x = _images()
    gen = torch.Generator().manual_seed(3)
    noise = x + EPS * torch.sign(torch.randn(x.shape, generator=gen))
    adv = ssp_attack(x, features, iterations=20, generator=torch.Generator().manual_seed(0))
    assert torch.all(
        feature_distance(features, adv, x) > 2 * feature_distance(features, noise.clamp(0, 1), x)
    )


def test_published_random_start_is_gaussian_noise_projected_into_the_ball():
    x = _images()
    seed = 5
    start = ssp_attack(x, _tiny_features(), iterations=0, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    expected = torch.clamp(torch.min(torch.max(noise, x - EPS), x + EPS), 0, 1)
    assert torch.equal(start, expected)
    on_surface = ((start - x).abs() > EPS - 1e-6) | (start == 0) | (start == 1)
    assert on_surface.float().mean() > 0.9  # N(0, 1) is mostly farther than 16/255 from the pixel


def test_ssp_is_reproducible_with_a_generator():
    features = _tiny_features()
    x = _images(n=4)
    a = ssp_attack(x, features, iterations=5, generator=torch.Generator().manual_seed(7))
    b = ssp_attack(x, features, iterations=5, generator=torch.Generator().manual_seed(7))
    c = ssp_attack(x, features, iterations=5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ssp_leaves_no_trace_on_inputs_modules_or_grad_mode():
    features = _tiny_features()
    for p in features.parameters():
        p.requires_grad_(True)  # even a trainable network must come back without .grad
    features.train()
    x = _images()
    before = x.clone()
    with torch.no_grad():  # the caller's no_grad must not stop the attack
        adv = ssp_attack(x, features, iterations=3)
    assert not torch.equal(adv, x)
    assert torch.equal(x, before) and x.grad is None and not x.requires_grad
    assert all(p.grad is None for p in features.parameters())
    assert features.training and torch.is_grad_enabled()
    assert not adv.requires_grad


def test_ssp_accepts_inference_mode_tensors():
    with torch.inference_mode():
        x = _images()
    adv = ssp_attack(x, _tiny_features(), iterations=2)
    assert (adv - x).abs().max() <= EPS + 1e-6


def test_ssp_rejects_bad_input():
    features = _tiny_features()
    with pytest.raises(InputError, match="NCHW"):
        ssp_attack(torch.rand(3, 8, 8), features)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ssp_attack(torch.rand(1, 3, 8, 8) * 255, features)
    with pytest.raises(InputError, match="NCHW"):
        ssp_attack(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), features)
    with pytest.raises(InputError, match="eps"):
        ssp_attack(torch.rand(1, 3, 8, 8), features, eps=0)
