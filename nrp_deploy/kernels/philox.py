"""Numpy reference of the dynamic defence's noise: Philox4x32-10 + Box-Muller, keyed per element.

The CUDA kernels (nrp_kernels.cuh) compute the same numbers, so CPU and GPU results can be compared element
by element and any run can be replayed from its seed. Keying (docs: shared/reference/philox.md): key =
(lo32(seed), hi32(seed)); for image n (counted from the caller's start index) and flat CHW element e,
group g = e // 4 and lane e % 4 of Philox(counter=(lo32(g), hi32(g), n, 0)). The float maths runs in
float32, one rounding per operation, in the order the kernel uses, so the two agree to a few ulps
(device log/sin/cos are not correctly rounded; numpy's float32 ones are not either).

Only numpy: the torch-free runtime uses this on CPU, and tests use it as the GPU kernels' oracle.
"""

from __future__ import annotations

import secrets

import numpy as np

from nrp_deploy.errors import InputError

#: The published dynamic defence (the authors' ``--dynamic``): Gaussian noise of sigma 0.05, the result kept
#: within 16/255 of the input. The one definition: ``runtime.DynamicDefense`` and the eager baseline
#: (``models.eager``) default to these.
PUBLISHED_SIGMA = 0.05
PUBLISHED_EPS = 16 / 255
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO_POW_M32 = np.float32(2.0**-32)
_TWO_POW_M33 = np.float32(2.0**-33)
_TWO_PI = np.float32(2.0 * np.pi)
_MINUS_TWO = np.float32(-2.0)
# Groups per chunk when generating noise: bounds the uint64 temporaries to a few tens of MB.
_CHUNK_GROUPS = 1 << 18


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10 of ``counter`` (..., 4) under ``key`` (..., 2), both uint32; leading axes broadcast.

    The 32x32 -> 64-bit products are taken in uint64, which cannot overflow, then split into hi and lo.
    """
    counter = np.asarray(counter, dtype=np.uint32)
    key = np.asarray(key, dtype=np.uint32)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise InputError(f"counter must end in 4 words and key in 2, got {counter.shape} and {key.shape}")
    c0, c1, c2, c3 = (counter[..., i].astype(np.uint64) for i in range(4))
    k0, k1 = (key[..., i].astype(np.uint64) for i in range(2))
    words = _rounds(c0, c1, c2, c3, k0, k1)
    shape = np.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    return np.stack([np.broadcast_to(w, shape) for w in words], axis=-1).astype(np.uint32)


def _rounds(
    c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, k0: np.ndarray, k1: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ten Philox rounds on uint64 arrays holding 32-bit values (broadcasting as numpy does)."""
    for i in range(10):
        if i:
            k0 = (k0 + W0) & _MASK32
            k1 = (k1 + W1) & _MASK32
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32
    return c0, c1, c2, c3


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key (lo32, hi32) of a 64-bit unsigned seed."""
    seed = _check_seed(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 1 << 64:
        raise InputError(f"seed must be a 64-bit unsigned integer (0 <= seed < 2**64), got {seed}")
    return seed


def _check_images(start_index: int, count: int) -> None:
    if start_index < 0 or start_index + count > 1 << 32:
        raise InputError(
            f"start_index must be >= 0 and start_index + batch size <= 2**32 (the image index is one Philox "
            f"counter word), got start_index={start_index} for {count} images"
        )


def _box_muller(wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 normals per word pair, in cuRAND's order: (r sin t, r cos t)."""
    ua = wa.astype(np.float32) * _TWO_POW_M32 + _TWO_POW_M33
    ub = wb.astype(np.float32) * _TWO_POW_M32 + _TWO_POW_M33
    r = np.sqrt(_MINUS_TWO * np.log(ua))
    t = _TWO_PI * ub
    return r * np.sin(t), r * np.cos(t)


def group_normals(key: np.ndarray, image: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The four float32 normals of Philox group ``group`` of image ``image`` under ``key`` (..., 2).

    ``key``'s leading axes, ``image`` and ``group`` broadcast; the result has shape (..., 4), lanes in
    element order. This is the per-element primitive; ``dynamic_noise`` lays it out over whole images.
    """
    key = np.asarray(key, dtype=np.uint64)
    g = np.asarray(group, dtype=np.uint64)
    n = np.asarray(image, dtype=np.uint64)
    words = _rounds(g & _MASK32, g >> _SHIFT32, n, np.uint64(0), key[..., 0], key[..., 1])
    words = [w.astype(np.uint32) for w in words]
    shape = np.broadcast_shapes(*(w.shape for w in words))
    out = np.empty((*shape, 4), dtype=np.float32)
    out[..., 0], out[..., 1] = _box_muller(words[0], words[1])
    out[..., 2], out[..., 3] = _box_muller(words[2], words[3])
    return out


def _noise_images(key: tuple[int, int], first_image: int, count: int, elements: int) -> np.ndarray:
    """Normals for ``count`` images from Philox image index ``first_image``: (count, elements) float32."""
    groups = -(-elements // 4)
    g = np.arange(groups, dtype=np.uint64)[None, :]
    n = np.arange(first_image, first_image + count, dtype=np.uint64)[:, None]
    out = group_normals(np.array(key, dtype=np.uint64), n, g)
    return out.reshape(count, groups * 4)[:, :elements]


def _images_per_chunk(elements: int) -> int:
    """How many images make a chunk of about _CHUNK_GROUPS Philox groups (at least one)."""
    return max(1, _CHUNK_GROUPS // max(1, -(-elements // 4)))


def dynamic_noise(seed: int, shape_nchw: tuple[int, int, int, int], start_index: int = 0) -> np.ndarray:
    """Standard normals (float32, shape ``shape_nchw``) of the dynamic defence for images
    ``start_index .. start_index + N - 1``, so a batch split into chunks gets the noise of the whole."""
    if len(shape_nchw) != 4 or any(int(s) < 0 for s in shape_nchw):
        raise InputError(f"shape_nchw must be four non-negative sizes (N, C, H, W), got {shape_nchw}")
    count, channels, height, width = (int(s) for s in shape_nchw)
    _check_images(start_index, count)
    key = seed_key(seed)
    elements = channels * height * width
    out = np.empty((count, elements), dtype=np.float32)
    if elements:
        step = _images_per_chunk(elements)
        for i in range(0, count, step):
            k = min(step, count - i)
            out[i : i + k] = _noise_images(key, start_index + i, k, elements)
    return out.reshape(count, channels, height, width)


def apply_dynamic_defense(
    x: np.ndarray, sigma: float, eps: float, seed: int, start_index: int = 0
) -> np.ndarray:
    """x' = clamp(min(max(x + sigma * noise, x - eps), x + eps), 0, 1) for float32 NCHW ``x`` in [0, 1].

    sigma and eps are rounded to float32 first (the kernel receives them as float32). Works chunk by chunk,
    so the extra memory stays bounded whatever the batch size.
    """
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 4:
        raise InputError(f"x must be a float32 NCHW array, got {x.dtype} with shape {x.shape}")
    if not (np.isfinite(sigma) and sigma >= 0 and np.isfinite(eps) and eps >= 0):
        raise InputError(f"sigma and eps must be finite and >= 0, got sigma={sigma}, eps={eps}")
    count = x.shape[0]
    elements = int(np.prod(x.shape[1:]))
    _check_images(start_index, count)
    key = seed_key(seed)
    s, e = np.float32(sigma), np.float32(eps)
    flat = x.reshape(count, elements)
    out = np.empty((count, elements), dtype=np.float32)
    if elements:
        step = _images_per_chunk(elements)
        for i in range(0, count, step):
            xs = flat[i : i + step]
            y = _noise_images(key, start_index + i, xs.shape[0], elements)
            y *= s
            y += xs
            np.maximum(y, xs - e, out=y)
            np.minimum(y, xs + e, out=y)
            np.clip(y, np.float32(0), np.float32(1), out=out[i : i + step])
    return out.reshape(x.shape)


def draw_seed() -> int:
    """A fresh 64-bit seed from the operating system's CSPRNG (used when no seed is given)."""
    return secrets.randbits(64)
