"""Attack image files: the ``nrp attack`` commands' API, on top of the shared batch file job.

Images are read as RGB uint8 at their own size, batched by size (``nrp_deploy.batch.purify_files`` does the
walking, batching, skipping and atomic PNG writing), attacked as float [0, 1] tensors on ``device`` and
written back rounded to uint8, as the published scripts save their adversaries, and kept inside the budget
as they are rounded: with a budget off the 1/255 grid (eps 0.01 is 2.55 levels) plain rounding can step
past it (3/255 = 0.0118), so every pixel is held within floor(255 eps) levels of the clean one. One seeded
generator serves the whole run, so the same inputs, options and seed give the same files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from nrp_deploy.attacks.classifiers import load_classifier
from nrp_deploy.attacks.features import build_feature_extractor
from nrp_deploy.attacks.pgd import (
    DYNAMIC_EPS,
    DYNAMIC_SIGMA,
    EOT_SAMPLES,
    PGD_EPS,
    PGD_ITERATIONS,
    PGD_STEP,
    check_pgd_options,
    pgd_attack,
)
from nrp_deploy.attacks.ssp import SSP_EPS, SSP_ITERATIONS, SSP_STEP, check_budget, ssp_attack
from nrp_deploy.batch import BatchReport, purify_files
from nrp_deploy.models import load_model

PathLike = str | os.PathLike[str]


def images_to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div(255.0)


def tensor_to_images(
    x: torch.Tensor, clean: np.ndarray | None = None, eps: float | None = None
) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (clamped, rounded), on the host.

    With ``clean`` (the uint8 NHWC images the adversaries were made from) and ``eps`` (their L-inf
    budget), each pixel is also held within ``floor(255 eps)`` levels of the clean one, so the saved
    adversary stays inside the budget that rounding alone can exceed.
    """
    out = x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    images = np.ascontiguousarray(out.cpu().numpy())
    if clean is None or eps is None:
        return images
    return round_within_budget(images, clean, eps)


def round_within_budget(adversarial: np.ndarray, clean: np.ndarray, eps: float) -> np.ndarray:
    """uint8 ``adversarial`` clipped to ``clean`` +- floor(255 eps + 1e-6) levels (the 1e-6 keeps 16/255,
    whose float product is 15.999..., at 16)."""
    if adversarial.shape != clean.shape:
        raise ValueError(f"adversarial {adversarial.shape} and clean {clean.shape} images differ in shape")
    levels = int(np.floor(eps * 255.0 + 1e-6))
    low = np.clip(clean.astype(np.int16) - levels, 0, 255)
    high = np.clip(clean.astype(np.int16) + levels, 0, 255)
    return np.clip(adversarial.astype(np.int16), low, high).astype(np.uint8)


def attack_files(
    inputs: Iterable[PathLike],
    output_dir: PathLike,
    attack: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    eps: float | None = None,
) -> BatchReport:
    """Run ``attack`` (float NCHW [0, 1] batch -> same) over image files into PNGs under ``output_dir``;
    ``eps``, the attack's L-inf budget, keeps the rounded files inside it."""

    def run(batch: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        return tensor_to_images(attack(images_to_tensor(batch, device)), batch, eps)

    return purify_files(
        inputs, output_dir, run, batch_size=batch_size, overwrite=overwrite, progress=progress
    )


def ssp_files(
    inputs: Iterable[PathLike],
    output_dir: PathLike,
    features: str = "efficientnet_lite0",
    layer: str | None = None,
    vgg16_weights: PathLike | None = None,
    eps: float = SSP_EPS,
    step: float = SSP_STEP,
    iterations: int = SSP_ITERATIONS,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """SSP adversaries of every image under ``inputs``, as PNG files mirroring the input layout."""
    check_budget(eps, step, iterations)
    extractor = build_feature_extractor(features, layer=layer, vgg16_weights=vgg16_weights).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def attack(x: torch.Tensor) -> torch.Tensor:
        return ssp_attack(x, extractor, eps, step, iterations, generator=generator, progress=progress)

    return attack_files(inputs, output_dir, attack, device, batch_size, overwrite, progress, eps)


def pgd_files(
    inputs: Iterable[PathLike],
    output_dir: PathLike,
    model: PathLike = "default",
    classifier: str = "efficientnet_lite0",
    mode: str = "full",
    targeted: bool = True,
    eps: float = PGD_EPS,
    step: float = PGD_STEP,
    iterations: int = PGD_ITERATIONS,
    eot_samples: int = EOT_SAMPLES,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    random_start: bool = False,
    restarts: int = 1,
    sigma: float = DYNAMIC_SIGMA,
    dynamic_eps: float = DYNAMIC_EPS,
) -> BatchReport:
    """PGD adversaries against ``classifier`` (a classifier spec, see ``load_classifier``) behind the
    purifier ``model`` (registry name or checkpoint); ``sigma`` / ``dynamic_eps``: the noise level the EOT
    modes average over (``pgd_attack``)."""
    check_pgd_options(mode, eps, step, iterations, eot_samples, restarts, sigma, dynamic_eps)
    purifier = load_model(model, device=device).module.eval()
    net = load_classifier(classifier, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def attack(x: torch.Tensor) -> torch.Tensor:
        result = pgd_attack(
            x,
            net,
            purifier,
            mode=mode,
            targeted=targeted,
            eps=eps,
            step=step,
            iterations=iterations,
            eot_samples=eot_samples,
            generator=generator,
            progress=progress,
            random_start=random_start,
            restarts=restarts,
            sigma=sigma,
            dynamic_eps=dynamic_eps,
        )
        return result.adversarial

    return attack_files(inputs, output_dir, attack, device, batch_size, overwrite, progress, eps)
