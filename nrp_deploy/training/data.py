"""Unlabelled training images and the random, augmented crops the training loop draws from them.

NRP's objective needs no labels, so any folder of photos is a training set. The default purifier is trained
on the photos that scikit-image ships inside its wheel (no download), minus the ones kept for evaluation:
every photo of the packaged examples (``nrp_deploy/assets/examples/``) is held out, so the demo and the model card measure unseen images.
All randomness comes from one ``torch.Generator``, so a seed fixes the crop sequence and a checkpoint can
save and restore it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nrp_deploy.errors import InputError
from nrp_deploy.images import collect_images, read_image
from nrp_deploy.training.config import SKIMAGE

# Natural photos shipped in scikit-image's wheel (checked against skimage/data/ of scikit-image 0.26: none
# of these needs pooch). Greyscale ones are included for texture and edges; they become three equal channels.
SKIMAGE_TRAIN = (
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "clock_motion.png",
    "cell.png",
    "page.png",
    "text.png",
)
# Held out for evaluation: the sources of the packaged example photos (see nrp_deploy/assets/examples/ATTRIBUTION.md).
SKIMAGE_HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:
        raise InputError("--data skimage needs scikit-image (pip install 'nrp-deploy[attacks]')") from exc
    return Path(skimage.__file__).resolve().parent / "data"


def load_training_images(source: str | os.PathLike[str], min_side: int) -> list[np.ndarray]:
    """RGB uint8 images from ``skimage`` (its shipped training photos) or from a folder, walked recursively.

    Images smaller than ``min_side`` on either side cannot give a full crop and are rejected by name.
    """
    if os.fspath(source) == SKIMAGE:
        root = skimage_data_dir()
        paths = [root / name for name in SKIMAGE_TRAIN]
    else:
        paths = [task.source for task in collect_images([source])]
    if not paths:
        raise InputError(f"training data {os.fspath(source)!r} holds no images")
    images = []
    for path in paths:
        image = read_image(path)
        if min(image.shape[:2]) < min_side:
            raise InputError(
                f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than the crop ({min_side})"
            )
        images.append(image)
    return images


@dataclass(frozen=True)
class Augment:
    """How crops vary: zoom (a crop of up to ``max_zoom`` x the size, resized down), flips, rotations by 90
    degrees, and a mild brightness / contrast / saturation jitter (0 switches it off)."""

    max_zoom: float = 2.0
    jitter: float = 0.1


class CropSampler:
    """Batches of random augmented crops, float32 NCHW in [0, 1], drawn with a seeded generator."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        crop: int,
        augment: Augment,
        generator: torch.Generator,
    ) -> None:
        if crop < 8:
            raise InputError(f"crop size {crop} is too small (at least 8 pixels)")
        self.images = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1) for im in images]
        self.crop = crop
        self.augment = augment
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))

    def _one(self) -> torch.Tensor:
        image = self.images[self._randint(len(self.images))]
        h, w = image.shape[1:]
        zoom = self._uniform(1.0, max(1.0, self.augment.max_zoom))
        side = min(h, w, round(self.crop * zoom))
        top, left = self._randint(h - side + 1), self._randint(w - side + 1)
        patch = image[:, top : top + side, left : left + side].float().div(255.0)
        if side != self.crop:
            patch = F.interpolate(
                patch[None], size=(self.crop, self.crop), mode="bilinear", antialias=True, align_corners=False
            )[0]
        if self._randint(2):
            patch = patch.flip(2)
        patch = torch.rot90(patch, self._randint(4), dims=(1, 2))
        if self.augment.jitter > 0:
            patch = self._jitter(patch)
        return patch.clamp(0.0, 1.0)

    def _jitter(self, patch: torch.Tensor) -> torch.Tensor:
        j = self.augment.jitter
        grey = patch.mean(0, keepdim=True)
        patch = grey + (patch - grey) * self._uniform(1 - j, 1 + j)  # saturation
        mean = patch.mean()
        patch = mean + (patch - mean) * self._uniform(1 - j, 1 + j)  # contrast
        return patch + self._uniform(-j / 2, j / 2)  # brightness

    def sample(self, batch_size: int) -> torch.Tensor:
        return torch.stack([self._one() for _ in range(batch_size)])
