"""Classifiers the attacks and the evaluation aim at: [0, 1] NCHW images in, ImageNet logits out.

Any torch module with that contract can be used instead (PGD and ``evaluate`` take a module); this file
only provides the ones that ship with the attack extra: EfficientNet-Lite0 (the default, also the SSP
features the purifiers are trained on), EfficientNet-Lite1 (a second network for training) and
EfficientNet-Lite2 (held out: what the model card evaluates on, never used in training). Each accepts any
image size (global average pooling), though they were trained at 224 to 260 px.
"""

from __future__ import annotations

import torch
from torch import nn

from nrp_deploy.attacks.backbones import LITE0_MEAN, LITE0_STD, LITE_NETWORKS, Normalize, efficientnet_lite
from nrp_deploy.errors import InputError

CLASSIFIERS = tuple(LITE_NETWORKS)


def load_classifier(name: str = "efficientnet_lite0", device: str | torch.device = "cpu") -> nn.Module:
    """A frozen eval-mode ImageNet classifier with its input normalisation inside."""
    if name not in LITE_NETWORKS:
        raise InputError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    # Every Lite network takes the TF Lite input scaling (see backbones).
    model = nn.Sequential(Normalize(LITE0_MEAN, LITE0_STD), efficientnet_lite(name))
    model.requires_grad_(False)
    return model.eval().to(device)
