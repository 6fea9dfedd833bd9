"""Self-supervised perturbation (SSP): the paper's label-free attack and NRP's training adversary.

Maximises the mean squared distance between the features of the adversarial and the clean image with
signed-gradient ascent inside an L-inf ball, as the published ``ssp.py`` does. The start is always the
published random one: the iterate starts as pure Gaussian noise N(0, 1) (not clean + noise), its first
gradient step is taken there, and the first projection pulls it into the eps-ball around the clean image,
which leaves most pixels on the ball's surface. There is no option to start at the clean image: the squared
feature distance has exactly zero gradient there, so signed-gradient ascent could never leave it.

Pure function of its inputs: only the adversarial tensor needs a gradient, which is taken with
``torch.autograd.grad`` so no ``.grad`` is left on the images, the feature network or anything else; the
caller's grad mode and the modules' train/eval modes are left as they were. It works on tensors already on
any device (the training loop calls it with a few iterations per batch); pass a ``generator`` on that device
for a reproducible start.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nrp_deploy.errors import InputError

SSP_EPS = 16 / 255
SSP_STEP = 0.01
SSP_ITERATIONS = 100


def project(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius ``eps`` around ``clean``, then into the [0, 1] image range."""
    return torch.clamp(torch.min(torch.max(adversarial, clean - eps), clean + eps), 0.0, 1.0)


def check_budget(eps: float, step: float, iterations: int) -> None:
    """Raise ``InputError`` for an attack budget that cannot run."""
    if not eps > 0 or not step > 0:
        raise InputError(f"eps and step must be > 0, got eps={eps}, step={step}")
    if iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")


def check_images(images: torch.Tensor) -> None:
    """Raise ``InputError`` unless ``images`` is a float NCHW batch in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
        raise InputError(f"attack input must be a float NCHW tensor in [0, 1], got {got}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise InputError("attack input must lie in [0, 1] (divide uint8 images by 255)")


def feature_distance(
    features: torch.nn.Module, adversarial: torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """Per-image mean squared feature distance, the quantity SSP maximises (shape (N,))."""
    with torch.no_grad():
        diff = features(adversarial) - features(clean)
    return diff.pow(2).flatten(1).mean(1)


def ssp_attack(
    images: torch.Tensor,
    features: torch.nn.Module,
    eps: float = SSP_EPS,
    step: float = SSP_STEP,
    iterations: int = SSP_ITERATIONS,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Adversarial images within ``eps`` (L-inf) of ``images`` and in [0, 1], same shape, dtype and device.

    ``features`` maps [0, 1] images to a feature map (e.g. ``build_feature_extractor()``); ``generator``
    (on the images' device) draws the random start.
    """
    check_budget(eps, step, iterations)
    check_images(images)
    clean = images.detach().clone()  # clone: also turns an inference-mode tensor into a normal one
    with torch.no_grad():
        reference = features(clean)
    adversarial = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    for _ in tqdm(
        range(iterations), desc="SSP", unit="it", disable=not progress, file=sys.stderr, leave=False
    ):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            loss = F.mse_loss(features(adversarial), reference)
            (grad,) = torch.autograd.grad(loss, adversarial)
        adversarial = project(adversarial.detach() + step * grad.sign(), clean, eps)
    # Idempotent after any step; it only matters for iterations=0 (the projected start).
    return project(adversarial.detach(), clean, eps)
