// CUDA kernels of the TurboQuant KV-cache types turbo2/turbo3/turbo4: the quantizer the cache
// writes go through (set-rows, a warp per block), and dequantization in the shape ggml-cuda's generic kernels take
// (two values per call, `iqs` and `iqs + 32` of a 64-value block) for get-rows and for the f16
// conversion the flash-attention kernels use.
//
// The quantizer is the reference one (ggml-turbo.c, crates/turboquant/src/block.rs) in device
// code. ggml-cuda builds with fast math, so a value sitting exactly on a level boundary may round
// to the other level; the tests state the tolerance.

#pragma once

#include "common.cuh"
#include "ggml-turbo-common.h"
#include "ggml-turbo-tables.h"

static constexpr __host__ __device__ bool ggml_cuda_type_is_turbo(const ggml_type type) {
    return type == GGML_TYPE_TURBO4 || type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO2;
}

// What the kernels templated on the type need to know of it.
template <ggml_type type>
static constexpr __host__ __device__ int turbo_levels() {
    static_assert(type == GGML_TYPE_TURBO4 || type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO2, "not a turbo type");
    return type == GGML_TYPE_TURBO4 ? 16 : type == GGML_TYPE_TURBO3 ? 8 : 4;
}

template <ggml_type type>
static constexpr __host__ __device__ size_t turbo_block_size() {
    return type == GGML_TYPE_TURBO4 ? sizeof(block_turbo4) : type == GGML_TYPE_TURBO3 ? sizeof(block_turbo3) : sizeof(block_turbo2);
}

template <ggml_type type>
static __device__ __forceinline__ const float * turbo_codebook() {
    return type == GGML_TYPE_TURBO4 ? turbo4_codebook : type == GGML_TYPE_TURBO3 ? turbo3_codebook : turbo2_codebook;
}

template <ggml_type type>
static __device__ __forceinline__ const float * turbo_boundaries() {
    return type == GGML_TYPE_TURBO4 ? turbo4_boundaries : type == GGML_TYPE_TURBO3 ? turbo3_boundaries : turbo2_boundaries;
}

// Level `lane % levels`, held by each lane of a warp so that codes can be looked up with
// __shfl_sync (one instruction, no divergent constant-memory reads). The shuffle reads only bits
// 4:0 of its lane argument and the levels repeat every `levels` lanes, so a code may carry any
// bits above its own.
template <ggml_type type>
static __device__ __forceinline__ float turbo_codebook_lane(const unsigned int lane) {
    return turbo_codebook<type>()[lane % turbo_levels<type>()];
}

// Index of the nearest level: the number of boundaries strictly below y, as the reference counts
// it (ggml-turbo.c). The boundaries are symmetric about the middle one, 0, so with 8 or 16 levels
// only the positive half is compared: y > 0 is past the middle and past the positive boundaries
// below it; y <= 0 is below the middle by the positive boundaries not above |y|, which are those
// below the next float after |y| (one integer add; y is finite here). turbo4's 15 compares
// become 7.
template <int levels>
static __device__ __forceinline__ int turbo_nearest(const float y, const float * boundaries) {
    if constexpr (levels < 8) {
        int idx = 0;
#pragma unroll
        for (int k = 0; k < levels - 1; ++k) {
            idx += y > boundaries[k];
        }
        return idx;
    } else {
        constexpr int half = levels/2; // boundaries[half - 1] == 0
        const bool  above  = y > 0.0f;
        const float a      = above ? y : __int_as_float(__float_as_int(fabsf(y)) + 1);
        int n = 0;
#pragma unroll
        for (int k = half; k < levels - 1; ++k) {
            n += a > boundaries[k];
        }
        return above ? half + n : half - 1 - n;
    }
}

// One step of turbo_warp_sum_transposed: the lanes with bit `offset` set keep the upper half of the
// m values still held and send the lower half to the partner, the others the reverse.
template <int m, int offset, int n>
static __device__ __forceinline__ void turbo_warp_sum_transposed_step(float (&v)[n], const int lane) {
    const bool upper = lane & offset;
#pragma unroll
    for (int i = 0; i < m/2; ++i) {
        const float send = upper ? v[i]       : v[i + m/2];
        const float keep = upper ? v[i + m/2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFF, send, offset, WARP_SIZE);
    }
    if constexpr (m > 2) {
        turbo_warp_sum_transposed_step<m/2, offset/2>(v, lane);
    }
}

// Sums 32 values over the lanes of a warp, each lane holding its own 32: lane l ends with the sum
// of value l. Each step halves the values held, so the 32 sums cost 31 shuffles rather than 160
// (and the shuffles of a step are independent).
static __device__ __forceinline__ float turbo_warp_sum_transposed(float (&v)[WARP_SIZE], const int lane) {
    turbo_warp_sum_transposed_step<WARP_SIZE, WARP_SIZE/2>(v, lane);
    return v[0];
}

// Quantizes one 64-value block with a whole warp: lane l holds values l (v0) and l + 32 (v1). A
// cache write of one token is a handful of blocks, so one thread per block would leave the GPU
// idle for the 16-candidate scale search; a warp per block takes it from hundreds of dependent
// steps to tens. The search is the reference one (ggml-turbo.c); only the order of the sums differs.
template <ggml_type type>
static __device__ void quantize_turbo_block_warp(const float v0, const float v1, void * GGML_CUDA_RESTRICT dst, const int lane) {
    constexpr int levels     = turbo_levels<type>();
    const float * boundaries = turbo_boundaries<type>();

    float v[2] = {v0, v1};
    float amax = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        v[h] = isfinite(v[h]) ? v[h] : 0.0f;
        amax = fmaxf(amax, fabsf(v[h]));
    }
#pragma unroll
    for (int offset = WARP_SIZE/2; offset > 0; offset >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFF, amax, offset, WARP_SIZE));
    }

    const float level = turbo_codebook_lane<type>(lane);

    half d = __float2half(0.0f);
    int idx[2] = {levels/2, levels/2};
    if (amax >= TURBO_MIN_MAGNITUDE) {
        static_assert(2*TURBO_SCALE_CANDIDATES == WARP_SIZE, "one lane per candidate and sum");
        const float inv_amax = 1.0f / amax;
        // the lane's part of both sums of every candidate: sum[2 j] = y·c, sum[2 j + 1] = c·c
        float sum[2*TURBO_SCALE_CANDIDATES];
#pragma unroll
        for (int j = 0; j < TURBO_SCALE_CANDIDATES; ++j) {
            const float inv = turbo_scale_grid_inv[j];
            sum[2*j]     = 0.0f;
            sum[2*j + 1] = 0.0f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float y = v[h] * inv_amax;
                const float c = __shfl_sync(0xFFFFFFFF, level, turbo_nearest<levels>(y * inv, boundaries), WARP_SIZE);
                sum[2*j]     += y * c;
                sum[2*j + 1] += c * c;
            }
        }
        // lane 2 j ends with candidate j's y·c, lane 2 j + 1 with its c·c: both lanes of a pair
        // take candidate j's sums
        const float total = turbo_warp_sum_transposed(sum, lane);
        const float other = __shfl_xor_sync(0xFFFFFFFF, total, 1, WARP_SIZE);
        const float sxc   = lane % 2 == 0 ? total : other;
        const float scc   = lane % 2 == 0 ? other : total;
        // the best candidate in every lane, the first of equals as in the reference's loop
        float gain  = sxc * sxc / scc;
        float scale = sxc / scc;
        int   best  = lane / 2;
#pragma unroll
        for (int offset = 2; offset < WARP_SIZE; offset *= 2) {
            const float gain_other  = __shfl_xor_sync(0xFFFFFFFF, gain,  offset, WARP_SIZE);
            const float scale_other = __shfl_xor_sync(0xFFFFFFFF, scale, offset, WARP_SIZE);
            const int   best_other  = __shfl_xor_sync(0xFFFFFFFF, best,  offset, WARP_SIZE);
            if (gain_other > gain || (gain_other == gain && best_other < best)) {
                gain  = gain_other;
                scale = scale_other;
                best  = best_other;
            }
        }
        d = __float2half(fminf(amax * scale, 65504.0f));
        const float df = __half2float(d);
        if (df > 0.0f) {
            const float inv_d = 1.0f / df;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                idx[h] = turbo_nearest<levels>(v[h] * inv_d, boundaries);
            }
        } else {
            d = __float2half(0.0f);
        }
    }

    // pack: every lane already holds a pair (l, l + 32) that shares a byte or a nibble pair
    if constexpr (type == GGML_TYPE_TURBO4) {
        block_turbo4 * y = (block_turbo4 *) dst;
        y->qs[lane] = idx[0] | (idx[1] << 4);
        if (lane == 0) {
            y->d = d;
        }
    } else {
        // qs[j] = idx[j] | idx[j + 16] << 2 | idx[j + 32] << 4 | idx[j + 48] << 6, j < 16
        const int p = (idx[0] & 3) | ((idx[1] & 3) << 4);
        const int q = p | (__shfl_down_sync(0xFFFFFFFF, p, 16, WARP_SIZE) << 2);
        uint8_t * qs;
        if constexpr (type == GGML_TYPE_TURBO3) {
            block_turbo3 * y = (block_turbo3 *) dst;
            qs = y->qs;
            // qh[j] bit t = bit 2 of idx[j + 8 t]: gather the 64 high bits with two ballots
            const uint64_t high = (uint64_t) __ballot_sync(0xFFFFFFFF, (idx[0] >> 2) & 1) |
                                 ((uint64_t) __ballot_sync(0xFFFFFFFF, (idx[1] >> 2) & 1) << 32);
            if (lane < QK_TURBO/8) {
                int h = 0;
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    h |= ((high >> (lane + 8*t)) & 1) << t;
                }
                y->qh[lane] = h;
            }
            if (lane == 0) {
                y->d = d;
            }
        } else {
            static_assert(type == GGML_TYPE_TURBO2, "not a turbo type");
            block_turbo2 * y = (block_turbo2 *) dst;
            qs = y->qs;
            if (lane == 0) {
                y->d = d;
            }
        }
        if (lane < QK_TURBO/4) {
            qs[lane] = q;
        }
    }
}

template <ggml_type type>
static __device__ void quantize_f32_turbo_block_warp(const float * GGML_CUDA_RESTRICT x, void * GGML_CUDA_RESTRICT dst, const int lane) {
    quantize_turbo_block_warp<type>(x[lane], x[lane + QK_TURBO/2], dst, lane);
}

// values iqs and iqs + 32 of block ib, iqs in [0, 32)
static __device__ __forceinline__ void dequantize_turbo4(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo4 * x = (const block_turbo4 *) vx;
    const float d = __half2float(x[ib].d);
    const int q = x[ib].qs[iqs];
    v.x = d * turbo4_codebook[q & 0xF];
    v.y = d * turbo4_codebook[q >> 4];
}

static __device__ __forceinline__ void dequantize_turbo3(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo3 * x = (const block_turbo3 *) vx;
    const float d = __half2float(x[ib].d);
    const int q = x[ib].qs[iqs % 16];
    const int h = x[ib].qh[iqs % 8];
    const int shift = 2 * (iqs / 16);
    const int lo = ((q >> shift) & 3)       | (((h >> (iqs / 8))     & 1) << 2);
    const int hi = ((q >> (shift + 4)) & 3) | (((h >> (iqs / 8 + 4)) & 1) << 2);
    v.x = d * turbo3_codebook[lo];
    v.y = d * turbo3_codebook[hi];
}

static __device__ __forceinline__ void dequantize_turbo2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo2 * x = (const block_turbo2 *) vx;
    const float d = __half2float(x[ib].d);
    const int q = x[ib].qs[iqs % 16];
    const int shift = 2 * (iqs / 16);
    v.x = d * turbo2_codebook[(q >> shift) & 3];
    v.y = d * turbo2_codebook[(q >> (shift + 4)) & 3];
}

// Values 8 j .. 8 j + 7 (j < 8) of block ib, for the contiguous conversion below. They share 4
// 16-bit words of codes: turbo4's low nibbles of qs[8 j ..] for j < 4, high nibbles of
// qs[8 (j - 4) ..] after; turbo3's and turbo2's bits 2 (j / 2) of qs[8 (j % 2) ..], with turbo3's
// bit j of qh[0 .. 7] above them. Blocks are 2-byte aligned, so the words are read as such.
template <ggml_type type>
static __device__ __forceinline__ void dequantize_turbo_8(const void * vx, const int64_t ib, const int j, float (&v)[8]) {
    const char * blk = (const char *) vx + ib*turbo_block_size<type>();
    const float d = __half2float(*(const half *) blk);
    const uint16_t * qs = (const uint16_t *) (blk + sizeof(ggml_half));
    const float * codebook = turbo_codebook<type>();
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        int c[2];
        if constexpr (type == GGML_TYPE_TURBO4) {
            const uint32_t w = qs[4*(j % 4) + k] >> (4*(j / 4));
            c[0] = w & 0xF;
            c[1] = (w >> 8) & 0xF;
        } else {
            const uint32_t w = qs[4*(j % 2) + k] >> (2*(j / 2));
            c[0] = w & 3;
            c[1] = (w >> 8) & 3;
            if constexpr (type == GGML_TYPE_TURBO3) {
                const uint32_t h = ((const uint16_t *) ((const block_turbo3 *) blk)->qh)[k] >> j;
                c[0] |= (h & 1) << 2;
                c[1] |= ((h >> 8) & 1) << 2;
            }
        }
        v[2*k]     = d*codebook[c[0]];
        v[2*k + 1] = d*codebook[c[1]];
    }
}

static __device__ __forceinline__ void turbo_store_8(float * y, const float (&v)[8]) {
    ((float4 *) y)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *) y)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

static __device__ __forceinline__ void turbo_store_8(half * y, const float (&v)[8]) {
    uint4 u;
    const half2 h[4] = {__floats2half2_rn(v[0], v[1]), __floats2half2_rn(v[2], v[3]),
                        __floats2half2_rn(v[4], v[5]), __floats2half2_rn(v[6], v[7])};
    memcpy(&u, h, sizeof(u));
    *(uint4 *) y = u;
}

static __device__ __forceinline__ void turbo_store_8(nv_bfloat16 * y, const float (&v)[8]) {
    uint4 u;
    const nv_bfloat162 h[4] = {__floats2bfloat162_rn(v[0], v[1]), __floats2bfloat162_rn(v[2], v[3]),
                               __floats2bfloat162_rn(v[4], v[5]), __floats2bfloat162_rn(v[6], v[7])};
    memcpy(&u, h, sizeof(u));
    *(uint4 *) y = u;
}

// Whole turbo blocks, stored one after another, to f32/f16/bf16 (the f16 copy of the cache that
// the prefill's flash attention reads): a thread writes 8 consecutive values, with 16-byte stores
// where y is 16-byte aligned (ggml's buffers and pool allocations are; a view may not be).
// ggml-cuda's generic converter writes 2 values a thread, 32 apart; at depth 32768 on an H100 that
// took 86 µs per layer and tensor, about 0.9 TB/s.
template <ggml_type type, typename dst_t>
static __global__ void k_dequantize_turbo_cont(const void * vx, dst_t * y, const int64_t ngroups, const bool aligned) {
    const int64_t i = int64_t(blockIdx.x)*blockDim.x + threadIdx.x; // the group of 8 values
    if (i >= ngroups) {
        return;
    }
    float v[8];
    dequantize_turbo_8<type>(vx, i / 8, i % 8, v);
    if (aligned) {
        turbo_store_8(y + 8*i, v);
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            y[8*i + k] = dst_t(v[k]);
        }
    }
}

// k values (whole blocks, as every turbo tensor holds) of vx into y
template <ggml_type type, typename dst_t>
static void dequantize_row_turbo_cuda(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    GGML_ASSERT(k % QK_TURBO == 0);
    const int64_t ngroups = k / 8;
    constexpr int block_size = 256;
    k_dequantize_turbo_cont<type, dst_t><<<(ngroups + block_size - 1) / block_size, block_size, 0, stream>>>(
        vx, y, ngroups, (uintptr_t) y % 16 == 0);
}
