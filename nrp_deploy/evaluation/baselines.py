"""Input-transformation defences that need no training: the yardstick a purifier has to beat.

A purifier is only worth its cost if it keeps the classifier's prediction better than transformations anyone
can apply for free. The evaluation runs these next to it on the same adversaries: a 3x3 box blur applied
twice (smoothing a perturbation away costs detail) and a JPEG round trip (quantisation removes small
high-frequency changes). Both work on uint8 NHWC batches, as saved images are.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from nrp_deploy.errors import InputError

JPEG_QUALITY = 75


def box_blur_twice(images: np.ndarray) -> np.ndarray:
    """A 3x3 mean filter applied twice (edges replicated), rounded back to uint8."""
    x = images.astype(np.float32)
    for _ in range(2):
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = x.shape[1:3]
        x = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jpeg_round_trip(images: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Each image encoded as JPEG at ``quality`` (Pillow, 4:2:0) and decoded again."""
    out = np.empty_like(images)
    for k, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out[k] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"blur": box_blur_twice, "jpeg": jpeg_round_trip}


def baseline_defences(names: list[str] | tuple[str, ...]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The named baselines, refused by name when unknown."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return {n: BASELINES[n] for n in names}
