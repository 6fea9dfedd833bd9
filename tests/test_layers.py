"""The layers compute what the published architecture description says, checked against an independent
functional re-implementation written with torch.nn.functional from the reference text."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nrp_deploy.models import ModelSpec


def _conv(state, name, x):
    return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=1)


def _reference_nrp(state, x, nb):
    def rdb(prefix, h):
        feats = [h]
        for j in range(1, 5):
            feats.append(F.leaky_relu(_conv(state, f"{prefix}.conv{j}", torch.cat(feats, 1)), 0.2))
        return 0.2 * _conv(state, f"{prefix}.conv5", torch.cat(feats, 1)) + h

    h = _conv(state, "conv_first", x)
    for i in range(nb):
        inner = h
        for k in (1, 2, 3):
            inner = rdb(f"RRDB_trunk.{i}.RDB{k}", inner)
        h = 0.2 * inner + h
    return _conv(state, "trunk_conv", h)


def _reference_resg(state, x, nb):
    h = F.leaky_relu(_conv(state, "conv_first", x), 0.1)
    for i in range(nb):
        h = h + _conv(state, f"recon_trunk.{i}.conv2", F.relu(_conv(state, f"recon_trunk.{i}.conv1", h)))
    return _conv(state, "conv_last", h)


def _randomised(spec: ModelSpec, seed: int):
    torch.manual_seed(seed)
    module = spec.build().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module


def test_nrp_matches_functional_reference():
    spec = ModelSpec("NRP", {"nf": 6, "nb": 2, "gc": 4})
    module = _randomised(spec, 0)
    x = torch.rand(2, 3, 17, 23)
    with torch.no_grad():
        expected = _reference_nrp(module.state_dict(), x, nb=2)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_resg_matches_functional_reference():
    spec = ModelSpec("NRP_resG", {"nf": 5, "nb": 3})
    module = _randomised(spec, 1)
    x = torch.rand(2, 3, 19, 16)
    with torch.no_grad():
        expected = _reference_resg(module.state_dict(), x, nb=3)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_hand_set_residual_block_is_identity_plus_scaled_dense_output():
    """With conv5 zeroed each dense block is the identity, so an RRDB gives 0.2 * x + x: the skips are right."""
    spec = ModelSpec("NRP", {"nf": 4, "nb": 1, "gc": 2})
    module = _randomised(spec, 2)
    with torch.no_grad():
        for k in (1, 2, 3):
            block = getattr(module.RRDB_trunk[0], f"RDB{k}")
            block.conv5.weight.zero_()
            block.conv5.bias.zero_()
        h = torch.rand(1, 4, 9, 9)
        torch.testing.assert_close(module.RRDB_trunk(h), 1.2 * h)
        # A constant conv5 bias b makes a dense block add 0.2 * b to its input.
        block = module.RRDB_trunk[0].RDB1
        block.conv5.bias.fill_(1.0)
        torch.testing.assert_close(block(h), h + 0.2)


def test_output_is_not_clamped_and_any_size_works():
    module = _randomised(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}), 3)
    with torch.no_grad():
        y = module(torch.rand(1, 3, 7, 13) * 4)
    assert y.shape == (1, 3, 7, 13)
    assert y.min() < 0 or y.max() > 1
