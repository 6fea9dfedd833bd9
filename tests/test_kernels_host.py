"""The kernels' per-element maths (nrp_kernels.cuh) compiled for the host must reproduce the numpy reference.

The header is built into a small shared library with g++ and, where present, with nvcc (host pass of a .cu
translation unit), and called through ctypes on many (seed, image, element) triples: Philox words must be
identical, normals within a few float32 ulps (libm and numpy's sin/cos/log are not correctly rounded),
and the byte conversion, projection, float16 rounding and post-processing bit-exact.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from importlib import resources

import numpy as np
import pytest

from nrp_deploy.kernels import philox
from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference

KERNEL_DIR = resources.files("nrp_deploy.kernels")

# extern "C" wrappers that loop the header's functions over arrays, for ctypes.
DRIVER = r"""
#include "nrp_kernels.cuh"

extern "C" {
void drv_philox(const nrp_u32* ctr, const nrp_u32* key, nrp_u32* out, long n) {
    for (long i = 0; i < n; ++i) {
        nrp_u32x4 c = {ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]};
        nrp_u32x4 r = nrp_philox4x32_10(c, key[2 * i], key[2 * i + 1]);
        out[4 * i] = r.x; out[4 * i + 1] = r.y; out[4 * i + 2] = r.z; out[4 * i + 3] = r.w;
    }
}
void drv_normal4(const nrp_u32* key, const nrp_u32* image, const nrp_u64* group, float* out, long n) {
    for (long i = 0; i < n; ++i) {
        nrp_f32x4 v = nrp_normal4(key[2 * i], key[2 * i + 1], image[i], group[i]);
        out[4 * i] = v.x; out[4 * i + 1] = v.y; out[4 * i + 2] = v.z; out[4 * i + 3] = v.w;
    }
}
void drv_byte_to_unit(float* out) {  // out[4 * b + k]: byte b placed at byte k of a word
    for (nrp_u32 b = 0; b < 256; ++b)
        for (int k = 0; k < 4; ++k) out[4 * b + k] = nrp_div255(nrp_byte_as_float(b << (8 * k), k));
}
void drv_project(const float* x, const float* noise, float sigma, float eps, float* out, long n) {
    for (long i = 0; i < n; ++i) out[i] = nrp_project(x[i], noise[i], sigma, eps);
}
void drv_f32_to_f16(const float* in, unsigned short* out, long n) {
    for (long i = 0; i < n; ++i) out[i] = nrp_f32_to_f16_bits(in[i]);
}
void drv_f16_to_f32(const unsigned short* in, float* out, long n) {
    for (long i = 0; i < n; ++i) out[i] = nrp_f16_bits_to_f32(in[i]);
}
void drv_pack_half2(const float* in, nrp_u32* out, long pairs) {
    for (long i = 0; i < pairs; ++i) out[i] = nrp_pack_half2(in[2 * i], in[2 * i + 1]);
}
void drv_to_byte(const float* in, unsigned char* out, long n) {
    for (long i = 0; i < n; ++i) out[i] = (unsigned char)nrp_to_byte(in[i]);
}
// One uint8 NHWC image through the element maths in the kernels' order, to float32 and float16 NCHW.
void drv_preprocess(const unsigned char* img, long c, long hw, nrp_u64 seed, nrp_u32 image, float sigma,
                    float eps, float* out32, unsigned short* out16) {
    for (long e = 0; e < c * hw; ++e) {
        long ch = e / hw, p = e % hw;
        float x = nrp_div255((float)img[p * c + ch]);
        nrp_f32x4 n = nrp_normal4((nrp_u32)seed, (nrp_u32)(seed >> 32), image, (nrp_u64)(e / 4));
        float lanes[4] = {n.x, n.y, n.z, n.w};
        out32[e] = nrp_project(x, lanes[e % 4], sigma, eps);
        out16[e] = nrp_f32_to_f16_bits(out32[e]);
    }
}
}
"""

COMPILERS = {
    "g++": ["g++", "-x", "c++", "-fPIC", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"],
    # nvcc: the same translation unit as CUDA source; the host pass sees __CUDACC__ but not __CUDA_ARCH__.
    "nvcc": ["nvcc", "-x", "cu", "-Xcompiler", "-fPIC,-ffp-contract=off,-Wall,-Wextra"],
}


@pytest.fixture(scope="module", params=sorted(COMPILERS))
def lib(request, tmp_path_factory):
    compiler = request.param
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    work = tmp_path_factory.mktemp(compiler.replace("+", "p"))
    (work / "driver.cpp").write_text(DRIVER)
    cmd = [*COMPILERS[compiler], "-O2", "-std=c++17", "-shared", f"-I{KERNEL_DIR}", str(work / "driver.cpp")]
    cmd += ["-o", str(work / "driver.so")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return ctypes.CDLL(str(work / "driver.so"))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_philox_known_answers(lib):
    ctr = np.array([k[0] for k in KAT], dtype=np.uint32)
    key = np.array([k[1] for k in KAT], dtype=np.uint32)
    out = np.zeros_like(ctr)
    lib.drv_philox(_ptr(ctr), _ptr(key), _ptr(out), ctypes.c_long(len(KAT)))
    np.testing.assert_array_equal(out, np.array([k[2] for k in KAT], dtype=np.uint32))


def test_philox_words_equal_numpy(lib):
    rng = np.random.default_rng(7)
    ctr = rng.integers(0, 1 << 32, size=(20000, 4), dtype=np.uint32)
    key = rng.integers(0, 1 << 32, size=(20000, 2), dtype=np.uint32)
    out = np.zeros_like(ctr)
    lib.drv_philox(_ptr(ctr), _ptr(key), _ptr(out), ctypes.c_long(len(ctr)))
    np.testing.assert_array_equal(out, philox.philox4x32_10(ctr, key))


def test_normals_match_reference_on_many_triples(lib):
    rng = np.random.default_rng(11)
    count = 4000
    seeds = [int(s) for s in rng.integers(0, 1 << 64, size=count, dtype=np.uint64)]
    seeds[:3] = [0, (1 << 64) - 1, 0x0123456789ABCDEF]
    images = rng.integers(0, 1 << 32, size=count, dtype=np.uint32)
    images[:2] = [0, 0xFFFFFFFF]
    groups = rng.integers(0, 1 << 20, size=count, dtype=np.uint64)
    groups[:2] = [0, (1 << 40) + 5]  # a group whose high counter word is not zero
    key = np.array([philox.seed_key(s) for s in seeds], dtype=np.uint32)
    out = np.zeros((count, 4), dtype=np.float32)
    lib.drv_normal4(_ptr(key), _ptr(images), _ptr(groups), _ptr(out), ctypes.c_long(count))

    expected = philox.group_normals(key, images, groups)
    diff = np.abs(out - expected)
    # A few float32 ulps of |normal| (< 6.8): libm and numpy's float32 sin/cos/log differ by ~1 ulp.
    assert diff.max() <= 4e-6, diff.max()
    assert np.mean(diff == 0) > 0.5


def test_byte_to_unit_is_exact_division_for_every_byte_and_position(lib):
    out = np.zeros((256, 4), dtype=np.float32)
    lib.drv_byte_to_unit(_ptr(out))
    expected = np.arange(256, dtype=np.float32) / np.float32(255)
    for k in range(4):
        np.testing.assert_array_equal(out[:, k], expected)


def test_projection_is_bit_exact(lib):
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 256, 100000) / 255).astype(np.float32)
    noise = rng.standard_normal(100000).astype(np.float32) * np.float32(3)
    sigma, eps = np.float32(0.05), np.float32(16 / 255)
    out = np.zeros_like(x)
    lib.drv_project(
        _ptr(x), _ptr(noise), ctypes.c_float(sigma), ctypes.c_float(eps), _ptr(out), ctypes.c_long(len(x))
    )
    expected = np.clip(
        np.minimum(np.maximum(x + sigma * noise, x - eps), x + eps), np.float32(0), np.float32(1)
    )
    np.testing.assert_array_equal(out, expected)


def test_float16_conversions_are_bit_exact(lib):
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << 32, size=400000, dtype=np.uint32)
    values = bits.view(np.float32)
    ties = [2.0**-25, 2.0**-24 * 1.5, 2.0**-24 * 2.5, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 65520.0]
    edges = [
        0.0,
        0.5,
        1.0,
        2.0**-24,
        2.0**-14,
        2.0**-14 * (1 - 2.0**-12),
        2.0**-25 * 1.0001,
        65504.0,
        1e9,
        np.inf,
    ]
    special = np.array([*ties, *edges, 65519.99], dtype=np.float32)
    grid = np.linspace(0, 1, 200001, dtype=np.float32)  # the range the kernels actually write
    values = np.concatenate([values[np.isfinite(values)], special, -special, grid])
    out = np.zeros(values.shape, dtype=np.uint16)
    lib.drv_f32_to_f16(_ptr(values), _ptr(out), ctypes.c_long(len(values)))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, values.astype(np.float16).view(np.uint16))

    every_half = np.arange(1 << 16, dtype=np.uint16)
    back = np.zeros(every_half.shape, dtype=np.float32)
    lib.drv_f16_to_f32(_ptr(every_half), _ptr(back), ctypes.c_long(len(every_half)))
    expected = every_half.view(np.float16).astype(np.float32)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(back[finite], expected[finite])
    assert np.all(np.isnan(back[~finite]) == np.isnan(expected[~finite]))

    pairs = grid[:20000]
    packed = np.zeros(len(pairs) // 2, dtype=np.uint32)
    lib.drv_pack_half2(_ptr(pairs), _ptr(packed), ctypes.c_long(len(packed)))
    np.testing.assert_array_equal(packed.view(np.uint16), pairs.astype(np.float16).view(np.uint16))


def test_post_process_rounding_equals_numpy(lib):
    halves = (np.arange(-20, 530, dtype=np.float32) / np.float32(2)) / np.float32(255)  # every k + 0.5 tie
    rng = np.random.default_rng(9)
    values = np.concatenate([halves, rng.uniform(-0.5, 1.5, 200000).astype(np.float32), [np.inf, -np.inf]])
    values = values.astype(np.float32)
    out = np.zeros(values.shape, dtype=np.uint8)
    lib.drv_to_byte(_ptr(values), _ptr(out), ctypes.c_long(len(values)))
    expected = postprocess_reference(values.reshape(1, 1, 1, -1)).reshape(-1)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 16, 12), (3, 5, 7), (1, 9, 3)])
def test_composed_preprocess_matches_reference(lib, channels, height, width):
    rng = np.random.default_rng(channels * 100 + height)
    img = rng.integers(0, 256, size=(1, height, width, channels), dtype=np.uint8)
    seed, image, sigma, eps = 0xDEADBEEF12345678, 6, 0.05, 16 / 255
    n = channels * height * width
    out32 = np.zeros(n, dtype=np.float32)
    out16 = np.zeros(n, dtype=np.uint16)
    lib.drv_preprocess(
        _ptr(img), ctypes.c_long(channels), ctypes.c_long(height * width), ctypes.c_uint64(seed),
        ctypes.c_uint32(image), ctypes.c_float(sigma), ctypes.c_float(eps), _ptr(out32), _ptr(out16),
    )  # fmt: skip
    ref32 = preprocess_reference(img, "float32", sigma, eps, seed, start_index=image).reshape(-1)
    assert np.abs(out32 - ref32).max() <= 1e-6
    ref16 = ref32.astype(np.float16)
    got16 = out16.view(np.float16)
    assert np.abs(got16.astype(np.float32) - ref16.astype(np.float32)).max() <= 2.0**-11
