"""Calibration and held-out image sets: seeded random crops of photos at the deployment resolution.

Precision conversion decides from activations on real images (FP16: which nodes exceed FP16's safe range;
INT8: the quantisation scales), and its result is then judged on *other* images, so one picture source is
split in two: every ``HOLDOUT_EVERY``-th picture (in sorted order) is held out for the fidelity check and
the rest are cropped for calibration. A separate ``validation`` source replaces the split.

A source is a folder of images (walked recursively), an ``.npz`` file whose ``input`` array is float32
NCHW in [0, 1] (the layout ModelOpt's tools read), or such an array. Crops are drawn with a seeded
generator, cycling through the pictures so that each one is used, and are float32 NCHW in [0, 1] as the
purifier takes them. Torch-free: numpy and Pillow only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nrp_deploy.assets import examples_dir
from nrp_deploy.errors import ExportError
from nrp_deploy.images import collect_images, read_image

Options = TypeVar("Options")

DEFAULT_FOLDER = examples_dir()
DEFAULT_CROP_SIZE = 224
DEFAULT_COUNT = 8
DEFAULT_HOLDOUT_COUNT = 4
HOLDOUT_EVERY = 4

PictureSource = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class Picture:
    """One source picture as float32 CHW in [0, 1], with a name for reports."""

    name: str
    chw: np.ndarray


@dataclass(frozen=True)
class CropSet:
    """Crops as one float32 NCHW batch, and what they were cut from (for the metadata)."""

    batch: np.ndarray
    pictures: tuple[str, ...]
    crop_size: int
    seed: int

    def summary(self) -> dict[str, Any]:
        return {
            "images": list(self.pictures),
            "crop_size": self.crop_size,
            "count": int(self.batch.shape[0]),
            "seed": self.seed,
        }

    def describe(self) -> str:
        n = self.batch.shape[0]
        return f"{n} held-out crop{'s' if n != 1 else ''} of {self.crop_size}x{self.crop_size} px"


def load_pictures(source: PictureSource | None) -> list[Picture]:
    """Pictures of a folder, an ``.npz`` file or an NCHW array (``None``: the example photos)."""
    if source is None:
        source = DEFAULT_FOLDER
    if isinstance(source, np.ndarray):
        return _from_array(source, "array")
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path) as data:
                array = data["input"]
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"{path}: expected an .npz with an 'input' array ({exc})") from exc
        return _from_array(array, path.name)
    if not path.is_dir():
        raise ExportError(f"calibration source {path} is neither a folder of images nor an .npz file")
    tasks = collect_images([path])
    if not tasks:
        raise ExportError(f"calibration folder {path} holds no images (png, jpg, bmp, tif, webp)")
    pictures = []
    for task in tasks:
        rgb = read_image(task.source)
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
        pictures.append(Picture(str(task.relative), chw))
    return pictures


def _from_array(array: np.ndarray, label: str) -> list[Picture]:
    if array.ndim != 4 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ExportError(f"{label}: expected a non-empty (N, 3, H, W) array, got shape {array.shape}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ExportError(f"{label}: values must be finite and in [0, 1] (images scaled by 1/255)")
    return [Picture(f"{label}[{i}]", np.ascontiguousarray(a)) for i, a in enumerate(array)]


def split_holdout(pictures: list[Picture]) -> tuple[list[Picture], list[Picture]]:
    """(calibration, held out): every ``HOLDOUT_EVERY``-th picture is held out, at least one of each."""
    if len(pictures) < 2:
        raise ExportError(
            f"need at least 2 calibration images (one is held out for the fidelity check), found "
            f"{len(pictures)}; add images or give a separate validation source"
        )
    held = [p for i, p in enumerate(pictures) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] or [pictures[-1]]
    held_names = {p.name for p in held}
    return [p for p in pictures if p.name not in held_names], held


def random_crops(pictures: list[Picture], crop_size: int, count: int, seed: int) -> CropSet:
    """Up to ``count`` seeded random ``crop_size`` squares, cycling through ``pictures``.

    Never more crops than there are distinct crop positions: pictures exactly ``crop_size`` wide and high
    (like the example photos at the default 224) give one crop each, not repeats of it.
    """
    if crop_size < 1 or count < 1:
        raise ExportError(f"crop size and count must be >= 1, got {crop_size} and {count}")
    if not pictures:
        raise ExportError("no pictures to crop")
    for picture in pictures:
        _, h, w = picture.chw.shape
        if h < crop_size or w < crop_size:
            raise ExportError(
                f"{picture.name} is {w}x{h} px, smaller than the crop size {crop_size}; use a smaller crop"
            )
    positions = sum((p.chw.shape[1] - crop_size + 1) * (p.chw.shape[2] - crop_size + 1) for p in pictures)
    count = min(count, positions)
    rng = np.random.default_rng(seed)
    crops = np.empty((count, 3, crop_size, crop_size), dtype=np.float32)
    used = []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        _, h, w = picture.chw.shape
        top = int(rng.integers(0, h - crop_size + 1))
        left = int(rng.integers(0, w - crop_size + 1))
        crops[i] = picture.chw[:, top : top + crop_size, left : left + crop_size]
        used.append(picture.name)
    return CropSet(crops, tuple(dict.fromkeys(used)), crop_size, seed)


def calibration_and_holdout(
    calibration: PictureSource | None = None,
    validation: PictureSource | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    count: int = DEFAULT_COUNT,
    holdout_size: int | None = None,
    holdout_count: int = DEFAULT_HOLDOUT_COUNT,
    seed: int = 0,
) -> tuple[CropSet, CropSet]:
    """Calibration crops and held-out crops (from other pictures) for the fidelity check."""
    pictures = load_pictures(calibration)
    if validation is None:
        calib_pictures, held_pictures = split_holdout(pictures)
    else:
        calib_pictures, held_pictures = pictures, load_pictures(validation)
    calib = random_crops(calib_pictures, crop_size, count, seed)
    held = random_crops(held_pictures, holdout_size or crop_size, holdout_count, seed + 1)
    return calib, held


@dataclass(frozen=True)
class CalibrationOptions:
    """The images FP16 and INT8 conversion calibrate on and are judged on.

    ``images``: folder, ``.npz`` or NCHW array (default: the example photos); ``count`` seeded random
    ``crop_size`` crops are taken from it, and every 4th picture is held out for the fidelity check
    (``holdout_count`` crops of ``holdout_size``, default ``crop_size``) unless ``validation`` is given.
    """

    images: PictureSource | None = None
    validation: PictureSource | None = None
    crop_size: int = DEFAULT_CROP_SIZE
    count: int = DEFAULT_COUNT
    holdout_size: int | None = None
    holdout_count: int = DEFAULT_HOLDOUT_COUNT
    seed: int = 0

    def crops(self) -> tuple[CropSet, CropSet]:
        """The calibration crops and the held-out crops."""
        return calibration_and_holdout(
            self.images,
            self.validation,
            self.crop_size,
            self.count,
            self.holdout_size,
            self.holdout_count,
            self.seed,
        )


def options_from_keywords(
    options_type: type[Options], options: Options | None, calibration: PictureSource | None, keywords: dict
) -> Options:
    """An export's options as given, or made from their names as keywords (``calibration=..., crop_size=...,
    keep_io_types=...``): the calibration names go to ``CalibrationOptions``, the rest to ``options_type``
    (an unknown name is a ``TypeError``, as for any call). Both forms at once are refused."""
    if options is not None:
        if calibration is not None or keywords:
            raise ExportError("give the export options, or their names as keywords, not both")
        return options
    names = {f.name for f in fields(CalibrationOptions)} - {"images"}
    images = CalibrationOptions(calibration, **{k: keywords.pop(k) for k in list(keywords) if k in names})
    return options_type(calibration=images, **keywords)
