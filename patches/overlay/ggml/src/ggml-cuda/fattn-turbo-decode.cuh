// Flash-attention decode kernel for turbo K with turbo V (TurboQuant): one block of threads works on
// all the query heads that share a KV head, so each code of the cache is read and looked up once
// and used for every one of those heads (4 with Llama-3's grouped-query attention). The vector
// kernel (fattn-vec.cuh) takes one query head per block and so decodes the cache once per head,
// which leaves it bound by instructions rather than by the 2-4 bits per value it reads.
//
// A block has 4 warps and takes 128 cache rows per step. The block first copies the step's K and V
// rows (and mask values) into shared memory, all loads at once, so that the step waits for memory
// once rather than at every row; then each warp takes 32 of the rows and keeps its own running
// softmax (maximum, sum, output), as the vector kernel does, so the warps only meet at the end.
// For its 32 rows a warp:
//   1. computes K·Q for every head: nthreads_KQ threads per K row, each owning 8 values of a block
//      in the order of the packed codes (fattn-turbo.cuh), looking every code up once and
//      multiplying it by each head's query; the partial sums of the heads are reduced and
//      transposed at once, so that each thread ends with one head's score;
//   2. updates the softmax of each head from the scores, which go through shared memory;
//   3. accumulates V: a row is D/4 slices of 4 values that share one code byte (or nibble pair),
//      each slice looked up once and added to every head's output.
// Codes go to the codebook lookup (a warp shuffle, fattn-turbo.cuh) with whatever bits lie above
// them: the shuffle reads only bits 4:0 of the lane and the codebook repeats every `levels` lanes.
//
// The launch (launch_fattn in fattn-common.cuh) splits the cache over blockIdx.y and combines
// the parts as it does for the other kernels.

#pragma once

#include "common.cuh"
#include "fattn-common.cuh"
#include "fattn-turbo.cuh"

#define TURBO_DECODE_NWARPS 4

// Threads per K row: each owns 8 values of a block, in at most 2 blocks per row.
template <int D>
static constexpr __host__ __device__ int turbo_decode_nthreads_KQ() {
    return D <= 2*QK_TURBO ? 8 : 16;
}

// The 4 codes of V slice m (0..15) of a block, as lookup lanes. A slice is the values whose
// codes share bytes: turbo4 positions 2m, 2m+1, 2m+32, 2m+33 (one 16-bit word of nibbles),
// turbo3 and turbo2 positions m, m+16, m+32, m+48 (one qs byte, for turbo3 with one qh byte).
template <ggml_type type>
static __device__ __forceinline__ int turbo_decode_v_pos(const int m, const int k) {
    if constexpr (type == GGML_TYPE_TURBO4) {
        return 2*m + (k & 1) + (QK_TURBO/2)*(k >> 1);
    } else {
        return m + (QK_TURBO/4)*k;
    }
}

template <ggml_type type>
static __device__ __forceinline__ void turbo_decode_v_codes(const char * __restrict__ blk, const int m, int c[4]) {
    if constexpr (type == GGML_TYPE_TURBO4) {
        const uint32_t w = turbo_fattn_load_u16(((const block_turbo4 *) blk)->qs + 2*m);
        c[0] = w;
        c[1] = w >> 8;
        c[2] = w >> 4;
        c[3] = w >> 12;
    } else if constexpr (type == GGML_TYPE_TURBO3) {
        const block_turbo3 * x = (const block_turbo3 *) blk;
        const uint32_t q  = x->qs[m];
        const uint32_t hs = x->qh[m % 8] >> (m / 8); // bit 2k: high bit of the code of m + 16k
        // codes 0 and 2 at bits 0 and 4 of w0, codes 1 and 3 at bits 0 and 4 of w1
        uint32_t w0;
        uint32_t w1;
        turbo3_fattn_merge_codes(q, hs, w0, w1);
        c[0] = w0;
        c[1] = w1;
        c[2] = w0 >> 4;
        c[3] = w1 >> 4;
    } else {
        static_assert(type == GGML_TYPE_TURBO2, "not a turbo type");
        const uint32_t q = ((const block_turbo2 *) blk)->qs[m];
        c[0] = q;
        c[1] = q >> 2;
        c[2] = q >> 4;
        c[3] = q >> 6;
    }
}

// Sums the per-head partial scores of the nthreads_KQ threads of a K row. The first log2(ncols)
// steps exchange half of the heads still held with the partner, so the sums and the transpose cost
// one shuffle per step and head pair; afterwards thread t holds the score of head
// (t / (nthreads_KQ/ncols)) % ncols, and the last steps are a plain sum.
template <int nthreads_KQ, int ncols>
static __device__ __forceinline__ float turbo_decode_reduce_KQ(float (&sum)[ncols], const int t) {
    static_assert(ncols <= nthreads_KQ, "more heads than threads per row");
#pragma unroll
    for (int n = ncols, offset = nthreads_KQ/2; n > 1; n /= 2, offset /= 2) {
        const bool upper = t & offset;
#pragma unroll
        for (int i = 0; i < n/2; ++i) {
            const float send = upper ? sum[i]       : sum[i + n/2];
            const float keep = upper ? sum[i + n/2] : sum[i];
            sum[i] = keep + __shfl_xor_sync(0xFFFFFFFF, send, offset, WARP_SIZE);
        }
    }
#pragma unroll
    for (int offset = nthreads_KQ/(2*ncols); offset > 0; offset /= 2) {
        sum[0] += __shfl_xor_sync(0xFFFFFFFF, sum[0], offset, WARP_SIZE);
    }
    return sum[0];
}

// Copies nthreads rows of row_bytes each (global, `stride` apart) to consecutive rows in shared
// memory: thread i copies word i of every run of nthreads words, so neighbouring threads read
// neighbouring words. 4-byte words go asynchronously (cp.async, no registers held; the caller
// waits with turbo_decode_stage_wait); 2-byte words through registers, every load issued before
// the first store.
template <typename word_t, int row_bytes, int nthreads>
static __device__ __forceinline__ void turbo_decode_stage_rows(
        char * __restrict__ dst, const char * __restrict__ src, const int64_t stride, const int tid) {
    static_assert(row_bytes % sizeof(word_t) == 0, "rows must be whole words");
    constexpr int words_per_row = row_bytes / sizeof(word_t);
#ifdef CP_ASYNC_AVAILABLE
    if constexpr (sizeof(word_t) == 4) {
        // not unrolled: the addresses of every word at once would take the registers of the kernel
        const unsigned int dst_shared = __cvta_generic_to_shared(dst) + 4*tid;
        int row = tid / words_per_row;
        int col = tid % words_per_row;
#pragma unroll 1
        for (int i = 0; i < words_per_row; ++i) {
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;"
                : : "r"(dst_shared + 4*nthreads*i), "l"(src + row*stride + 4*col));
            row += nthreads / words_per_row;
            col += nthreads % words_per_row;
            if (col >= words_per_row) {
                col -= words_per_row;
                ++row;
            }
        }
    } else
#endif // CP_ASYNC_AVAILABLE
    {
        word_t tmp[words_per_row];
#pragma unroll
        for (int i = 0; i < words_per_row; ++i) {
            const int w = i*nthreads + tid;
            tmp[i] = ((const word_t *) (src + (w / words_per_row)*stride))[w % words_per_row];
        }
#pragma unroll
        for (int i = 0; i < words_per_row; ++i) {
            ((word_t *) dst)[i*nthreads + tid] = tmp[i];
        }
    }
}

static __device__ __forceinline__ void turbo_decode_stage_wait() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.wait_all;");
#endif // CP_ASYNC_AVAILABLE
}

// 4 blocks per SM (128 registers) hide the copies best; with head size 256 and 4 heads that would
// spill, so 3 there
template<int D, int ncols, ggml_type type_K, ggml_type type_V, bool use_logit_softcap> // D == head size, ncols == query heads per block
__launch_bounds__(TURBO_DECODE_NWARPS*WARP_SIZE, D == 256 ? 3 : 4)
static __global__ void flash_attn_ext_turbo_decode(
        const char * Q_ptr,
        const char * K_ptr,
        const char * V_ptr,
        const char * mask_ptr,
        const char * sinks_ptr,
        const int  * KV_max_ptr,
        float      * dst_ptr,
        float2     * dst_meta_ptr,
        const float scale,
        const float max_bias,
        const float m0,
        const float m1,
        const uint32_t n_head_log2,
        const float logit_softcap,
        const int32_t ne00, const uint3   ne01, const int32_t ne02, const int32_t ne03,
                            const int32_t nb01, const int32_t nb02, const int32_t nb03,
        const int32_t ne10, const int32_t ne11, const int32_t ne12, const int32_t ne13,
                            const int32_t nb11, const int32_t nb12, const int64_t nb13,
                            const int32_t nb21, const int32_t nb22, const int64_t nb23,
                            const int32_t ne31, const int32_t ne32, const int32_t ne33,
                            const int32_t nb31, const int32_t nb32, const int64_t nb33) {
    ggml_cuda_pdl_lc();
#ifdef FLASH_ATTN_AVAILABLE
    // Skip unused kernel variants for faster compilation:
    if (use_logit_softcap && !(D == 128 || D == 256)) {
        GGML_UNUSED_VARS(Q_ptr, K_ptr, V_ptr, mask_ptr, sinks_ptr, KV_max_ptr, dst_ptr, dst_meta_ptr, scale,
            max_bias, m0, m1, n_head_log2, logit_softcap,
            ne00, ne01, ne02, ne03,
                  nb01, nb02, nb03,
            ne10, ne11, ne12, ne13,
                  nb11, nb12, nb13,
                  nb21, nb22, nb23,
                  ne31, ne32, ne33,
                  nb31, nb32, nb33);
        NO_DEVICE_CODE;
        return;
    }
    static_assert(D % (2*QK_TURBO) == 0 || D == QK_TURBO, "head size must be 64 or a multiple of 128");
    static_assert(ncols == 1 || ncols == 2 || ncols == 4, "1, 2 or 4 query heads per block");

    constexpr int nwarps   = TURBO_DECODE_NWARPS;
    constexpr int nthreads = nwarps*WARP_SIZE;

    constexpr int nthreads_KQ        = turbo_decode_nthreads_KQ<D>();
    constexpr int K_blocks_per_row   = D/QK_TURBO;
    constexpr int K_blocks_per_group = nthreads_KQ/8;                      // blocks covered side by side
    constexpr int K_blocks_per_thread = K_blocks_per_row/K_blocks_per_group;
    constexpr int K_heads_spread     = nthreads_KQ/ncols;                  // threads holding one head's score
    constexpr size_t K_block_size    = turbo_block_size<type_K>();
    constexpr int K_unroll           = D == 256 && ncols == 4 ? 1 : 2;      // rows of the K loop unrolled

    constexpr int V_slices_per_row    = D/4;
    constexpr int V_lanes_per_row     = V_slices_per_row < WARP_SIZE ? V_slices_per_row : WARP_SIZE;
    constexpr int V_rows_per_step     = WARP_SIZE/V_lanes_per_row;
    constexpr int V_slices_per_thread = V_slices_per_row/V_lanes_per_row;
    constexpr size_t V_block_size     = turbo_block_size<type_V>();

    // rows of one head as copied to shared memory; with head size 64 they are only 2-byte aligned
    constexpr int K_row_bytes = K_blocks_per_row*K_block_size;
    constexpr int V_row_bytes = (D/QK_TURBO)*V_block_size;
    using word_t = std::conditional_t<K_row_bytes % 4 == 0 && V_row_bytes % 4 == 0, uint32_t, uint16_t>;

    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int tid  = warp*WARP_SIZE + lane;

    // blockIdx.z = (sequence*ne12 + KV head)*ntiles_z_gqa + group of ncols query heads of that KV head
    const int gqa_ratio    = ne02 / ne12;
    const int ntiles_z_gqa = (gqa_ratio + ncols - 1) / ncols;
    const int zt_gqa   = blockIdx.z % ntiles_z_gqa;
    const int z_KV     = (blockIdx.z / ntiles_z_gqa) % ne12;
    const int sequence = blockIdx.z / (ntiles_z_gqa*ne12);
    const int head0    = z_KV*gqa_ratio + zt_gqa*ncols;
    const int ncols_used = min(ncols, gqa_ratio - zt_gqa*ncols);
    const int ic0 = blockIdx.x; // the query token

    const char * Q = Q_ptr + nb03*sequence + nb02*head0 + nb01*ic0;
    const char * K = K_ptr + nb13*sequence + nb12*z_KV;
    const char * V = V_ptr + nb23*sequence + nb22*z_KV;
    const half * maskh = mask_ptr ? (const half *) (mask_ptr + nb33*(sequence % ne33) + nb31*ic0) : nullptr;

    // K·Q: thread t of a row holds the query pairs matching its codes, for every head
    const int t = lane % nthreads_KQ;
    const int t_head = (t / K_heads_spread) % ncols; // the head whose score thread t ends with
    const float slope = get_alibi_slope(max_bias, head0 + t_head, n_head_log2, m0, m1);

    ggml_cuda_pdl_sync();

    float2 Q_reg[ncols][4*K_blocks_per_thread];
#pragma unroll
    for (int j = 0; j < ncols; ++j) {
        const float2 * Q_j = (const float2 *) (Q + j*nb02);
#pragma unroll
        for (int ib = 0; ib < K_blocks_per_thread; ++ib) {
            const int b = t/8 + K_blocks_per_group*ib;
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                float2 q = make_float2(0.0f, 0.0f);
                if (j < ncols_used) {
                    q = Q_j[turbo_fattn_q_pair<type_K>(4*b + p, t % 8)];
                }
                Q_reg[j][4*ib + p] = make_float2(scale*q.x, scale*q.y);
            }
        }
    }

    const float cb_K = turbo_codebook_lane<type_K>(lane);
    const float cb_V = turbo_codebook_lane<type_V>(lane);

    // the step's K and V rows; the warps' outputs at the end (combine_shared)
    constexpr int tile_bytes    = nthreads*(K_row_bytes + V_row_bytes);
    constexpr int combine_bytes = nwarps*ncols*D*sizeof(float);
    __shared__ __align__(16) char tile_shared[tile_bytes > combine_bytes ? tile_bytes : combine_bytes];
    char * K_tile = tile_shared;
    char * V_tile = tile_shared + nthreads*K_row_bytes;
    __shared__ half mask_shared[nthreads];
    // scores, then probabilities, of the warp's 32 rows
    __shared__ float KQ_shared[nwarps][WARP_SIZE][ncols];

    float KQ_max[ncols]; // the same in every lane of a warp
    float KQ_sum[ncols]; // partial: summed over the warp at the end
    float VKQ[ncols][4*V_slices_per_thread] = {{0.0f}};
#pragma unroll
    for (int j = 0; j < ncols; ++j) {
        KQ_max[j] = -FLT_MAX/2.0f;
        KQ_sum[j] = 0.0f;
    }

    const int k_VKQ_max = KV_max_ptr ? KV_max_ptr[sequence*gridDim.x + blockIdx.x] : ne11;
    for (int k_VKQ_0 = blockIdx.y*nthreads; k_VKQ_0 < k_VKQ_max; k_VKQ_0 += gridDim.y*nthreads) {
        __syncthreads(); // the last step's rows are no longer read
        turbo_decode_stage_rows<word_t, K_row_bytes, nthreads>(K_tile, K + int64_t(k_VKQ_0)*nb11, nb11, tid);
        turbo_decode_stage_rows<word_t, V_row_bytes, nthreads>(V_tile, V + int64_t(k_VKQ_0)*nb21, nb21, tid);
        if (maskh) {
            mask_shared[tid] = maskh[k_VKQ_0 + tid];
        }
        turbo_decode_stage_wait();
        __syncthreads();

        const int r_warp = warp*WARP_SIZE; // the warp's first row in the tile

        // 1. K·Q (unrolled in part: the codes of every row at once would not fit the registers)
#pragma unroll K_unroll
        for (int i_KQ_0 = 0; i_KQ_0 < nthreads_KQ; ++i_KQ_0) {
            const int i_KQ = (lane/nthreads_KQ)*nthreads_KQ + i_KQ_0;
            const char * K_row = K_tile + (r_warp + i_KQ)*K_row_bytes;

            float sum[ncols] = {0.0f};
#pragma unroll
            for (int ib = 0; ib < K_blocks_per_thread; ++ib) {
                const char * blk = K_row + (t/8 + K_blocks_per_group*ib)*K_block_size;
                int lo[4];
                int hi[4];
                turbo_fattn_codes<type_K>(blk, t % 8, lo, hi);

                float sum_b[ncols] = {0.0f};
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    const float c_lo = __shfl_sync(0xFFFFFFFF, cb_K, lo[p], WARP_SIZE);
                    const float c_hi = __shfl_sync(0xFFFFFFFF, cb_K, hi[p], WARP_SIZE);
#pragma unroll
                    for (int j = 0; j < ncols; ++j) {
                        sum_b[j] += c_lo*Q_reg[j][4*ib + p].x + c_hi*Q_reg[j][4*ib + p].y;
                    }
                }
                const float d = __half2float(*(const half *) blk); // every turbo block starts with its scale
#pragma unroll
                for (int j = 0; j < ncols; ++j) {
                    sum[j] += d*sum_b[j];
                }
            }

            float score = turbo_decode_reduce_KQ<nthreads_KQ, ncols>(sum, t);
            if (use_logit_softcap) {
                score = logit_softcap*tanhf(score);
            }
            if (maskh) {
                score += slope*__half2float(mask_shared[r_warp + i_KQ]);
            }
            if (t % K_heads_spread == 0) {
                KQ_shared[warp][i_KQ][t_head] = score;
            }
        }
        __syncwarp();

        // 2. softmax: lane l takes row l
#pragma unroll
        for (int j = 0; j < ncols; ++j) {
            float s = KQ_shared[warp][lane][j];
            const float KQ_max_new = fmaxf(KQ_max[j], warp_reduce_max(s) + FATTN_KQ_MAX_OFFSET);
            const float KQ_max_scale = expf(KQ_max[j] - KQ_max_new);
            KQ_max[j] = KQ_max_new;

            s = expf(s - KQ_max_new);
            KQ_sum[j] = KQ_sum[j]*KQ_max_scale + s;
            KQ_shared[warp][lane][j] = s;
#pragma unroll
            for (int i = 0; i < 4*V_slices_per_thread; ++i) {
                VKQ[j][i] *= KQ_max_scale;
            }
        }
        __syncwarp();

        // 3. V
#pragma unroll 4
        for (int k0 = 0; k0 < WARP_SIZE; k0 += V_rows_per_step) {
            const int k = k0 + lane/V_lanes_per_row;
            const char * V_row = V_tile + (r_warp + k)*V_row_bytes;

            float KQ_k[ncols];
#pragma unroll
            for (int j = 0; j < ncols; ++j) {
                KQ_k[j] = KQ_shared[warp][k][j];
            }
#pragma unroll
            for (int is = 0; is < V_slices_per_thread; ++is) {
                const int slice = is*V_lanes_per_row + lane % V_lanes_per_row;
                const char * blk = V_row + (slice/(QK_TURBO/4))*V_block_size;
                int c[4];
                turbo_decode_v_codes<type_V>(blk, slice % (QK_TURBO/4), c);
                const float d = __half2float(*(const half *) blk);
                float v[4];
#pragma unroll
                for (int l = 0; l < 4; ++l) {
                    v[l] = __shfl_sync(0xFFFFFFFF, cb_V, c[l], WARP_SIZE);
                }
#pragma unroll
                for (int j = 0; j < ncols; ++j) {
                    const float w = d*KQ_k[j];
#pragma unroll
                    for (int l = 0; l < 4; ++l) {
                        VKQ[j][4*is + l] += w*v[l];
                    }
                }
            }
        }
    }

    if (sinks_ptr && blockIdx.y == 0 && warp == 0) {
#pragma unroll
        for (int j = 0; j < ncols; ++j) {
            const float sink = j < ncols_used ? ((const float *) sinks_ptr)[head0 + j] : -FLT_MAX/2.0f;
            const float KQ_max_new = fmaxf(sink, KQ_max[j]);
            const float KQ_max_scale = expf(KQ_max[j] - KQ_max_new);
            KQ_max[j] = KQ_max_new;
            KQ_sum[j] = KQ_sum[j]*KQ_max_scale + (lane == 0 ? expf(sink - KQ_max_new) : 0.0f);
#pragma unroll
            for (int i = 0; i < 4*V_slices_per_thread; ++i) {
                VKQ[j][i] *= KQ_max_scale;
            }
        }
    }

    // Combine the warps: each warp's output and sum, scaled to the common maximum.
    __syncthreads(); // the tile is no longer read
    float (*VKQ_shared)[ncols][D] = (float (*)[ncols][D]) tile_shared;
    __shared__ float KQ_max_shared[nwarps][ncols];
    __shared__ float KQ_sum_shared[nwarps][ncols];

#pragma unroll
    for (int j = 0; j < ncols; ++j) {
#pragma unroll
        for (int i = 0; i < 4*V_slices_per_thread; ++i) {
#pragma unroll
            for (int offset = V_lanes_per_row; offset < WARP_SIZE; offset <<= 1) {
                VKQ[j][i] += __shfl_xor_sync(0xFFFFFFFF, VKQ[j][i], offset, WARP_SIZE);
            }
        }
        KQ_sum[j] = warp_reduce_sum(KQ_sum[j]);
        if (lane == 0) {
            KQ_max_shared[warp][j] = KQ_max[j];
            KQ_sum_shared[warp][j] = KQ_sum[j];
        }
        if (lane < V_lanes_per_row) {
#pragma unroll
            for (int is = 0; is < V_slices_per_thread; ++is) {
                const int slice = is*V_lanes_per_row + lane;
#pragma unroll
                for (int l = 0; l < 4; ++l) {
                    const int i = (slice/(QK_TURBO/4))*QK_TURBO + turbo_decode_v_pos<type_V>(slice % (QK_TURBO/4), l);
                    VKQ_shared[warp][j][i] = VKQ[j][4*is + l];
                }
            }
        }
    }
    __syncthreads();

#pragma unroll
    for (int i0 = 0; i0 < ncols*D; i0 += nthreads) {
        const int j = (i0 + tid) / D;
        const int i = (i0 + tid) % D;
        if ((ncols*D) % nthreads != 0 && i0 + tid >= ncols*D) {
            break;
        }
        if (j >= ncols_used) {
            continue;
        }

        float KQ_max_j = KQ_max_shared[0][j];
#pragma unroll
        for (int w = 1; w < nwarps; ++w) {
            KQ_max_j = fmaxf(KQ_max_j, KQ_max_shared[w][j]);
        }
        float num = 0.0f;
        float den = 0.0f;
#pragma unroll
        for (int w = 0; w < nwarps; ++w) {
            const float f = expf(KQ_max_shared[w][j] - KQ_max_j);
            num += f*VKQ_shared[w][j][i];
            den += f*KQ_sum_shared[w][j];
        }

        const int j_dst = (sequence*int(ne01.z) + ic0)*ne02 + head0 + j;
        if (gridDim.y == 1) {
            dst_ptr[j_dst*D + i] = num/den;
        } else {
            dst_ptr[(j_dst*gridDim.y + blockIdx.y)*D + i] = num;
            if (i == 0) {
                dst_meta_ptr[j_dst*gridDim.y + blockIdx.y] = make_float2(KQ_max_j, den);
            }
        }
    }
#else
    GGML_UNUSED_VARS(Q_ptr, K_ptr, V_ptr, mask_ptr, sinks_ptr, KV_max_ptr, dst_ptr, dst_meta_ptr, scale,
        max_bias, m0, m1, n_head_log2, logit_softcap,
        ne00, ne01, ne02, ne03,
              nb01, nb02, nb03,
        ne10, ne11, ne12, ne13,
              nb11, nb12, nb13,
              nb21, nb22, nb23,
              ne31, ne32, ne33,
              nb31, nb32, nb33);
    NO_DEVICE_CODE;
#endif // FLASH_ATTN_AVAILABLE
}

template <int D, int ncols, ggml_type type_K, ggml_type type_V>
static void ggml_cuda_flash_attn_ext_turbo_decode_ncols(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    float logit_softcap;
    memcpy(&logit_softcap, (const float *) dst->op_params + 2, sizeof(float));

    fattn_kernel_t kernel = logit_softcap == 0.0f ?
        flash_attn_ext_turbo_decode<D, ncols, type_K, type_V, false> :
        flash_attn_ext_turbo_decode<D, ncols, type_K, type_V, true>;

    // the cache is split over blocks in steps of one block's rows (launch_fattn)
    constexpr int nbatch_fa = TURBO_DECODE_NWARPS*WARP_SIZE;
    launch_fattn<D, 1, ncols>(ctx, dst, kernel, TURBO_DECODE_NWARPS, 0, nbatch_fa, false, false, false, false);
}

// Decode (a few query tokens) with turbo K and V; the cache length is a multiple of
// FATTN_KQ_STRIDE, as for the vector kernel (fattn.cu).
template <int D, ggml_type type_K, ggml_type type_V>
void ggml_cuda_flash_attn_ext_turbo_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    GGML_ASSERT(K->ne[1] % (TURBO_DECODE_NWARPS*WARP_SIZE) == 0);
    // the kernel copies rows in 4-byte words when a head's K and V rows are whole words, else in 2-byte ones
    const size_t align = ggml_row_size(type_K, D) % 4 == 0 && ggml_row_size(type_V, D) % 4 == 0 ? 4 : 2;
    for (const ggml_tensor * t : {K, V}) {
        GGML_ASSERT((uintptr_t) t->data % align == 0 && t->nb[1] % align == 0 && t->nb[2] % align == 0 && t->nb[3] % align == 0);
    }

    const int gqa_ratio = Q->ne[2] / K->ne[2];
    if (gqa_ratio == 1) {
        ggml_cuda_flash_attn_ext_turbo_decode_ncols<D, 1, type_K, type_V>(ctx, dst);
    } else if (gqa_ratio == 2) {
        ggml_cuda_flash_attn_ext_turbo_decode_ncols<D, 2, type_K, type_V>(ctx, dst);
    } else {
        ggml_cuda_flash_attn_ext_turbo_decode_ncols<D, 4, type_K, type_V>(ctx, dst);
    }
}

#define DECL_FATTN_TURBO_DECODE_CASE(D, type_K, type_V)                          \
    template void ggml_cuda_flash_attn_ext_turbo_decode                          \
    <D, type_K, type_V>(ggml_backend_cuda_context & ctx, ggml_tensor * dst)      \

#define EXTERN_DECL_FATTN_TURBO_DECODE_CASES(type_K, type_V)      \
    extern DECL_FATTN_TURBO_DECODE_CASE( 64, type_K, type_V);     \
    extern DECL_FATTN_TURBO_DECODE_CASE(128, type_K, type_V);     \
    extern DECL_FATTN_TURBO_DECODE_CASE(256, type_K, type_V);     \

// compiled in template-instances/fattn-turbo-instance-*.cu
EXTERN_DECL_FATTN_TURBO_DECODE_CASES(GGML_TYPE_TURBO4, GGML_TYPE_TURBO4)
EXTERN_DECL_FATTN_TURBO_DECODE_CASES(GGML_TYPE_TURBO3, GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_TURBO_DECODE_CASES(GGML_TYPE_TURBO2, GGML_TYPE_TURBO2)
EXTERN_DECL_FATTN_TURBO_DECODE_CASES(GGML_TYPE_TURBO4, GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_TURBO_DECODE_CASES(GGML_TYPE_TURBO4, GGML_TYPE_TURBO2)
