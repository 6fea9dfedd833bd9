// Fused pre- and post-processing kernels of the NRP runtime (compiled at run time by NVRTC, see loader.py).
//
// Pre-processing reads each input byte once and writes the engine input once: uint8 NHWC (or float32 NCHW)
// -> [0, 1] -> optional Philox/Box-Muller noise, projection to the eps-ball, clamp -> float16/float32 NCHW.
// Post-processing: float16/float32 NCHW -> clamp, * 255, round half to even -> uint8 NHWC. The clamp
// would turn NaN into 0 (black) and infinity into 0 or 255, so a thread that meets a non-finite value
// stores 1 into `*nonfinite` (when not null) for the caller to refuse the output: one bit test per element
// and a 4-byte flag instead of a copy of the float output. Every writer stores the same 1: no atomic.
//
// Launch shape (all kernels): 1-D blocks, grid.x covers one image, grid.y = image of the batch (the loader
// splits batches larger than 65535). No index needs a division by a runtime value on the fast paths.
//
// Layout choices for the fast paths (3 channels, H*W a multiple of 4, aligned pointers):
// - A thread owns 4 consecutive pixels. Their 12 input bytes are three 4-byte loads; a warp's loads cover
//   384 contiguous bytes (three full 128-byte lines), so every DRAM sector fetched is fully used and L1
//   absorbs the 12-byte stride. 16-byte loads would need 16 pixels per thread and leave a batch-1 launch
//   with a quarter of the threads; a shared-memory transpose would add a barrier for a stream that is
//   only a third of the traffic (uint8 in, float16 out).
// - The thread's 4 pixels of channel c are 4 consecutive CHW elements starting at a multiple of 4: exactly
//   one Philox group, so one Philox call yields the 4 normals, and each plane gets one 8-byte (float16)
//   or 16-byte (float32) store; a warp writes 256 or 512 contiguous bytes per plane.
// The generic kernels handle any shape and alignment, one thread per Philox group (or per pixel).
#include "nrp_kernels.cuh"

// Noise parameters, passed by value; mirrored by a ctypes.Structure in loader.py (five 4-byte fields).
struct NrpNoise {
    float sigma;
    float eps;
    nrp_u32 key0;    // low 32 bits of the seed
    nrp_u32 key1;    // high 32 bits of the seed
    nrp_u32 image0;  // Philox image index of the first image of this launch (caller's start index)
};

__device__ __forceinline__ void store1(float* dst, nrp_u64 i, float v) {
    dst[i] = v;
}

__device__ __forceinline__ void store1(unsigned short* dst, nrp_u64 i, float v) {
    dst[i] = nrp_f32_to_f16_bits(v);
}

// Four consecutive elements at an index that is a multiple of 4 (16-byte / 8-byte aligned).
__device__ __forceinline__ void store4(float* dst, nrp_u64 i, const float (&v)[4]) {
    *reinterpret_cast<float4*>(dst + i) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void store4(unsigned short* dst, nrp_u64 i, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(dst + i) = make_uint2(nrp_pack_half2(v[0], v[1]), nrp_pack_half2(v[2], v[3]));
}

__device__ __forceinline__ float load1(const float* src, nrp_u64 i) {
    return __ldg(src + i);
}

__device__ __forceinline__ float load1(const unsigned short* src, nrp_u64 i) {
    return nrp_f16_bits_to_f32(__ldg(src + i));
}

__device__ __forceinline__ void load4(const float* src, nrp_u64 i, float (&v)[4]) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(src + i));
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}

__device__ __forceinline__ void load4(const unsigned short* src, nrp_u64 i, float (&v)[4]) {
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(src + i));
    v[0] = nrp_f16_bits_to_f32((unsigned short)(q.x & 0xFFFFu));
    v[1] = nrp_f16_bits_to_f32((unsigned short)(q.x >> 16));
    v[2] = nrp_f16_bits_to_f32((unsigned short)(q.y & 0xFFFFu));
    v[3] = nrp_f16_bits_to_f32((unsigned short)(q.y >> 16));
}

// Noise + projection + clamp (NOISE) or clamp only, for the 4 elements of Philox group `group`.
template <bool NOISE>
__device__ __forceinline__ void finish4(float (&v)[4], const NrpNoise& nz, nrp_u32 image, nrp_u64 group) {
    if (NOISE) {
        const nrp_f32x4 n = nrp_normal4(nz.key0, nz.key1, image, group);
        v[0] = nrp_project(v[0], n.x, nz.sigma, nz.eps);
        v[1] = nrp_project(v[1], n.y, nz.sigma, nz.eps);
        v[2] = nrp_project(v[2], n.z, nz.sigma, nz.eps);
        v[3] = nrp_project(v[3], n.w, nz.sigma, nz.eps);
    } else {
        NRP_UNROLL
        for (int j = 0; j < 4; ++j) v[j] = nrp_clamp01(v[j]);
    }
}

// uint8 NHWC, 3 channels, H*W % 4 == 0, src 4-byte and dst 16/8-byte aligned. Thread = 4 pixels.
template <typename T, bool NOISE>
__device__ __forceinline__ void pre_u8x4(const unsigned char* __restrict__ src, T* __restrict__ dst,
                                         nrp_u32 hw, NrpNoise nz) {
    const nrp_u32 quads = hw >> 2;
    const nrp_u32 q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= quads) return;
    const nrp_u32 n = blockIdx.y;
    const nrp_u32* in = reinterpret_cast<const nrp_u32*>(src + (nrp_u64)n * hw * 3u) + 3u * q;
    // Bytes of 4 RGB pixels: w0 = r0 g0 b0 r1, w1 = g1 b1 r2 g2, w2 = b2 r3 g3 b3.
    const nrp_u32 w[3] = {__ldg(in), __ldg(in + 1), __ldg(in + 2)};
    const nrp_u64 out = (nrp_u64)n * hw * 3u + 4u * q;
    NRP_UNROLL
    for (int c = 0; c < 3; ++c) {
        float v[4];
        NRP_UNROLL
        for (int j = 0; j < 4; ++j) {
            const int byte = 3 * j + c;  // compile-time after unrolling
            v[j] = nrp_div255(nrp_byte_as_float(w[byte >> 2], byte & 3));
        }
        finish4<NOISE>(v, nz, nz.image0 + n, (nrp_u64)c * quads + q);
        store4(dst, out + (nrp_u64)c * hw, v);
    }
}

// uint8 NHWC, any channel count and size, any alignment. Thread = one Philox group of CHW elements.
template <typename T, bool NOISE>
__device__ __forceinline__ void pre_u8(const unsigned char* __restrict__ src, T* __restrict__ dst,
                                       nrp_u32 channels, nrp_u32 hw, NrpNoise nz) {
    const nrp_u32 chw = channels * hw;
    const nrp_u32 g = blockIdx.x * blockDim.x + threadIdx.x;
    if ((nrp_u64)g * 4u >= chw) return;
    const nrp_u32 n = blockIdx.y;
    const unsigned char* in = src + (nrp_u64)n * chw;
    float v[4];
    NRP_UNROLL
    for (int j = 0; j < 4; ++j) {
        const nrp_u32 e = min(4u * g + j, chw - 1u);  // the tail's extra lanes are computed, not stored
        const nrp_u32 c = e / hw;
        const nrp_u32 p = e - c * hw;
        v[j] = nrp_div255((float)in[(nrp_u64)p * channels + c]);
    }
    finish4<NOISE>(v, nz, nz.image0 + n, g);
    NRP_UNROLL
    for (int j = 0; j < 4; ++j) {
        const nrp_u32 e = 4u * g + j;
        if (e < chw) store1(dst, (nrp_u64)n * chw + e, v[j]);
    }
}

// float32 NCHW, any shape. Thread = one Philox group; 16-byte loads/stores when `vec` (C*H*W % 4 == 0
// and aligned pointers), element-wise otherwise.
template <typename T, bool NOISE>
__device__ __forceinline__ void pre_f32(const float* __restrict__ src, T* __restrict__ dst, nrp_u32 chw,
                                        int vec, NrpNoise nz) {
    const nrp_u32 g = blockIdx.x * blockDim.x + threadIdx.x;
    if ((nrp_u64)g * 4u >= chw) return;
    const nrp_u32 n = blockIdx.y;
    const nrp_u64 base = (nrp_u64)n * chw + 4u * g;
    float v[4];
    if (vec) {
        load4(src, base, v);
    } else {
        NRP_UNROLL
        for (int j = 0; j < 4; ++j) v[j] = 4u * g + j < chw ? load1(src, base + j) : 0.0f;
    }
    finish4<NOISE>(v, nz, nz.image0 + n, g);
    if (vec) {
        store4(dst, base, v);
    } else {
        NRP_UNROLL
        for (int j = 0; j < 4; ++j) {
            if (4u * g + j < chw) store1(dst, base + j, v[j]);
        }
    }
}

// float NCHW -> uint8 NHWC, 3 channels, H*W % 4 == 0, aligned. Thread = 4 pixels: one vector load per
// plane, three 4-byte stores (12 contiguous bytes; a warp covers 384 contiguous bytes).
template <typename T>
__device__ __forceinline__ void post_x4(const T* __restrict__ src, unsigned char* __restrict__ dst,
                                        nrp_u32 hw, nrp_u32* __restrict__ nonfinite) {
    const nrp_u32 q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (hw >> 2)) return;
    const nrp_u32 n = blockIdx.y;
    nrp_u32 b[12];
    bool bad = false;
    NRP_UNROLL
    for (int c = 0; c < 3; ++c) {
        float v[4];
        load4(src, (nrp_u64)n * hw * 3u + (nrp_u64)c * hw + 4u * q, v);
        NRP_UNROLL
        for (int j = 0; j < 4; ++j) {
            b[3 * j + c] = nrp_to_byte(v[j]);
            bad |= nrp_nonfinite(v[j]);
        }
    }
    if (bad && nonfinite) *nonfinite = 1u;
    nrp_u32* out = reinterpret_cast<nrp_u32*>(dst + (nrp_u64)n * hw * 3u) + 3u * q;
    NRP_UNROLL
    for (int k = 0; k < 3; ++k) {
        out[k] = b[4 * k] | (b[4 * k + 1] << 8) | (b[4 * k + 2] << 16) | (b[4 * k + 3] << 24);
    }
}

// float NCHW -> uint8 NHWC, any channel count, size and alignment. Thread = one pixel.
template <typename T>
__device__ __forceinline__ void post_any(const T* __restrict__ src, unsigned char* __restrict__ dst,
                                         nrp_u32 channels, nrp_u32 hw, nrp_u32* __restrict__ nonfinite) {
    const nrp_u32 p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    const nrp_u32 n = blockIdx.y;
    const nrp_u64 in = (nrp_u64)n * channels * hw + p;
    unsigned char* out = dst + ((nrp_u64)n * hw + p) * channels;
    bool bad = false;
    for (nrp_u32 c = 0; c < channels; ++c) {
        const float v = load1(src, in + (nrp_u64)c * hw);
        out[c] = (unsigned char)nrp_to_byte(v);
        bad |= nrp_nonfinite(v);
    }
    if (bad && nonfinite) *nonfinite = 1u;
}

// extern "C" entry points (plain names for cuModuleGetFunction). f16 data travels as raw uint16 bits.
// clang-format off
#define NRP_PRE_U8X4(NAME, T, NOISE) \
    extern "C" __global__ void NAME(const unsigned char* src, T* dst, nrp_u32 hw, NrpNoise nz) { \
        pre_u8x4<T, NOISE>(src, dst, hw, nz); }
#define NRP_PRE_U8(NAME, T, NOISE) \
    extern "C" __global__ void NAME(const unsigned char* src, T* dst, nrp_u32 channels, nrp_u32 hw, NrpNoise nz) { \
        pre_u8<T, NOISE>(src, dst, channels, hw, nz); }
#define NRP_PRE_F32(NAME, T, NOISE) \
    extern "C" __global__ void NAME(const float* src, T* dst, nrp_u32 chw, int vec, NrpNoise nz) { \
        pre_f32<T, NOISE>(src, dst, chw, vec, nz); }

NRP_PRE_U8X4(nrp_pre_u8x4_f16, unsigned short, false)
NRP_PRE_U8X4(nrp_pre_u8x4_f32, float, false)
NRP_PRE_U8X4(nrp_pre_u8x4_f16_noise, unsigned short, true)
NRP_PRE_U8X4(nrp_pre_u8x4_f32_noise, float, true)
NRP_PRE_U8(nrp_pre_u8_f16, unsigned short, false)
NRP_PRE_U8(nrp_pre_u8_f32, float, false)
NRP_PRE_U8(nrp_pre_u8_f16_noise, unsigned short, true)
NRP_PRE_U8(nrp_pre_u8_f32_noise, float, true)
NRP_PRE_F32(nrp_pre_f32_f16, unsigned short, false)
NRP_PRE_F32(nrp_pre_f32_f32, float, false)
NRP_PRE_F32(nrp_pre_f32_f16_noise, unsigned short, true)
NRP_PRE_F32(nrp_pre_f32_f32_noise, float, true)

extern "C" __global__ void nrp_post_f16_u8x4(const unsigned short* src, unsigned char* dst, nrp_u32 hw,
                                             nrp_u32* nonfinite) {
    post_x4(src, dst, hw, nonfinite); }
extern "C" __global__ void nrp_post_f32_u8x4(const float* src, unsigned char* dst, nrp_u32 hw,
                                             nrp_u32* nonfinite) {
    post_x4(src, dst, hw, nonfinite); }
extern "C" __global__ void nrp_post_f16_u8(const unsigned short* src, unsigned char* dst, nrp_u32 channels,
                                           nrp_u32 hw, nrp_u32* nonfinite) {
    post_any(src, dst, channels, hw, nonfinite); }
extern "C" __global__ void nrp_post_f32_u8(const float* src, unsigned char* dst, nrp_u32 channels,
                                           nrp_u32 hw, nrp_u32* nonfinite) {
    post_any(src, dst, channels, hw, nonfinite); }
// clang-format on
