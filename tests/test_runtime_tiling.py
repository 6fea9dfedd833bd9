"""Tiling: exact with an overlap of at least the receptive-field radius, bounded shapes, seams, layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nrp_deploy.errors import InputError
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.runtime import Purifier, TileConfig, load_purifier
from nrp_deploy.runtime.backends import ShapeProfile, TensorSpec
from nrp_deploy.runtime.tiling import axis_starts, axis_weights, infer_tiled

# Tiny versions of both architectures: receptive fields 13 (NRP_resG, 6 convs) and 35 (NRP, 17 convs).
SPECS = [ModelSpec("NRP_resG", {"nf": 8, "nb": 2}), ModelSpec("NRP", {"nf": 8, "gc": 4, "nb": 1})]


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.architecture)
def purifier(request, tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiling") / "model.pth"
    torch.save(request.param.build().state_dict(), path)
    return load_purifier(path, backend="torch", threads=1)


@pytest.mark.parametrize(("feather", "ramp"), [(0, "cosine"), (6, "cosine"), (5, "linear")])
def test_tiled_equals_untiled_with_overlap_at_least_the_radius(purifier, feather, ramp):
    radius = purifier.receptive_field // 2
    x = np.random.default_rng(2).random((2, 3, 75, 61), dtype=np.float32)
    config = TileConfig(
        tile=2 * (radius + (feather + 1) // 2) + 9, overlap=radius, feather=feather, ramp=ramp
    )
    calls = []

    def run(tiles):
        calls.append(tiles.shape)
        return purifier.infer(tiles)

    tiled = infer_tiled(x, run, config, tiles_per_call=3)
    assert all(shape[2:] == (config.tile, config.tile) for shape in calls), (
        "every tile has the engine's shape"
    )
    assert len(calls) > 3
    assert np.abs(tiled - purifier.infer(x)).max() < 1e-4


def test_too_little_context_is_inexact(purifier):
    """Guards the exactness test above against vacuity: tiles that lack context must show."""
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    hard = infer_tiled(x, purifier.infer, TileConfig(24, overlap=0, feather=0))
    assert np.abs(hard - purifier.infer(x)).max() > 1e-3


def test_axis_layout_covers_evenly_with_the_required_context():
    assert axis_starts(50, 64, 10) == [0]
    for length, window, core in [(100, 32, 12), (257, 64, 30), (65, 64, 1)]:
        starts = axis_starts(length, window, core)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(0 < b - a <= core for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("feather", [0, 1, 7, 16])
def test_weights_partition_unity_and_only_keep_pixels_with_context(feather):
    config = TileConfig(tile=64, overlap=10, feather=feather)
    length = 300
    starts = axis_starts(length, config.tile, config.tile - 2 * config.margin)
    weights = axis_weights(starts, config.tile, feather, "cosine")
    total = np.zeros(length)
    for i, (start, w) in enumerate(zip(starts, weights, strict=True)):
        total[start : start + config.tile] += w
        kept = np.flatnonzero(w > 0)
        if i > 0:
            assert kept.min() >= config.overlap
        if i < len(starts) - 1:
            assert kept.max() <= config.tile - 1 - config.overlap
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


class FixedShapeBackend:
    """A backend with a TensorRT-like shape profile that refuses any shape outside it (identity model)."""

    name, device, precision, spec, thread_safe = "fixed", "cpu", "fp32", None, True
    input_spec = TensorSpec("input", "float32", (-1, 3, -1, -1))
    output_spec = TensorSpec("output", "float32", (-1, 3, -1, -1))

    def __init__(self, profile: ShapeProfile) -> None:
        self.profile = profile
        self.shapes: list[tuple[int, ...]] = []

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.profile.min, self.profile.max
        assert all(a <= s <= b for a, s, b in zip(lo, (x.shape[0], *x.shape[2:]), hi, strict=True)), x.shape
        self.shapes.append(x.shape)
        return x * 2 - 0.5


def test_profile_bounds_are_respected_by_tiling_padding_and_batching():
    backend = FixedShapeBackend(ShapeProfile(min=(1, 32, 32), opt=(2, 48, 48), max=(2, 64, 64)))
    purifier = Purifier(backend)
    rng = np.random.default_rng(4)
    for shape in [(5, 3, 40, 50), (1, 3, 20, 100), (3, 3, 130, 70), (1, 3, 8, 8)]:
        x = rng.random(shape, dtype=np.float32)
        np.testing.assert_allclose(purifier.infer(x), x * 2 - 0.5, atol=1e-6)
    assert {s[2:] for s in backend.shapes} >= {(40, 50), (48, 48), (32, 32)}
    assert max(s[0] for s in backend.shapes) == 2


def test_bad_tile_settings_are_refused():
    with pytest.raises(InputError, match="leaves nothing to keep"):
        TileConfig(tile=40, overlap=20)
    with pytest.raises(InputError, match="ramp must be one of"):
        TileConfig(tile=64, overlap=8, ramp="gauss")
    with pytest.raises(InputError, match="overlap was given without a tile"):
        load_purifier("no-such-model", overlap=8)
