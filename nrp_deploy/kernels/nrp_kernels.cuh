// Per-element maths of the fused pre/post-processing kernels.
//
// Everything here is `NRP_HD` (host + device) so that the very code the GPU runs can also be compiled by
// g++ (or by nvcc for the host) and checked on a CPU against the numpy reference in philox.py /
// reference.py. The header needs no CUDA toolkit header: NVRTC from the nvidia-cuda-nvrtc wheel ships
// none (no <cuda_fp16.h>, no <cstdint>), so integer types are the built-in ones and half precision is
// handled as raw uint16 bits (inline PTX `cvt` on the device, a bit-exact software conversion on the host).
//
// Floating-point contract: every operation rounds once, exactly like numpy's float32 ufuncs. The only
// place a compiler could contract a multiply-add (x + sigma * noise) goes through nrp_mul/nrp_add, which
// map to __fmul_rn/__fadd_rn on the device; host builds must use -ffp-contract=off.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define NRP_HD __host__ __device__ __forceinline__
#define NRP_UNROLL _Pragma("unroll")
#else
#define NRP_HD inline
#define NRP_UNROLL
#endif

#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <cstring>
#endif

typedef unsigned int nrp_u32;
typedef unsigned long long nrp_u64;
static_assert(sizeof(nrp_u32) == 4 && sizeof(nrp_u64) == 8, "nrp_kernels.cuh needs 32/64-bit integers");

// Philox4x32-10 constants (Salmon et al. 2011; Random123 / cuRAND). Macros rather than namespace-scope
// constants, which NVRTC would also emit as unused __device__ globals.
#define NRP_PHILOX_M0 0xD2511F53u
#define NRP_PHILOX_M1 0xCD9E8D57u
#define NRP_PHILOX_W0 0x9E3779B9u
#define NRP_PHILOX_W1 0xBB67AE85u
#define NRP_TWO_PI 6.28318530717958647692f

struct nrp_u32x4 {
    nrp_u32 x, y, z, w;
};

struct nrp_f32x4 {
    float x, y, z, w;
};

NRP_HD nrp_u32 nrp_float_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    nrp_u32 u;
    memcpy(&u, &f, sizeof(u));
    return u;
#endif
}

NRP_HD float nrp_bits_float(nrp_u32 u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
#endif
}

// Uncontracted float32 multiply and add: keeps x + sigma * noise bit-equal to numpy's two roundings.
NRP_HD float nrp_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

NRP_HD float nrp_add(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

// ---------------------------------------------------------------------------------------------------
// Philox4x32-10
// ---------------------------------------------------------------------------------------------------

// One round. The 64-bit product compiles to a single IMAD.WIDE.U32 on the device (hi and lo at once).
NRP_HD nrp_u32x4 nrp_philox_round(nrp_u32x4 c, nrp_u32 k0, nrp_u32 k1) {
    const nrp_u64 p0 = (nrp_u64)NRP_PHILOX_M0 * c.x;
    const nrp_u64 p1 = (nrp_u64)NRP_PHILOX_M1 * c.z;
    nrp_u32x4 r;
    r.x = (nrp_u32)(p1 >> 32) ^ c.y ^ k0;
    r.y = (nrp_u32)p1;
    r.z = (nrp_u32)(p0 >> 32) ^ c.w ^ k1;
    r.w = (nrp_u32)p0;
    return r;
}

NRP_HD nrp_u32x4 nrp_philox4x32_10(nrp_u32x4 c, nrp_u32 k0, nrp_u32 k1) {
    NRP_UNROLL
    for (int i = 0; i < 10; ++i) {
        if (i > 0) {
            k0 += NRP_PHILOX_W0;
            k1 += NRP_PHILOX_W1;
        }
        c = nrp_philox_round(c, k0, k1);
    }
    return c;
}

// ---------------------------------------------------------------------------------------------------
// Normals: uniform in (0, 1) as cuRAND makes it, Box-Muller in cuRAND's order
// ---------------------------------------------------------------------------------------------------

// u = w * 2^-32 + 2^-33 in float32; the product is exact (power of two), so contraction cannot matter.
NRP_HD float nrp_uniform(nrp_u32 w) {
    return nrp_add(nrp_mul((float)w, 0x1p-32f), 0x1p-33f);
}

// Default: full-precision sincosf (one shared range reduction), normals within a few ulps of numpy's.
// NRP_FAST_SINCOS (FusedKernels(fast_sincos=True)) uses the MUFU approximations, as cuRAND's
// curand_normal does on the device: about 18 fewer instructions per pair of normals, absolute error of
// sin/cos ~1e-6 (~3e-7 in the output at sigma = 0.05), for when the noise kernel is instruction-bound.
NRP_HD void nrp_sincos(float t, float* s, float* c) {
#if defined(__CUDA_ARCH__) && defined(NRP_FAST_SINCOS)
    __sincosf(t, s, c);
#elif defined(__CUDA_ARCH__)
    sincosf(t, s, c);
#else
    *s = sinf(t);
    *c = cosf(t);
#endif
}

// Two normals from two words: r = sqrt(-2 ln u_a), t = 2 pi u_b; (r sin t, r cos t).
NRP_HD void nrp_box_muller(nrp_u32 wa, nrp_u32 wb, float* first, float* second) {
    const float r = sqrtf(-2.0f * logf(nrp_uniform(wa)));
    const float t = NRP_TWO_PI * nrp_uniform(wb);
    float s, c;
    nrp_sincos(t, &s, &c);
    *first = r * s;
    *second = r * c;
}

// The four normals of group g (elements 4g .. 4g+3 in CHW order) of image n, for key (k0, k1).
NRP_HD nrp_f32x4 nrp_normal4(nrp_u32 k0, nrp_u32 k1, nrp_u32 image, nrp_u64 group) {
    nrp_u32x4 ctr;
    ctr.x = (nrp_u32)group;
    ctr.y = (nrp_u32)(group >> 32);
    ctr.z = image;
    ctr.w = 0u;
    const nrp_u32x4 w = nrp_philox4x32_10(ctr, k0, k1);
    nrp_f32x4 n;
    nrp_box_muller(w.x, w.y, &n.x, &n.y);
    nrp_box_muller(w.z, w.w, &n.z, &n.w);
    return n;
}

// ---------------------------------------------------------------------------------------------------
// Pre-processing: byte -> [0, 1], noise, projection, clamp
// ---------------------------------------------------------------------------------------------------

// Byte k (0 = lowest address) of a little-endian word as a float, without an I2F: the byte becomes the
// low mantissa bits of 2^23, and subtracting 2^23 is exact. On the device this is one PRMT + one FADD.
NRP_HD float nrp_byte_as_float(nrp_u32 word, int k) {
#if defined(__CUDA_ARCH__)
    const nrp_u32 bits = __byte_perm(word, 0x4B000000u, 0x7540u | (nrp_u32)k);
#else
    const nrp_u32 bits = 0x4B000000u | ((word >> (8 * k)) & 0xFFu);
#endif
    return nrp_bits_float(bits) - 8388608.0f;
}

// b / 255 correctly rounded (equal to numpy's float32 division), in one multiply and two FMAs instead of
// a full IEEE division: q0 = b * (1/255), then one Newton correction with the exact residual. Checked
// exhaustively for all 256 bytes by the host tests.
NRP_HD float nrp_div255(float b) {
    const float inv = 1.0f / 255.0f;
    const float q0 = nrp_mul(b, inv);
    const float residual = fmaf(-q0, 255.0f, b);
    return fmaf(residual, inv, q0);
}

// x' = clamp(min(max(x + sigma * noise, x - eps), x + eps), 0, 1), each step rounded like numpy.
NRP_HD float nrp_project(float x, float noise, float sigma, float eps) {
    float y = nrp_add(x, nrp_mul(sigma, noise));
    y = fminf(fmaxf(y, x - eps), x + eps);
    return fminf(fmaxf(y, 0.0f), 1.0f);
}

NRP_HD float nrp_clamp01(float x) {
    return fminf(fmaxf(x, 0.0f), 1.0f);
}

// NaN or +-infinity: every exponent bit set. A bit test, which no fast-math option can fold away.
NRP_HD bool nrp_nonfinite(float x) {
    return (nrp_float_bits(x) & 0x7F800000u) == 0x7F800000u;
}

// ---------------------------------------------------------------------------------------------------
// Half precision as raw bits
// ---------------------------------------------------------------------------------------------------

// float32 -> float16 bits, round to nearest even (numpy's astype(float16)); NaN becomes a quiet NaN.
NRP_HD unsigned short nrp_f32_to_f16_bits(float f) {
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    const nrp_u32 x = nrp_float_bits(f);
    const nrp_u32 sign = (x >> 16) & 0x8000u;
    const nrp_u32 ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return (unsigned short)(sign | 0x7E00u);
    if (ax >= 0x477FF000u) return (unsigned short)(sign | 0x7C00u);  // >= 65520 rounds to infinity
    if (ax <= 0x33000000u) return (unsigned short)sign;               // <= 2^-25 rounds to zero
    const nrp_u32 exp = ax >> 23;
    const nrp_u32 mant = (ax & 0x7FFFFFu) | 0x800000u;
    // Normal halves keep 11 significant bits; subnormal ones (below 2^-14) fewer, in steps of 2^-24.
    const nrp_u32 shift = exp >= 113u ? 13u : 126u - exp;
    nrp_u32 q = mant >> shift;
    const nrp_u32 rem = mant & ((1u << shift) - 1u);
    const nrp_u32 half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    // For normals q carries the implicit bit (0x400 .. 0x800); adding the biased exponent minus one
    // places it, and a rounding carry into 0x800 bumps the exponent as it should.
    const nrp_u32 bits = exp >= 113u ? ((exp - 113u) << 10) + q : q;
    return (unsigned short)(sign | bits);
#endif
}

NRP_HD float nrp_f16_bits_to_f32(unsigned short h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    const nrp_u32 sign = ((nrp_u32)h & 0x8000u) << 16;
    const nrp_u32 exp = ((nrp_u32)h >> 10) & 0x1Fu;
    const nrp_u32 mant = (nrp_u32)h & 0x3FFu;
    if (exp == 0u) {
        const float mag = (float)mant * 0x1p-24f;  // zero or subnormal: exact
        return nrp_bits_float(sign | nrp_float_bits(mag));
    }
    if (exp == 31u) return nrp_bits_float(sign | 0x7F800000u | (mant << 13));
    return nrp_bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

// Two float32 values as a packed pair of halves, `lo` at the lower address.
NRP_HD nrp_u32 nrp_pack_half2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    nrp_u32 packed;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    return packed;
#else
    return (nrp_u32)nrp_f32_to_f16_bits(lo) | ((nrp_u32)nrp_f32_to_f16_bits(hi) << 16);
#endif
}

// ---------------------------------------------------------------------------------------------------
// Post-processing: clamp, * 255, round half to even (numpy's rint), -> byte
// ---------------------------------------------------------------------------------------------------

NRP_HD nrp_u32 nrp_to_byte(float x) {
    const float y = nrp_clamp01(x) * 255.0f;
#if defined(__CUDA_ARCH__)
    return __float2uint_rn(y);  // one F2I with round-to-nearest-even
#else
    return (nrp_u32)rintf(y);
#endif
}
