"""Classifiers the attacks and the evaluation aim at: [0, 1] NCHW images in, ImageNet logits out.

Any torch module with that contract can be used instead (PGD and ``evaluate`` take a module); this file
only provides the one that ships with the attack extra. It accepts any image size (global average pooling),
though it was trained at 224x224, the size of the example images.
"""

from __future__ import annotations

import torch
from torch import nn

from nrp_deploy.attacks.backbones import LITE0_MEAN, LITE0_STD, Normalize, efficientnet_lite0
from nrp_deploy.errors import InputError

CLASSIFIERS = ("efficientnet_lite0",)


def load_classifier(name: str = "efficientnet_lite0", device: str | torch.device = "cpu") -> nn.Module:
    """A frozen eval-mode ImageNet classifier with its input normalisation inside."""
    if name != "efficientnet_lite0":
        raise InputError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    model = nn.Sequential(Normalize(LITE0_MEAN, LITE0_STD), efficientnet_lite0())
    model.requires_grad_(False)
    return model.eval().to(device)
