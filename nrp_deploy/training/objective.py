"""The NRP training objective: feature loss + pixel loss (+ fidelity terms and the relativistic adversarial
loss, each optional).

The paper trains the purifier P so that the features of a purified adversary, F(P(x')), match the clean
features F(x) (the perturbation's effect on the representation is undone) while P(x') stays close to x in
pixels (so the output is still the photo). The adversarial term, a relativistic average discriminator as
in ESRGAN, asks that purified images look no less real than clean ones; it sharpens output but is slow on
a CPU, so it is off unless given a weight.

Two fidelity terms keep a purifier from paying for robustness with the photo itself: an identity term on
the clean crops of a batch (a clean photo must come out unchanged) and a low-frequency term (block means of
purified and clean images must match), which penalises colour casts and brightness shifts directly; a
per-pixel L1 barely notices a small shift spread over a whole image, the eye and a classifier do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_loss(purified_features: torch.Tensor, clean_features: torch.Tensor) -> torch.Tensor:
    """Mean absolute feature difference relative to the clean features' mean magnitude.

    L1 is less dominated by a few large activations than L2, and the relative scale makes the loss weights
    mean the same whichever extractor layer is chosen (raw activation scales differ by orders of magnitude).
    """
    scale = clean_features.detach().abs().mean().clamp_min(1e-8)
    return (purified_features - clean_features).abs().mean() / scale


def pixel_loss(purified: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return (purified - clean).abs().mean()


def lowfreq_loss(purified: torch.Tensor, clean: torch.Tensor, kernel: int = 8) -> torch.Tensor:
    """Mean absolute difference of ``kernel`` x ``kernel`` block means: colour and brightness fidelity."""
    return (F.avg_pool2d(purified, kernel) - F.avg_pool2d(clean, kernel)).abs().mean()


class Discriminator(nn.Module):
    """A small patch discriminator: strided convolutions to a map of real-vs-purified logits."""

    def __init__(self, nf: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(depth):
            out_ch = nf * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def relativistic_losses(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss, generator loss) of the relativistic average GAN.

    The discriminator learns that clean images look more real than the average purified one, and the
    purifier the reverse. Callers detach the side that a loss must not train.
    """
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    ones, zeros = torch.ones_like(real_rel), torch.zeros_like(real_rel)
    bce = F.binary_cross_entropy_with_logits
    d_loss = (bce(real_rel, ones) + bce(fake_rel, zeros)) / 2
    g_loss = (bce(real_rel, zeros) + bce(fake_rel, ones)) / 2
    return d_loss, g_loss


@torch.no_grad()
def identity_init(model: nn.Module, residual_scale: float = 0.1) -> None:
    """Start an NRP_resG purifier close to the identity map, so training learns only the correction.

    conv_first copies the three input channels into its first three (positive, so the LeakyReLU passes
    them), residual branches are scaled down, and conv_last reads the copy back out plus a small random
    term. From scratch the network spends most of a short CPU budget learning to reproduce the image.
    """
    needed = ("conv_first", "conv_last", "recon_trunk")
    if not all(hasattr(model, name) for name in needed):
        raise ValueError("identity_init needs an NRP_resG module (conv_first, recon_trunk, conv_last)")
    in_nc = model.conv_first.weight.shape[1]
    out_nc = model.conv_last.weight.shape[0]
    if model.conv_first.weight.shape[0] < in_nc or in_nc != out_nc:
        raise ValueError("identity_init needs nf >= in_nc == out_nc")
    for block in model.recon_trunk:
        block.conv2.weight.mul_(residual_scale)
        block.conv2.bias.zero_()
    for c in range(in_nc):
        model.conv_first.weight[c].zero_()
        model.conv_first.weight[c, c, 1, 1] = 1.0
        model.conv_first.bias[c] = 0.0
    model.conv_last.weight.mul_(residual_scale)
    model.conv_last.bias.zero_()
    for c in range(out_nc):
        model.conv_last.weight[c, c, 1, 1] += 1.0
