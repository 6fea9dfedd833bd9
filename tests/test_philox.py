"""The numpy Philox reference: known answers, keying, statistics, chunking and the dynamic defence."""

from __future__ import annotations

import numpy as np
import pytest

from nrp_deploy.errors import InputError
from nrp_deploy.kernels import philox
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference

# Random123 kat_vectors, philox4x32 with 10 rounds (shared/reference/philox.md).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_known_answer_vectors(counter, key, expected):
    out = philox.philox4x32_10(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert out.dtype == np.uint32
    assert [int(w) for w in out] == list(expected)


def test_vectorised_over_leading_axes_with_broadcast_key():
    counters = np.array([k[0] for k in KAT], dtype=np.uint32).reshape(3, 1, 4)
    out = philox.philox4x32_10(np.repeat(counters, 2, axis=1), np.zeros(2, dtype=np.uint32))
    assert out.shape == (3, 2, 4)
    np.testing.assert_array_equal(out[0, 1], KAT[0][2])


def test_noise_is_keyed_by_seed_image_and_group():
    seed, start = 0x0123456789ABCDEF, 5
    noise = philox.dynamic_noise(seed, (2, 3, 4, 6), start_index=start)  # 72 elements = 18 groups
    flat = noise.reshape(2, -1)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    for n, g in [(0, 0), (1, 7), (1, 17)]:
        np.testing.assert_array_equal(flat[n, 4 * g : 4 * g + 4], philox.group_normals(key, start + n, g))
    # The four words of group g feed lanes (0, 1) and (2, 3) through Box-Muller in cuRAND's order.
    w = philox.philox4x32_10(np.array([7, 0, start + 1, 0], dtype=np.uint32), key).astype(np.float64)
    u = w * 2.0**-32 + 2.0**-33
    r01, r23 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    t01, t23 = 2 * np.pi * u[1], 2 * np.pi * u[3]
    expected = [r01 * np.sin(t01), r01 * np.cos(t01), r23 * np.sin(t23), r23 * np.cos(t23)]
    np.testing.assert_allclose(flat[1, 28:32], expected, rtol=1e-5, atol=1e-5)


def test_noise_statistics():
    noise = philox.dynamic_noise(2024, (8, 3, 128, 128))
    assert noise.dtype == np.float32
    assert abs(float(noise.mean())) < 0.01
    assert abs(float(noise.std()) - 1.0) < 0.01
    assert abs(float(np.mean(np.abs(noise) < 1)) - 0.6827) < 0.005
    # Adjacent lanes (sin / cos of the same pair) and adjacent images are uncorrelated.
    flat = noise.reshape(8, -1)
    assert abs(float(np.corrcoef(flat[:, 0::4].ravel(), flat[:, 1::4].ravel())[0, 1])) < 0.01
    assert abs(float(np.corrcoef(flat[0], flat[1])[0, 1])) < 0.01


def test_noise_is_deterministic_and_seed_dependent():
    a = philox.dynamic_noise(99, (2, 3, 8, 8))
    np.testing.assert_array_equal(a, philox.dynamic_noise(99, (2, 3, 8, 8)))
    assert not np.array_equal(a, philox.dynamic_noise(100, (2, 3, 8, 8)))
    assert not np.array_equal(a, philox.dynamic_noise(99 + (1 << 32), (2, 3, 8, 8)))  # high key word


@pytest.mark.parametrize("shape", [(7, 3, 10, 10), (7, 3, 5, 7)])  # CHW a multiple of 4, and not
def test_chunked_batch_equals_whole_batch(shape, monkeypatch):
    whole = philox.dynamic_noise(7, shape, start_index=3)
    parts = [philox.dynamic_noise(7, (k, *shape[1:]), start_index=3 + i) for i, k in [(0, 2), (2, 4), (6, 1)]]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    monkeypatch.setattr(philox, "_CHUNK_GROUPS", 50)  # force several internal chunks
    np.testing.assert_array_equal(whole, philox.dynamic_noise(7, shape, start_index=3))


def test_dynamic_defense_projection_and_clamp():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 3, 32, 32)).astype(np.float32)
    x[0, 0, 0, :4] = [0.0, 1.0, 0.0, 1.0]
    sigma, eps = 0.5, 8 / 255
    y = philox.apply_dynamic_defense(x, sigma, eps, seed=1)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all((y >= 0) & (y <= 1))
    assert np.abs(y - x).max() <= np.float32(eps) + 1e-7
    assert np.mean(np.abs(np.abs(y - x) - np.float32(eps)) < 1e-6) > 0.5  # sigma >> eps: mostly at the rim
    noise = philox.dynamic_noise(1, x.shape)
    s, e = np.float32(sigma), np.float32(eps)
    expected = np.clip(np.minimum(np.maximum(x + s * noise, x - e), x + e), 0, 1)
    np.testing.assert_array_equal(y, expected)


def test_dynamic_defense_chunks_and_start_index(monkeypatch):
    x = np.random.default_rng(1).uniform(0, 1, (6, 3, 9, 7)).astype(np.float32)
    whole = philox.apply_dynamic_defense(x, 0.05, 16 / 255, seed=5, start_index=10)
    halves = [
        philox.apply_dynamic_defense(x[i : i + 3], 0.05, 16 / 255, seed=5, start_index=10 + i) for i in (0, 3)
    ]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    monkeypatch.setattr(philox, "_CHUNK_GROUPS", 100)
    np.testing.assert_array_equal(
        whole, philox.apply_dynamic_defense(x, 0.05, 16 / 255, seed=5, start_index=10)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1 << 64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"start_index": -1}, "start_index"),
        ({"start_index": (1 << 32) - 1}, "start_index"),
        ({"sigma": float("nan")}, "sigma"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"x": np.zeros((2, 3, 4, 4), np.float32), "sigma": 0.05, "eps": 0.1, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=match):
        philox.apply_dynamic_defense(**args)


def test_rejects_non_float32_nchw():
    with pytest.raises(InputError, match="float32 NCHW"):
        philox.apply_dynamic_defense(np.zeros((2, 4, 4, 3), np.uint8), 0.05, 0.1, 0)


def test_draw_seed_is_fresh_64_bit():
    seeds = {philox.draw_seed() for _ in range(16)}
    assert len(seeds) == 16
    assert all(0 <= s < 1 << 64 for s in seeds)
    assert max(seeds) >= 1 << 40  # uses the high word, not just a small range


def test_kernel_references_match_the_runtime_conventions():
    img = np.random.default_rng(2).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    plain = preprocess_reference(img, "float32")
    np.testing.assert_array_equal(plain, img.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    assert preprocess_reference(img, "float16").dtype == np.float16
    noisy = preprocess_reference(img, "float32", sigma=0.05, eps=0.1, seed=3, start_index=2)
    np.testing.assert_array_equal(noisy, philox.apply_dynamic_defense(plain, 0.05, 0.1, 3, 2))
    np.testing.assert_array_equal(postprocess_reference(plain), img)
    np.testing.assert_array_equal(postprocess_reference(plain.astype(np.float16)), img)
