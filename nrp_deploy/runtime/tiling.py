"""Tiled inference: any image size through an engine of bounded shape, in bounded memory, without seams.

An image larger than the tile is cut into overlapping tiles of exactly the tile's shape (the engine's
optimal shape), evenly spaced so that the last one ends at the image border rather than hanging over it.
Tiles of one batch are run together, several per engine call.

``overlap`` is the least context, in pixels, that any output pixel kept from a tile has between itself and
that tile's inner edges. The purifiers are stacks of 3x3 convolutions, so an output pixel depends only on
inputs within the receptive-field radius; with ``overlap`` at least that radius, every kept pixel is
exactly the untiled output (border tiles see the image border, and its zero padding, as the untiled
network does). Smaller overlaps trade exactness for speed; then ``feather`` blends neighbouring tiles with
a ramp (cosine or linear) of that many pixels centred on each seam instead of cutting them hard, so the
small disagreements near tile edges fade instead of stepping. The tiles grow by half the feather on each
side to keep ``overlap`` for every kept pixel. The weights of neighbouring tiles add up to one, and the
sum is divided out anyway so that any layout stays exact.

Reflect padding fills a tile only where the image is smaller than the engine's minimum shape on an axis
(fixed-shape engines, CUDA graphs); it is never added at the image border otherwise, because the model's
own border handling is what the untiled reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nrp_deploy.errors import InputError

RAMPS = ("cosine", "linear")


@dataclass(frozen=True)
class TileConfig:
    """Tile side in pixels (square; the engine's input shape), context overlap, feather width and ramp."""

    tile: int
    overlap: int
    feather: int = 0
    ramp: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("tile", "overlap", "feather"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise InputError(f"{name} must be a whole number of pixels, got {value!r}")
        if self.tile < 1:
            raise InputError(f"tile must be at least 1 px, got {self.tile}")
        if self.overlap < 0 or self.feather < 0:
            raise InputError(f"overlap and feather must be >= 0, got {self.overlap} and {self.feather}")
        if self.ramp not in RAMPS:
            raise InputError(f"ramp must be one of {', '.join(RAMPS)}, not {self.ramp!r}")
        if self.tile - 2 * self.margin < 1:
            raise InputError(
                f"tile {self.tile} leaves nothing to keep after a context margin of {self.margin} px on each "
                f"side (overlap {self.overlap} + feather/2); use a tile larger than {2 * self.margin}"
            )

    @property
    def margin(self) -> int:
        """Context on each inner side of a tile: the overlap plus half the feather ramp."""
        return self.overlap + math.ceil(self.feather / 2)


def axis_starts(length: int, window: int, core: int) -> list[int]:
    """Starts of windows of size ``window`` covering [0, length), evenly spaced at most ``core`` apart."""
    if length <= window:
        return [0]
    count = 1 + math.ceil((length - window) / core)
    span = length - window
    return [(i * span + (count - 1) // 2) // (count - 1) for i in range(count)]


def _ramp(t: np.ndarray, kind: str) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t) if kind == "cosine" else t


def _rise(positions: np.ndarray, seam: float, feather: int, ramp: str) -> np.ndarray:
    """Weight of the later window across a seam: 0 before it, 1 after, a ramp of ``feather`` px between."""
    if feather == 0:
        return (positions >= seam).astype(np.float64)
    return _ramp((positions - (seam - feather / 2)) / feather, ramp)


def axis_weights(starts: list[int], window: int, feather: int, ramp: str) -> np.ndarray:
    """Blending weight of each window's pixels, shape (len(starts), window): one inside, ramps at seams.

    The seam between windows i and i+1 is the middle of their overlap; window i+1 rises and window i falls
    across it, with complementary weights, evaluated at pixel centres.
    """
    centres = np.arange(window, dtype=np.float64) + 0.5
    weights = np.ones((len(starts), window), dtype=np.float64)
    for i in range(len(starts) - 1):
        seam = (starts[i + 1] + starts[i] + window) / 2
        weights[i] *= 1.0 - _rise(starts[i] + centres, seam, feather, ramp)
        weights[i + 1] *= _rise(starts[i + 1] + centres, seam, feather, ramp)
    return weights


def _reflect_to(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    pad_h, pad_w = height - tile.shape[2], width - tile.shape[3]
    if pad_h == 0 and pad_w == 0:
        return tile
    return np.pad(tile, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")


def infer_tiled(
    x: np.ndarray,
    run: Callable[[np.ndarray], np.ndarray],
    config: TileConfig,
    min_shape: tuple[int, int] = (1, 1),
    tiles_per_call: int = 1,
) -> np.ndarray:
    """Run ``run`` (float32 NCHW -> float32 NCHW, same shape) over ``x`` tile by tile; see the module doc.

    Windows are ``min(tile, side)`` per axis; a window smaller than ``min_shape`` is reflect-padded up to it
    and the padding cropped from the output. ``tiles_per_call`` tiles go to ``run`` at once.
    """
    count, channels, height, width = x.shape
    win_h, win_w = min(config.tile, height), min(config.tile, width)
    core = config.tile - 2 * config.margin
    ys, xs = axis_starts(height, win_h, core), axis_starts(width, win_w, core)
    wy, wx = (axis_weights(s, w, config.feather, config.ramp) for s, w in ((ys, win_h), (xs, win_w)))
    run_h, run_w = max(win_h, min_shape[0]), max(win_w, min_shape[1])

    out = np.zeros((count, channels, height, width), dtype=np.float32)
    total = np.zeros((height, width), dtype=np.float64)
    places = [(n, i, j) for n in range(count) for i in range(len(ys)) for j in range(len(xs))]
    for first in range(0, len(places), max(1, tiles_per_call)):
        group = places[first : first + max(1, tiles_per_call)]
        batch = np.concatenate(
            [
                _reflect_to(x[n : n + 1, :, ys[i] : ys[i] + win_h, xs[j] : xs[j] + win_w], run_h, run_w)
                for n, i, j in group
            ]
        )
        result = run(np.ascontiguousarray(batch))
        for (n, i, j), tile_out in zip(group, result, strict=True):
            weight = np.outer(wy[i], wx[j])
            region = (slice(ys[i], ys[i] + win_h), slice(xs[j], xs[j] + win_w))
            out[n][(slice(None), *region)] += (tile_out[:, :win_h, :win_w] * weight).astype(np.float32)
            if n == 0:
                total[region] += weight
    if total.min() <= 0.0:
        raise RuntimeError("tile weights leave pixels uncovered: a bug in the tile layout")
    out /= total.astype(np.float32)
    return out
