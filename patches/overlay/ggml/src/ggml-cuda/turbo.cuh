// CUDA kernels of the TurboQuant KV-cache types turbo2/turbo3/turbo4: the quantizer the cache
// writes go through (set-rows), and dequantization in the shape ggml-cuda's generic kernels take
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

// Index of the nearest level: the boundaries are read in the same order by every thread.
template <int levels>
static __device__ __forceinline__ int turbo_nearest(const float y, const float * boundaries) {
    int idx = 0;
#pragma unroll
    for (int k = 0; k < levels - 1; ++k) {
        idx += y > boundaries[k];
    }
    return idx;
}

template <int levels>
static __device__ void turbo_quantize_block(const float * __restrict__ x, const float * codebook,
        const float * boundaries, half & d_out, uint8_t * idx) {
    float v[QK_TURBO];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < QK_TURBO; ++i) {
        v[i] = isfinite(x[i]) ? x[i] : 0.0f;
        amax = fmaxf(amax, fabsf(v[i]));
    }
    if (!(amax >= TURBO_MIN_MAGNITUDE)) {
        d_out = __float2half(0.0f);
#pragma unroll
        for (int i = 0; i < QK_TURBO; ++i) {
            idx[i] = levels/2;
        }
        return;
    }
    const float inv_amax = 1.0f / amax;

    float best_gain  = -1.0f;
    float best_scale = 0.0f;
    for (int j = 0; j < TURBO_SCALE_CANDIDATES; ++j) {
        const float inv = turbo_scale_grid_inv[j];
        float sxc = 0.0f;
        float scc = 0.0f;
        for (int i = 0; i < QK_TURBO; ++i) {
            const float y = v[i] * inv_amax;
            const float c = codebook[turbo_nearest<levels>(y * inv, boundaries)];
            sxc += y * c;
            scc += c * c;
        }
        const float gain = sxc * sxc / scc;
        if (gain > best_gain) {
            best_gain  = gain;
            best_scale = sxc / scc;
        }
    }

    d_out = __float2half(fminf(amax * best_scale, 65504.0f));
    const float df = __half2float(d_out);
    if (!(df > 0.0f)) {
        d_out = __float2half(0.0f);
#pragma unroll
        for (int i = 0; i < QK_TURBO; ++i) {
            idx[i] = levels/2;
        }
        return;
    }
    const float inv_d = 1.0f / df;
#pragma unroll
    for (int i = 0; i < QK_TURBO; ++i) {
        idx[i] = turbo_nearest<levels>(v[i] * inv_d, boundaries);
    }
}

static __device__ void turbo_pack_2bit(const uint8_t * idx, uint8_t * qs) {
#pragma unroll
    for (int j = 0; j < QK_TURBO/4; ++j) {
        qs[j] = (idx[j] & 3) | ((idx[j + 16] & 3) << 2) | ((idx[j + 32] & 3) << 4) | ((idx[j + 48] & 3) << 6);
    }
}

static __device__ void quantize_f32_turbo4_block(const float * __restrict__ x, block_turbo4 * __restrict__ y) {
    uint8_t idx[QK_TURBO];
    half d;
    turbo_quantize_block<16>(x, turbo4_codebook, turbo4_boundaries, d, idx);
    y->d = d;
#pragma unroll
    for (int j = 0; j < QK_TURBO/2; ++j) {
        y->qs[j] = idx[j] | (idx[j + 32] << 4);
    }
}

static __device__ void quantize_f32_turbo3_block(const float * __restrict__ x, block_turbo3 * __restrict__ y) {
    uint8_t idx[QK_TURBO];
    half d;
    turbo_quantize_block<8>(x, turbo3_codebook, turbo3_boundaries, d, idx);
    y->d = d;
    turbo_pack_2bit(idx, y->qs);
#pragma unroll
    for (int j = 0; j < QK_TURBO/8; ++j) {
        uint8_t h = 0;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            h |= ((idx[j + 8*t] >> 2) & 1) << t;
        }
        y->qh[j] = h;
    }
}

static __device__ void quantize_f32_turbo2_block(const float * __restrict__ x, block_turbo2 * __restrict__ y) {
    uint8_t idx[QK_TURBO];
    half d;
    turbo_quantize_block<4>(x, turbo2_codebook, turbo2_boundaries, d, idx);
    y->d = d;
    turbo_pack_2bit(idx, y->qs);
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
