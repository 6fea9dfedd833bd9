"""Tensor specs and shape profiles: what an engine takes and gives, and the (batch, height, width) range
it accepts. Torch-free, TensorRT-free data that backends, the engine cache and the CLI share.

A ``ShapeProfile`` is TensorRT's optimisation profile reduced to what a purifier varies (batch, height,
width; the channels are always 3); fixed-shape CUDA graphs and fixed-shape ONNX models have one too, and
the Purifier tiles, pads and splits images to fit it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nrp_deploy.errors import InputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of an engine tensor; -1 marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """The (batch, height, width) range an engine accepts and the shape it runs fastest at.

    Backends with fully dynamic shapes (ONNX Runtime, torch) have no profile; TensorRT engines and
    fixed-shape CUDA graphs do, and the Purifier tiles and pads images to fit them.
    """

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def __post_init__(self) -> None:
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(f"invalid shape profile min={self.min} opt={self.opt} max={self.max}")


#: For 224x224 work: TensorRT tunes its kernels for ``opt`` (one 224x224 image, also the tile size for
#: larger images), accepts anything from 32x32 up to 448x448 directly and batches of up to 8. ``max``
#: sizes the engine's activation memory, so it is kept modest for edge GPUs; larger images are tiled.
DEFAULT_PROFILE = ShapeProfile(min=(1, 32, 32), opt=(1, 224, 224), max=(8, 448, 448))

_BHW = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def parse_bhw(text: str, what: str = "shape") -> tuple[int, int, int]:
    """'8x224x224' -> (8, 224, 224): batch, height, width, all positive."""
    match = _BHW.fullmatch(text)
    if match is None:
        raise InputError(f"{what} {text!r} must be BATCHxHEIGHTxWIDTH, e.g. 1x224x224")
    shape = (int(match[1]), int(match[2]), int(match[3]))
    if min(shape) < 1:
        raise InputError(f"{what} {text!r} must be positive in every dimension")
    return shape


def make_profile(
    min_shape: Sequence[int] | None = None,
    opt_shape: Sequence[int] | None = None,
    max_shape: Sequence[int] | None = None,
) -> ShapeProfile:
    """A profile from optional (batch, height, width) triples; missing ones come from ``DEFAULT_PROFILE``.

    Raises ``InputError`` naming the triple that breaks min <= opt <= max, so a CLI typo reads clearly.
    """
    shapes = {}
    for key, given in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        shape = tuple(int(v) for v in (given if given is not None else getattr(DEFAULT_PROFILE, key)))
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"{key} shape {shape} must be three positive numbers (batch, height, width)")
        shapes[key] = shape
    for axis, label in enumerate(("batch", "height", "width")):
        lo, mid, hi = (shapes[k][axis] for k in ("min", "opt", "max"))
        if not lo <= mid <= hi:
            raise InputError(
                f"profile {label} must satisfy min <= opt <= max, got min={shapes['min']} "
                f"opt={shapes['opt']} max={shapes['max']}"
            )
    return ShapeProfile(min=shapes["min"], opt=shapes["opt"], max=shapes["max"])


def outside_profile(profile: ShapeProfile, batch: int, height: int, width: int) -> str | None:
    """Why an engine with ``profile`` cannot take this (batch, height, width) as is; None if it can."""
    shape = (batch, height, width)
    if all(lo <= v <= hi for lo, v, hi in zip(profile.min, shape, profile.max, strict=True)):
        return None
    lo, hi = profile.min, profile.max
    return (
        f"shape (batch {batch}, {height}x{width}) is outside the engine's profile: batch {lo[0]}..{hi[0]}, "
        f"{lo[1]}x{lo[2]}..{hi[1]}x{hi[2]}"
    )


def profile_to_dict(profile: ShapeProfile) -> dict[str, list[int]]:
    return {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}


def profile_from_dict(data: dict[str, Any]) -> ShapeProfile:
    return make_profile(data["min"], data["opt"], data["max"])
