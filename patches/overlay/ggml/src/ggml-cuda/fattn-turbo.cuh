// Reading the TurboQuant cache types in flash attention without an f16 copy of the cache, so
// decoding reads 2.25-4.25 bits per cached value: the code layouts the decode kernel
// (fattn-turbo-decode.cuh) uses for K, and turbo V for the vector kernel (fattn-vec.cuh) when K is
// f16 or q8_0.
//
// Codebook lookups go through the warp: lane l holds codebook[l % levels] and a value's code picks
// the lane with __shfl_sync. That is one instruction per value, with no shared memory and no bank
// conflicts; it needs the whole warp converged, which the kernels guarantee at every call site
// (they sit outside any thread-dependent branch).
//
// K side: 8 threads work on one 64-value block of a K row. Thread t reads the bytes that hold its
// codes, so the values a thread owns follow the packing, not the value order:
//   turbo4: values 4t..4t+3 and 32+4t..32+4t+3 (qs bytes 4t..4t+3, low and high nibbles)
//   turbo3, turbo2: values 2t, 2t+1 plus 0, 16, 32, 48 (qs bytes 2t, 2t+1; turbo3's qh bits follow)
// The kernel loads the query in that order (turbo_fattn_q_pair) so that the dot product is a
// sum over matching pairs.

#pragma once

#include "common.cuh"
#include "turbo.cuh"

template <ggml_type type>
static __device__ __forceinline__ half2 turbo_fattn_codebook_lane() {
    return __float2half2_rn(turbo_codebook_lane<type>(threadIdx.x % WARP_SIZE));
}

// (codebook[lo], codebook[hi]) from the warp
static __device__ __forceinline__ half2 turbo_fattn_lookup2(const half2 cb, const int lo, const int hi) {
    const half2 a = __shfl_sync(0xFFFFFFFF, cb, lo, WARP_SIZE);
    const half2 b = __shfl_sync(0xFFFFFFFF, cb, hi, WARP_SIZE);
    return __lows2half2(a, b);
}

static __device__ __forceinline__ uint32_t turbo_fattn_load_u16(const uint8_t * p) {
    return *(const uint16_t *) p; // every offset used here is even, blocks are 2-byte aligned
}

// turbo3 codes as lookup lanes, two per 4-bit field: q holds the low 2 bits of four codes per byte
// (code k of a byte at bits 2k), hs their high bits at the same positions (bit 2k of each byte).
// Codes 0 and 2 of each byte come out at bits 0 and 4 of that byte of w0, codes 1 and 3 of w1.
static __device__ __forceinline__ void turbo3_fattn_merge_codes(const uint32_t q, const uint32_t hs, uint32_t & w0, uint32_t & w1) {
    w0 = (q        & 0x3333) | ((hs << 2) & ~0x3333u);
    w1 = ((q >> 2) & 0x3333) | (hs        & ~0x3333u);
}

// Position (in float2 pairs of the query row) of the k-th query pair thread t holds.
template <ggml_type type_K>
static __device__ __forceinline__ int turbo_fattn_q_pair(const int k, const int t) {
    const int b = k / 4; // block
    const int p = k % 4; // pair within the thread's part of the block
    if constexpr (type_K == GGML_TYPE_TURBO4) {
        return b*(QK_TURBO/2) + 2*t + (p % 2) + (QK_TURBO/4)*(p / 2);
    } else {
        return b*(QK_TURBO/2) + t + (QK_TURBO/8)*p;
    }
}

// The four (lo, hi) code pairs of thread t in one block, in the order of turbo_fattn_q_pair, as
// lanes for a codebook lookup: bits above a code are left in place, since __shfl_sync reads only
// bits 4:0 of the lane and the codebook repeats every `levels` lanes.
template <ggml_type type_K>
static __device__ __forceinline__ void turbo_fattn_codes(const char * GGML_CUDA_RESTRICT blk, const int t, int lo[4], int hi[4]) {
    if constexpr (type_K == GGML_TYPE_TURBO4) {
        const block_turbo4 * x = (const block_turbo4 *) blk;
        const uint32_t w = turbo_fattn_load_u16(x->qs + 4*t) | (turbo_fattn_load_u16(x->qs + 4*t + 2) << 16);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const int shift = 16*(p % 2) + 4*(p / 2);
            lo[p] = w >> shift;
            hi[p] = w >> (shift + 8);
        }
    } else if constexpr (type_K == GGML_TYPE_TURBO3) {
        const block_turbo3 * x = (const block_turbo3 *) blk;
        const uint32_t q  = turbo_fattn_load_u16(x->qs + 2*t);
        // bit 2p (+8): high bit of the code of value 2t (+1) + 16p
        const uint32_t hs = turbo_fattn_load_u16(x->qh + (2*t) % 8) >> (t/4);
        // codes of even p at bits 4(p/2) (+8) of w0, of odd p in w1
        uint32_t w0;
        uint32_t w1;
        turbo3_fattn_merge_codes(q, hs, w0, w1);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const uint32_t w = p % 2 == 0 ? w0 : w1;
            lo[p] = w >> (4*(p / 2));
            hi[p] = w >> (4*(p / 2) + 8);
        }
    } else {
        static_assert(type_K == GGML_TYPE_TURBO2, "not a turbo type");
        const block_turbo2 * x = (const block_turbo2 *) blk;
        const uint32_t q = turbo_fattn_load_u16(x->qs + 2*t);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            lo[p] = q >> (2*p);
            hi[p] = q >> (2*p + 8);
        }
    }
}

// ne consecutive values of a V row from i0 (a multiple of 4), as ggml's dequantize_V_* functions.
template <ggml_type type_V, typename T, int ne>
static __device__ __forceinline__ void dequantize_V_turbo(const void * GGML_CUDA_RESTRICT vx, void * GGML_CUDA_RESTRICT dst, const int64_t i0) {
    static_assert(ne == 4, "the turbo V path reads 4 values per call");

    const int64_t ib = i0 / QK_TURBO;
    const int     p  = i0 % QK_TURBO;
    const half2   cb = turbo_fattn_codebook_lane<type_V>();

    int idx[4];
    half d;
    if constexpr (type_V == GGML_TYPE_TURBO4) {
        const block_turbo4 * x = (const block_turbo4 *) vx + ib;
        const uint32_t q = turbo_fattn_load_u16(x->qs + p % 32) | (turbo_fattn_load_u16(x->qs + p % 32 + 2) << 16);
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            idx[l] = (q >> (8*l + 4*(p / 32))) & 0xF;
        }
        d = x->d;
    } else if constexpr (type_V == GGML_TYPE_TURBO3) {
        const block_turbo3 * x = (const block_turbo3 *) vx + ib;
        const uint32_t q = turbo_fattn_load_u16(x->qs + p % 16) | (turbo_fattn_load_u16(x->qs + p % 16 + 2) << 16);
        const uint32_t h = turbo_fattn_load_u16(x->qh + p % 8)  | (turbo_fattn_load_u16(x->qh + p % 8  + 2) << 16);
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            idx[l] = ((q >> (8*l + 2*(p / 16))) & 3) | (((h >> (8*l + p / 8)) & 1) << 2);
        }
        d = x->d;
    } else {
        static_assert(type_V == GGML_TYPE_TURBO2, "not a turbo type");
        const block_turbo2 * x = (const block_turbo2 *) vx + ib;
        const uint32_t q = turbo_fattn_load_u16(x->qs + p % 16) | (turbo_fattn_load_u16(x->qs + p % 16 + 2) << 16);
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            idx[l] = (q >> (8*l + 2*(p / 16))) & 3;
        }
        d = x->d;
    }

    const half2 v01 = turbo_fattn_lookup2(cb, idx[0], idx[1]);
    const half2 v23 = turbo_fattn_lookup2(cb, idx[2], idx[3]);
#ifdef FP16_AVAILABLE
    if constexpr (std::is_same_v<T, half>) {
        const half2 d2 = __half2half2(d);
        ((half2 *) dst)[0] = d2 * v01;
        ((half2 *) dst)[1] = d2 * v23;
    } else
#endif // FP16_AVAILABLE
    if constexpr (std::is_same_v<T, float>) {
        const float df = __half2float(d);
        const float2 f01 = __half22float2(v01);
        const float2 f23 = __half22float2(v23);
        ((float *) dst)[0] = df * f01.x;
        ((float *) dst)[1] = df * f01.y;
        ((float *) dst)[2] = df * f23.x;
        ((float *) dst)[3] = df * f23.y;
    } else {
        static_assert(std::is_same_v<T, void>, "bad type");
    }
}
