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
//
// On Turing and newer GPUs flash_attn_ext_turbo_decode_mma (below) takes this kernel's place: the
// same staging, softmax and merge, with K·Q and V as f16 tensor-core products of codebook values.
// This kernel stays for older GPUs and for comparison (GGML_CUDA_TURBO_DECODE=simt).

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

// The positions (turbo_decode_slice_pos) and the codes, as lookup lanes, of slice m (0..15) of a
// K or V block: the 4 values whose codes share bytes: turbo4 positions 2m, 2m+1, 2m+32, 2m+33
// (one 16-bit word of nibbles), turbo3 and turbo2 positions m, m+16, m+32, m+48 (one qs byte, for
// turbo3 with one qh byte).
template <ggml_type type>
static __device__ __forceinline__ int turbo_decode_slice_pos(const int m, const int k) {
    if constexpr (type == GGML_TYPE_TURBO4) {
        return 2*m + (k & 1) + (QK_TURBO/2)*(k >> 1);
    } else {
        return m + (QK_TURBO/4)*k;
    }
}

template <ggml_type type>
static __device__ __forceinline__ void turbo_decode_slice_codes(const char * GGML_CUDA_RESTRICT blk, const int m, int c[4]) {
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

// Copies nrows rows of row_bytes each (global, `stride` apart) to consecutive rows in shared
// memory with nthreads threads. 4-byte words go asynchronously (cp.async, no registers held; the
// caller waits with turbo_decode_stage_wait): thread i copies word i % words_per_row of rows
// i / words_per_row, + rows_per_pass, + 2 rows_per_pass ..., so that neighbouring threads read
// neighbouring words and one copy's addresses are the last one's plus constants (one 64-bit
// multiply-add a copy in sm_90 code, where a running word index took 24 instructions a copy, 40% of
// the tensor-core kernel's instructions per step). 2-byte words go through registers, every load
// issued before the first store.
template <typename word_t, int row_bytes, int nrows, int nthreads>
static __device__ __forceinline__ void turbo_decode_stage_rows(
        char * GGML_CUDA_RESTRICT dst, const char * GGML_CUDA_RESTRICT src, const int64_t stride, const int tid) {
    static_assert(row_bytes % sizeof(word_t) == 0, "rows must be whole words");
    constexpr int words_per_row = row_bytes / sizeof(word_t);
    constexpr int nwords        = nrows*words_per_row;
    constexpr int niter         = (nwords + nthreads - 1) / nthreads;
#ifdef CP_ASYNC_AVAILABLE
    if constexpr (sizeof(word_t) == 4) {
        constexpr int rows_per_pass = nthreads / words_per_row; // the threads beyond rows_per_pass*words_per_row idle
        constexpr int npass         = (nrows + rows_per_pass - 1) / rows_per_pass;
        static_assert(rows_per_pass >= 1, "a row of at most nthreads words");
        const int row = tid / words_per_row;
        const int col = tid % words_per_row;
        if (row < rows_per_pass) {
            const unsigned int dst_shared = __cvta_generic_to_shared(dst) + row*row_bytes + 4*col;
            const char * src_word = src + row*stride + 4*col;
            const int64_t pass_stride = rows_per_pass*stride;
#pragma unroll
            for (int k = 0; k < npass; ++k) {
                if (nrows % rows_per_pass != 0 && k == npass - 1 && row + k*rows_per_pass >= nrows) {
                    break;
                }
                asm volatile("cp.async.ca.shared.global [%0], [%1], 4;"
                    : : "r"(dst_shared + k*rows_per_pass*row_bytes), "l"(src_word));
                src_word += pass_stride;
            }
        }
    } else
#endif // CP_ASYNC_AVAILABLE
    {
        word_t tmp[niter];
#pragma unroll
        for (int i = 0; i < niter; ++i) {
            const int w = i*nthreads + tid;
            if (nwords % nthreads == 0 || w < nwords) {
                tmp[i] = ((const word_t *) (src + (w / words_per_row)*stride))[w % words_per_row];
            }
        }
#pragma unroll
        for (int i = 0; i < niter; ++i) {
            if (nwords % nthreads == 0 || i*nthreads + tid < nwords) {
                ((word_t *) dst)[i*nthreads + tid] = tmp[i];
            }
        }
    }
}

static __device__ __forceinline__ void turbo_decode_stage_wait() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.wait_all;");
#endif // CP_ASYNC_AVAILABLE
}

// The kernels' arguments, for the variants that compile to nothing.
#define TURBO_DECODE_UNUSED_ARGS                                                                         \
    GGML_UNUSED_VARS(Q_ptr, K_ptr, V_ptr, mask_ptr, sinks_ptr, KV_max_ptr, dst_ptr, dst_meta_ptr, scale, \
        max_bias, m0, m1, n_head_log2, logit_softcap,                                                  \
        ne00, ne01, ne02, ne03,                                                                        \
              nb01, nb02, nb03,                                                                        \
        ne10, ne11, ne12, ne13,                                                                        \
              nb11, nb12, nb13,                                                                        \
              nb21, nb22, nb23,                                                                        \
              ne31, ne32, ne33,                                                                        \
              nb31, nb32, nb33)

// What a block works on: blockIdx.z = (sequence*ne12 + KV head)*ntiles_z_gqa + group of ncols query
// heads of that KV head, blockIdx.x = the query token.
template <int ncols>
struct turbo_decode_block {
    int z_KV;
    int sequence;
    int head0;
    int ncols_used;
    int ic0;

    __device__ turbo_decode_block(const int ne02, const int ne12) {
        const int gqa_ratio    = ne02 / ne12;
        const int ntiles_z_gqa = (gqa_ratio + ncols - 1) / ncols;
        const int zt_gqa       = blockIdx.z % ntiles_z_gqa;
        z_KV       = (blockIdx.z / ntiles_z_gqa) % ne12;
        sequence   = blockIdx.z / (ntiles_z_gqa*ne12);
        head0      = z_KV*gqa_ratio + zt_gqa*ncols;
        ncols_used = min(ncols, gqa_ratio - zt_gqa*ncols);
        ic0        = blockIdx.x;
    }
};

// One step's nrows K and V rows (and mask values) into shared memory, all copies issued before the
// wait.
template <typename word_t, int K_row_bytes, int V_row_bytes, int nrows, int nthreads>
static __device__ __forceinline__ void turbo_decode_stage_step(
        char * GGML_CUDA_RESTRICT K_tile, char * GGML_CUDA_RESTRICT V_tile, half * GGML_CUDA_RESTRICT mask_shared,
        const char * GGML_CUDA_RESTRICT K, const char * GGML_CUDA_RESTRICT V, const half * GGML_CUDA_RESTRICT maskh,
        const int k_VKQ_0, const int32_t nb11, const int32_t nb21, const int tid) {
    static_assert(nrows <= nthreads, "a mask value per thread at most");
    __syncthreads(); // the last step's rows are no longer read
    turbo_decode_stage_rows<word_t, K_row_bytes, nrows, nthreads>(K_tile, K + int64_t(k_VKQ_0)*nb11, nb11, tid);
    turbo_decode_stage_rows<word_t, V_row_bytes, nrows, nthreads>(V_tile, V + int64_t(k_VKQ_0)*nb21, nb21, tid);
    if (maskh && (nrows == nthreads || tid < nrows)) {
        mask_shared[tid] = maskh[k_VKQ_0 + tid];
    }
    turbo_decode_stage_wait();
    __syncthreads();
}

// The block's output from the warps' (VKQ_shared, each at its own maximum): rescaled to the common
// maximum and summed; divided by the softmax sum when the block holds the whole cache, else written
// with its maximum and sum for the combine of split blocks (launch_fattn).
template <int D, int ncols, int nwarps>
static __device__ __forceinline__ void turbo_decode_write_output(
        const float (*VKQ_shared)[ncols][D], const float (*KQ_max_shared)[ncols], const float (*KQ_sum_shared)[ncols],
        float * GGML_CUDA_RESTRICT dst_ptr, float2 * GGML_CUDA_RESTRICT dst_meta_ptr, const int j_dst0, const int ncols_used, const int tid) {
    constexpr int nthreads = nwarps*WARP_SIZE;
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

        const int j_dst = j_dst0 + j;
        if (gridDim.y == 1) {
            dst_ptr[j_dst*D + i] = num/den;
        } else {
            dst_ptr[(j_dst*gridDim.y + blockIdx.y)*D + i] = num;
            if (i == 0) {
                dst_meta_ptr[j_dst*gridDim.y + blockIdx.y] = make_float2(KQ_max_j, den);
            }
        }
    }
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
        TURBO_DECODE_UNUSED_ARGS;
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

    const turbo_decode_block<ncols> blk(ne02, ne12);
    const int z_KV       = blk.z_KV;
    const int sequence   = blk.sequence;
    const int head0      = blk.head0;
    const int ncols_used = blk.ncols_used;
    const int ic0        = blk.ic0;

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
        turbo_decode_stage_step<word_t, K_row_bytes, V_row_bytes, nthreads, nthreads>(
            K_tile, V_tile, mask_shared, K, V, maskh, k_VKQ_0, nb11, nb21, tid);

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
                turbo_decode_slice_codes<type_V>(blk, slice % (QK_TURBO/4), c);
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
                    const int i = (slice/(QK_TURBO/4))*QK_TURBO + turbo_decode_slice_pos<type_V>(slice % (QK_TURBO/4), l);
                    VKQ_shared[warp][j][i] = VKQ[j][4*is + l];
                }
            }
        }
    }
    __syncthreads();

    turbo_decode_write_output<D, ncols, nwarps>(VKQ_shared, KQ_max_shared, KQ_sum_shared, dst_ptr, dst_meta_ptr,
        (sequence*int(ne01.z) + ic0)*ne02 + head0, ncols_used, tid);
#else
    TURBO_DECODE_UNUSED_ARGS;
    NO_DEVICE_CODE;
#endif // FLASH_ATTN_AVAILABLE
}

// m16n8k16 tensor-core product with f16 inputs and f32 accumulators, in PTX's fragment layouts:
// with g = lane/4 and t = lane%4, a[0] = A(g, 2t:2t+1), a[1] = A(g+8, 2t:2t+1), a[2] = A(g, 2t+8:2t+9),
// a[3] = A(g+8, 2t+8:2t+9); b[0] = B(2t:2t+1, g), b[1] = B(2t+8:2t+9, g); c = C(g, 2t), C(g, 2t+1),
// C(g+8, 2t), C(g+8, 2t+1). The lower half of each 32-bit register holds the lower column (or row).
static __device__ __forceinline__ void turbo_decode_mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef TURING_MMA_AVAILABLE
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    GGML_UNUSED_VARS(c, a, b);
    NO_DEVICE_CODE;
#endif // TURING_MMA_AVAILABLE
}

static __device__ __forceinline__ uint32_t turbo_decode_half2(const float lo, const float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

// The tensor-core kernel's codebook lookups. turbo4's 16 levels go through the warp, a shuffle per
// value (fattn-turbo.cuh), and a pair of values becomes an f16x2 with one conversion. turbo3's and
// turbo2's levels (8 and 4) are looked up in registers instead: the low bytes of their f16 values
// fit in the two source words of one byte permute (PRMT), as do the high bytes, so a permute whose
// selector nibbles are 4 codes gives their 4 low (or high) bytes, and a third permute pairs low and
// high bytes into an f16x2 operand. That is 1 integer instruction per value where the shuffle path
// takes a shuffle and half a conversion, and it takes the lookups off the shared-memory pipe that
// runs the shuffles: at depth 32768 on an H100 that pipe was 59% busy with shuffles, 32% with
// permutes (Nsight Compute).
template <ggml_type type>
static constexpr __host__ __device__ bool turbo_decode_prmt_lookup() {
    return type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO2;
}

struct turbo_decode_prmt_table {
    uint32_t lo[2]; // low byte of the f16 value of level c at byte c % 4 of lo[c / 4]
    uint32_t hi[2]; // high byte
};

// (made for any type, so that the kernel can build it unconditionally; unused for turbo4)
template <ggml_type type>
static __device__ __forceinline__ turbo_decode_prmt_table turbo_decode_make_prmt_table() {
    turbo_decode_prmt_table table = {{0, 0}, {0, 0}};
#pragma unroll
    for (int c = 0; c < 8; ++c) {
        const uint32_t bits = __half_as_ushort(__float2half_rn(turbo_codebook<type>()[c % turbo_levels<type>()]));
        table.lo[c / 4] |= (bits & 0xFF) << (8*(c % 4));
        table.hi[c / 4] |= (bits >> 8)   << (8*(c % 4));
    }
    return table;
}

// The f16 values of the codes in the 4 nibbles of sel (bits 15:0, each nibble's bit 3 clear: a set
// one would make PRMT replicate a sign bit), as two f16x2: nibbles (0, 1) and (2, 3) for pairs of one
// row (pair_lo = 0x5140, pair_hi = 0x7362), nibbles (0, 2) and (1, 3) for pairs across two rows
// whose codes alternate by byte (0x6240, 0x7351).
template <uint32_t pair_lo, uint32_t pair_hi>
static __device__ __forceinline__ void turbo_decode_prmt_lookup4(
        const turbo_decode_prmt_table & table, const uint32_t sel, uint32_t & v_lo, uint32_t & v_hi) {
    const uint32_t L = __byte_perm(table.lo[0], table.lo[1], sel);
    const uint32_t H = __byte_perm(table.hi[0], table.hi[1], sel);
    v_lo = __byte_perm(L, H, pair_lo);
    v_hi = __byte_perm(L, H, pair_hi);
}

// 4 bytes of shared memory at an address that is 4-byte aligned if `aligned`, else 2-byte aligned
static __device__ __forceinline__ uint32_t turbo_decode_load_u32(const uint8_t * p, const bool aligned) {
    if (aligned) {
        return *(const uint32_t *) p;
    } else {
        return __byte_perm(turbo_fattn_load_u16(p), turbo_fattn_load_u16(p + 2), 0x5410);
    }
}

// The codes of q (four 2-bit fields a byte, code k at bits 2k) with turbo3's high bits hs (bit 2k of
// each byte, every other bit clear; 0 for turbo2) as nibbles: byte j of w[0] holds codes 0 and 2 of
// byte j of q (bits 3:0 and 7:4), byte j of w[1] codes 1 and 3.
static __device__ __forceinline__ void turbo_decode_nibbles(const uint32_t q, const uint32_t hs, uint32_t (&w)[2]) {
    w[0] = (q        & 0x33333333) | ((hs << 2) & 0x44444444);
    w[1] = ((q >> 2) & 0x33333333) | (hs        & 0x44444444);
}

// turbo3 and turbo2 K codes as nibbles: thread t of a row takes qs bytes 4t..4t+3 of a block, the 16
// values 4t + j + 16k (j, k < 4); byte j of w[0] holds the codes of values 4t + j (bits 3:0) and
// 4t + j + 32 (bits 7:4), byte j of w[1] those of 4t + j + 16 and 4t + j + 48. `aligned`: the
// block's qs and qh are 4-byte aligned.
template <ggml_type type>
static __device__ __forceinline__ void turbo_decode_K_nibbles(const char * GGML_CUDA_RESTRICT blk, const int t, const bool aligned, uint32_t (&w)[2]) {
    if constexpr (type == GGML_TYPE_TURBO3) {
        const block_turbo3 * x = (const block_turbo3 *) blk;
        const uint32_t q  = turbo_decode_load_u32(x->qs + 4*t, aligned);
        // byte j, bit 2k: the high bit of the code of value 4t + j + 16k (qh[m % 8] bit 2k + m/8 for m = 4t + j)
        const uint32_t hs = (turbo_decode_load_u32(x->qh + 4*(t % 2), aligned) >> (t / 2)) & 0x55555555;
        turbo_decode_nibbles(q, hs, w);
    } else {
        static_assert(type == GGML_TYPE_TURBO2, "no register lookup for this type");
        turbo_decode_nibbles(turbo_decode_load_u32(((const block_turbo2 *) blk)->qs + 4*t, aligned), 0, w);
    }
}

// turbo3 and turbo2 V codes of two rows as nibbles: thread g takes qs bytes 2g, 2g + 1 of a block, the
// 8 values 2g + j + 16k (j < 2, k < 4), of rows r and r1 in alternate bytes: byte 2j + (0 for r, 1 for
// r1) of w[0] holds the codes of values 2g + j (bits 3:0) and 2g + j + 32 (bits 7:4), of w[1] those
// of 2g + j + 16 and 2g + j + 48.
template <ggml_type type>
static __device__ __forceinline__ void turbo_decode_V_nibbles(
        const char * GGML_CUDA_RESTRICT blk_r, const char * GGML_CUDA_RESTRICT blk_r1, const int g, uint32_t (&w)[2]) {
    if constexpr (type == GGML_TYPE_TURBO3) {
        const block_turbo3 * x  = (const block_turbo3 *) blk_r;
        const block_turbo3 * x1 = (const block_turbo3 *) blk_r1;
        const uint32_t q  = __byte_perm(turbo_fattn_load_u16(x->qs + 2*g), turbo_fattn_load_u16(x1->qs + 2*g), 0x5140);
        const uint32_t h  = __byte_perm(turbo_fattn_load_u16(x->qh + (2*g) % 8), turbo_fattn_load_u16(x1->qh + (2*g) % 8), 0x5140);
        // byte 2j (+1), bit 2k: the high bit of the code of value 2g + j + 16k (qh[m % 8] bit 2k + m/8 for m = 2g + j)
        turbo_decode_nibbles(q, (h >> (g / 4)) & 0x55555555, w);
    } else {
        static_assert(type == GGML_TYPE_TURBO2, "no register lookup for this type");
        const uint32_t q = __byte_perm(turbo_fattn_load_u16(((const block_turbo2 *) blk_r)->qs + 2*g),
                                       turbo_fattn_load_u16(((const block_turbo2 *) blk_r1)->qs + 2*g), 0x5140);
        turbo_decode_nibbles(q, 0, w);
    }
}

// The value (0..63 within a block) that k-step sl (0..3) of a K block gives thread t at A's column
// 2t + 8h + e (h, e < 2), and so the query value that B must hold there.
template <ggml_type type>
static __device__ __forceinline__ int turbo_decode_K_pos(const int sl, const int t, const int h, const int e) {
    if constexpr (turbo_decode_prmt_lookup<type>()) {
        return 4*t + 2*(sl % 2) + h + 16*(sl / 2) + 32*e;
    } else {
        return turbo_decode_slice_pos<type>(4*sl + t, 2*h + e);
    }
}

// The value (0..63 within a block) of the output that thread (g, t) holds in m-tile u (0..3) of a
// block at accumulator i (0..3): row g of the tile for i < 2, row g + 8 for the others.
template <ggml_type type>
static __device__ __forceinline__ int turbo_decode_V_pos(const int g, const int u, const int i) {
    if constexpr (turbo_decode_prmt_lookup<type>()) {
        return 2*g + (u % 2) + 16*(u / 2) + 32*(i / 2);
    } else {
        return turbo_decode_slice_pos<type>(g + 8*(u / 2), 2*(u % 2) + i / 2);
    }
}

// The same decode on tensor cores (Turing and newer). The codes become f16 fragments of m16n8k16
// products, so the per-head multiply-adds of the kernel above (4 per value with 4 heads) become a
// fraction of one tensor-core instruction, and a value costs its lookup: about a byte permute for
// turbo3 and turbo2, a shuffle and half a pack for turbo4 (turbo_decode_prmt_lookup).
//   K·Q: S[rows x heads] = K[rows x D] · Q^T. The dimensions are taken in the order of the codes
//        (turbo_decode_K_pos), and the query's B fragment is loaded in the same order: for turbo4 a
//        k-step of 16 takes, in thread (g, t), the 4 codes of slice 4 s + t of a block
//        (turbo_decode_slice_codes) for rows g and g + 8; for turbo3 and turbo2 the thread's 16
//        codes of a block and row are one 4-byte run of qs (turbo_decode_K_nibbles), a quarter of
//        them per k-step. A block's 4 k-steps accumulate apart and are scaled by the rows' block
//        scales at the end.
//   V:   O^T[D x heads] += V^T[D x rows] · (P ⊙ d)[rows x heads]: the block scale of each V row is
//        folded into the probabilities (the B fragment), so A holds bare codebook values. A's
//        registers pair two rows (2t and 2t + 1, or 2t + 8 and 2t + 9) of one dimension. For turbo4,
//        m-tiles 2 p and 2 p + 1 of a block take slice g + 8 p of the 4 rows: codes 0 and 1 go to
//        rows g and g + 8 of the first, codes 2 and 3 to the second. For turbo3 and turbo2 thread g
//        takes qs bytes 2g, 2g + 1 of each row, two rows' bytes interleaved so that one permute
//        pairs them (turbo_decode_V_nibbles); the output's dimensions follow turbo_decode_V_pos.
// The probabilities go from the accumulator layout (rows by heads) to the B layout (heads by
// rows) through shared memory. Heads beyond ncols (the product's N is 8) have a zero query and
// are not written. Staging, the softmax's offset, the warps' merge and the split combine are those
// of the kernel above.
// A warp takes rows_per_warp (16 or 32) rows per step. With 16 a block's steps are half as long,
// so a short cache is split over twice as many blocks, each of them done sooner: the kernel's
// latency there is its instructions (one warp per scheduler), not its memory traffic.
template<int D, int ncols, int rows_per_warp, ggml_type type_K, ggml_type type_V, bool use_logit_softcap> // D == head size, ncols == query heads per block
__launch_bounds__(TURBO_DECODE_NWARPS*WARP_SIZE, D == 256 ? 3 : 4)
static __global__ void flash_attn_ext_turbo_decode_mma(
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
#if defined(FLASH_ATTN_AVAILABLE) && defined(TURING_MMA_AVAILABLE)
    // Skip unused kernel variants for faster compilation:
    if (use_logit_softcap && !(D == 128 || D == 256)) {
        TURBO_DECODE_UNUSED_ARGS;
        NO_DEVICE_CODE;
        return;
    }
    static_assert(D % QK_TURBO == 0, "head size must be a multiple of 64");
    static_assert(ncols == 1 || ncols == 2 || ncols == 4, "1, 2 or 4 query heads per block");

    static_assert(rows_per_warp == 16 || rows_per_warp == 32, "16 or 32 rows per warp and step");
    constexpr int nwarps   = TURBO_DECODE_NWARPS;
    constexpr int nthreads = nwarps*WARP_SIZE;
    constexpr int nrows    = nwarps*rows_per_warp; // a step's rows
    constexpr int ntiles   = rows_per_warp/16;     // 16-row tiles of a warp's rows in a step

    constexpr int blocks_per_row   = D/QK_TURBO;
    constexpr size_t K_block_size  = turbo_block_size<type_K>();
    constexpr size_t V_block_size  = turbo_block_size<type_V>();
    constexpr int K_row_bytes = blocks_per_row*K_block_size;
    constexpr int V_row_bytes = blocks_per_row*V_block_size;
    using word_t = std::conditional_t<K_row_bytes % 4 == 0 && V_row_bytes % 4 == 0, uint32_t, uint16_t>;

    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int tid  = warp*WARP_SIZE + lane;
    const int g    = lane / 4;
    const int t    = lane % 4;

    const turbo_decode_block<ncols> blk(ne02, ne12);
    const int z_KV       = blk.z_KV;
    const int sequence   = blk.sequence;
    const int head0      = blk.head0;
    const int ncols_used = blk.ncols_used;
    const int ic0        = blk.ic0;

    const char * Q = Q_ptr + nb03*sequence + nb02*head0 + nb01*ic0;
    const char * K = K_ptr + nb13*sequence + nb12*z_KV;
    const char * V = V_ptr + nb23*sequence + nb22*z_KV;
    const half * maskh = mask_ptr ? (const half *) (mask_ptr + nb33*(sequence % ne33) + nb31*ic0) : nullptr;

    // the thread's scores and outputs belong to heads 2t and 2t + 1
    float slope[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        slope[h] = get_alibi_slope(max_bias, head0 + 2*t + h, n_head_log2, m0, m1);
    }

    ggml_cuda_pdl_sync();

    // B fragments of K·Q: head g's query, scaled, in the order of the codes (zero beyond ncols_used)
    uint32_t Q_B[D/16][2];
#pragma unroll
    for (int s = 0; s < D/16; ++s) {
        const int b = s / 4;
        float q[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = g < ncols_used ? scale*((const float *) (Q + g*nb02))[b*QK_TURBO + turbo_decode_K_pos<type_K>(s % 4, t, k / 2, k % 2)] : 0.0f;
        }
        Q_B[s][0] = turbo_decode_half2(q[0], q[1]);
        Q_B[s][1] = turbo_decode_half2(q[2], q[3]);
    }

    const float cb_K = turbo_codebook_lane<type_K>(lane);
    const float cb_V = turbo_codebook_lane<type_V>(lane);
    const turbo_decode_prmt_table table_K = turbo_decode_make_prmt_table<type_K>();
    const turbo_decode_prmt_table table_V = turbo_decode_make_prmt_table<type_V>();

    // the step's K and V rows; the warps' outputs at the end (combine_shared)
    constexpr int tile_bytes    = nrows*(K_row_bytes + V_row_bytes);
    constexpr int combine_bytes = nwarps*ncols*D*sizeof(float);
    __shared__ __align__(16) char tile_shared[tile_bytes > combine_bytes ? tile_bytes : combine_bytes];
    char * K_tile = tile_shared;
    char * V_tile = tile_shared + nrows*K_row_bytes;
    __shared__ half mask_shared[nrows];
    // probabilities of the warp's rows, by row and head (8: the product's N)
    __shared__ float P_shared[nwarps][rows_per_warp][8];

    float KQ_max[2]; // heads 2t, 2t + 1: the same in every lane of a t
    float KQ_sum[2]; // partial: summed over g at the end
    // output of block b, m-tile u: c-fragment (dims of slice g + 8 (u/2), heads 2t, 2t + 1)
    float VKQ[blocks_per_row][4][4] = {{{0.0f}}};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        KQ_max[h] = -FLT_MAX/2.0f;
        KQ_sum[h] = 0.0f;
    }

    const int k_VKQ_max = KV_max_ptr ? KV_max_ptr[sequence*gridDim.x + blockIdx.x] : ne11;
    for (int k_VKQ_0 = blockIdx.y*nrows; k_VKQ_0 < k_VKQ_max; k_VKQ_0 += gridDim.y*nrows) {
        turbo_decode_stage_step<word_t, K_row_bytes, V_row_bytes, nrows, nthreads>(
            K_tile, V_tile, mask_shared, K, V, maskh, k_VKQ_0, nb11, nb21, tid);

        const int r_warp = warp*rows_per_warp; // the warp's first row in the tile

        // 1. K·Q: S[tile] = scores of rows 16 tile + g (S[tile][0:1]) and + 8 (S[tile][2:3]), heads 2t, 2t + 1
        float S[ntiles][4];
#pragma unroll
        for (int tile = 0; tile < ntiles; ++tile) {
            const char * K_lo = K_tile + (r_warp + 16*tile + g)*K_row_bytes;
            const char * K_hi = K_lo + 8*K_row_bytes;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                S[tile][i] = 0.0f;
            }
#pragma unroll
            for (int b = 0; b < blocks_per_row; ++b) {
                float C[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if constexpr (turbo_decode_prmt_lookup<type_K>()) {
                    // k-step sl takes bytes 2 (sl % 2), +1 of w[sl / 2]: A's columns 2t, 2t + 1 the first, 2t + 8, 2t + 9 the second
                    const bool aligned = K_row_bytes % 4 == 0 && (b*K_block_size + 2) % 4 == 0;
                    uint32_t w_lo[2];
                    uint32_t w_hi[2];
                    turbo_decode_K_nibbles<type_K>(K_lo + b*K_block_size, t, aligned, w_lo);
                    turbo_decode_K_nibbles<type_K>(K_hi + b*K_block_size, t, aligned, w_hi);
#pragma unroll
                    for (int sl = 0; sl < 4; ++sl) {
                        uint32_t A[4];
                        turbo_decode_prmt_lookup4<0x5140, 0x7362>(table_K, w_lo[sl / 2] >> (16*(sl % 2)), A[0], A[2]);
                        turbo_decode_prmt_lookup4<0x5140, 0x7362>(table_K, w_hi[sl / 2] >> (16*(sl % 2)), A[1], A[3]);
                        turbo_decode_mma(C, A, Q_B[4*b + sl]);
                    }
                } else {
#pragma unroll
                    for (int sl = 0; sl < 4; ++sl) {
                        int lo[4];
                        int hi[4];
                        turbo_decode_slice_codes<type_K>(K_lo + b*K_block_size, 4*sl + t, lo);
                        turbo_decode_slice_codes<type_K>(K_hi + b*K_block_size, 4*sl + t, hi);
                        const uint32_t A[4] = {
                            turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_K, lo[0], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_K, lo[1], WARP_SIZE)),
                            turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_K, hi[0], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_K, hi[1], WARP_SIZE)),
                            turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_K, lo[2], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_K, lo[3], WARP_SIZE)),
                            turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_K, hi[2], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_K, hi[3], WARP_SIZE)),
                        };
                        turbo_decode_mma(C, A, Q_B[4*b + sl]);
                    }
                }
                const float d_lo = __half2float(*(const half *) (K_lo + b*K_block_size)); // every turbo block starts with its scale
                const float d_hi = __half2float(*(const half *) (K_hi + b*K_block_size));
                S[tile][0] += d_lo*C[0];
                S[tile][1] += d_lo*C[1];
                S[tile][2] += d_hi*C[2];
                S[tile][3] += d_hi*C[3];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (use_logit_softcap) {
                    S[tile][i] = logit_softcap*tanhf(S[tile][i]);
                }
                if (maskh) {
                    S[tile][i] += slope[i % 2]*__half2float(mask_shared[r_warp + 16*tile + g + 8*(i / 2)]);
                }
            }
        }

        // 2. softmax of each head over the warp's rows: the maximum over the 8 row groups g
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -FLT_MAX/2.0f;
#pragma unroll
            for (int tile = 0; tile < ntiles; ++tile) {
                mx = fmaxf(mx, fmaxf(S[tile][h], S[tile][2 + h]));
            }
#pragma unroll
            for (int offset = 4; offset < WARP_SIZE; offset *= 2) {
                mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFF, mx, offset, WARP_SIZE));
            }
            const float KQ_max_new   = fmaxf(KQ_max[h], mx + FATTN_KQ_MAX_OFFSET);
            const float KQ_max_scale = expf(KQ_max[h] - KQ_max_new);
            KQ_max[h] = KQ_max_new;
            KQ_sum[h] *= KQ_max_scale;
#pragma unroll
            for (int tile = 0; tile < ntiles; ++tile) {
                S[tile][h]     = expf(S[tile][h]     - KQ_max_new);
                S[tile][2 + h] = expf(S[tile][2 + h] - KQ_max_new);
                KQ_sum[h] += S[tile][h] + S[tile][2 + h];
            }
#pragma unroll
            for (int b = 0; b < blocks_per_row; ++b) {
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    VKQ[b][u][h]     *= KQ_max_scale;
                    VKQ[b][u][2 + h] *= KQ_max_scale;
                }
            }
        }
#pragma unroll
        for (int tile = 0; tile < ntiles; ++tile) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                P_shared[warp][16*tile + g + 8*(i / 2)][2*t + i % 2] = S[tile][i];
            }
        }
        __syncwarp();

        // 3. V: k-tiles of 16 rows; the thread's rows 2t, 2t + 1, 2t + 8, 2t + 9, head g of B
#pragma unroll
        for (int tile = 0; tile < ntiles; ++tile) {
            const char * V_rows[4];
            float p[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = 16*tile + 2*t + (i % 2) + 8*(i / 2);
                V_rows[i] = V_tile + (r_warp + r)*V_row_bytes;
                p[i] = P_shared[warp][r][g];
            }
#pragma unroll
            for (int b = 0; b < blocks_per_row; ++b) {
                float d[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    d[i] = __half2float(*(const half *) (V_rows[i] + b*V_block_size));
                }
                const uint32_t B[2] = {turbo_decode_half2(p[0]*d[0], p[1]*d[1]), turbo_decode_half2(p[2]*d[2], p[3]*d[3])};
                if constexpr (turbo_decode_prmt_lookup<type_V>()) {
                    // m-tile u takes bytes 2 (u % 2), +1 of w[u / 2] of both row pairs (turbo_decode_V_pos)
                    uint32_t w_01[2]; // rows 2t, 2t + 1
                    uint32_t w_89[2]; // rows 2t + 8, 2t + 9
                    turbo_decode_V_nibbles<type_V>(V_rows[0] + b*V_block_size, V_rows[1] + b*V_block_size, g, w_01);
                    turbo_decode_V_nibbles<type_V>(V_rows[2] + b*V_block_size, V_rows[3] + b*V_block_size, g, w_89);
#pragma unroll
                    for (int u = 0; u < 4; ++u) {
                        uint32_t A[4];
                        turbo_decode_prmt_lookup4<0x6240, 0x7351>(table_V, w_01[u / 2] >> (16*(u % 2)), A[0], A[1]);
                        turbo_decode_prmt_lookup4<0x6240, 0x7351>(table_V, w_89[u / 2] >> (16*(u % 2)), A[2], A[3]);
                        turbo_decode_mma(VKQ[b][u], A, B);
                    }
                } else {
#pragma unroll
                    for (int pp = 0; pp < 2; ++pp) {
                        int c[4][4];
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            turbo_decode_slice_codes<type_V>(V_rows[i] + b*V_block_size, g + 8*pp, c[i]);
                        }
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            const uint32_t A[4] = {
                                turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_V, c[0][2*h],     WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_V, c[1][2*h],     WARP_SIZE)),
                                turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_V, c[0][2*h + 1], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_V, c[1][2*h + 1], WARP_SIZE)),
                                turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_V, c[2][2*h],     WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_V, c[3][2*h],     WARP_SIZE)),
                                turbo_decode_half2(__shfl_sync(0xFFFFFFFF, cb_V, c[2][2*h + 1], WARP_SIZE), __shfl_sync(0xFFFFFFFF, cb_V, c[3][2*h + 1], WARP_SIZE)),
                            };
                            turbo_decode_mma(VKQ[b][2*pp + h], A, B);
                        }
                    }
                }
            }
        }
    }

    if (sinks_ptr && blockIdx.y == 0 && warp == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int j = 2*t + h;
            const float sink = j < ncols_used ? ((const float *) sinks_ptr)[head0 + j] : -FLT_MAX/2.0f;
            const float KQ_max_new = fmaxf(sink, KQ_max[h]);
            const float KQ_max_scale = expf(KQ_max[h] - KQ_max_new);
            KQ_max[h] = KQ_max_new;
            KQ_sum[h] = KQ_sum[h]*KQ_max_scale + (g == 0 ? expf(sink - KQ_max_new) : 0.0f);
#pragma unroll
            for (int b = 0; b < blocks_per_row; ++b) {
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    VKQ[b][u][h]     *= KQ_max_scale;
                    VKQ[b][u][2 + h] *= KQ_max_scale;
                }
            }
        }
    }

    // Combine the warps: each warp's output and sum, scaled to the common maximum.
    __syncthreads(); // the tile is no longer read
    float (*VKQ_shared)[ncols][D] = (float (*)[ncols][D]) tile_shared;
    __shared__ float KQ_max_shared[nwarps][ncols];
    __shared__ float KQ_sum_shared[nwarps][ncols];

#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int offset = 4; offset < WARP_SIZE; offset *= 2) {
            KQ_sum[h] += __shfl_xor_sync(0xFFFFFFFF, KQ_sum[h], offset, WARP_SIZE);
        }
        const int j = 2*t + h;
        if (g == 0 && j < ncols) {
            KQ_max_shared[warp][j] = KQ_max[h];
            KQ_sum_shared[warp][j] = KQ_sum[h];
        }
    }
#pragma unroll
    for (int b = 0; b < blocks_per_row; ++b) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int j = 2*t + i % 2;
                if (j < ncols) {
                    const int dim = b*QK_TURBO + turbo_decode_V_pos<type_V>(g, u, i);
                    VKQ_shared[warp][j][dim] = VKQ[b][u][i];
                }
            }
        }
    }
    __syncthreads();

    turbo_decode_write_output<D, ncols, nwarps>(VKQ_shared, KQ_max_shared, KQ_sum_shared, dst_ptr, dst_meta_ptr,
        (sequence*int(ne01.z) + ic0)*ne02 + head0, ncols_used, tid);
#else
    TURBO_DECODE_UNUSED_ARGS;
    NO_DEVICE_CODE;
#endif // defined(FLASH_ATTN_AVAILABLE) && defined(TURING_MMA_AVAILABLE)
}

// GGML_CUDA_TURBO_DECODE: simt takes the kernel without tensor cores, rows16 or rows32 the
// tensor-core kernel with that many rows per warp and step whatever the cache length, to compare
// them in one build; unset, the choice below
enum class turbo_decode_choice { automatic, simt, rows16, rows32 };

static turbo_decode_choice turbo_decode_forced() {
    static const turbo_decode_choice forced = [] {
        const char * env = getenv("GGML_CUDA_TURBO_DECODE");
        if (env == nullptr) {
            return turbo_decode_choice::automatic;
        }
        if (strcmp(env, "simt") == 0) {
            return turbo_decode_choice::simt;
        }
        if (strcmp(env, "rows16") == 0) {
            return turbo_decode_choice::rows16;
        }
        if (strcmp(env, "rows32") == 0) {
            return turbo_decode_choice::rows32;
        }
        GGML_ABORT("GGML_CUDA_TURBO_DECODE=%s: expected simt, rows16 or rows32", env);
    }();
    return forced;
}

template <int D, int ncols, ggml_type type_K, ggml_type type_V>
static void ggml_cuda_flash_attn_ext_turbo_decode_ncols(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    float logit_softcap;
    memcpy(&logit_softcap, (const float *) dst->op_params + 2, sizeof(float));

    const int cc  = ggml_cuda_info().devices[ggml_cuda_get_device()].cc;
    const int nsm = ggml_cuda_info().devices[ggml_cuda_get_device()].nsm;
    turbo_decode_choice choice = turbo_decode_forced();
    if (!turing_mma_available(cc)) {
        choice = turbo_decode_choice::simt;
    } else if (choice == turbo_decode_choice::automatic) {
        // 32 rows per warp while steps of 128 rows give every SM several blocks (4 fit on one);
        // a shorter cache in steps of 64, so that twice as many blocks share it
        const int64_t blocks_32 = (K->ne[1] / (TURBO_DECODE_NWARPS*32)) * Q->ne[1] * Q->ne[3] * K->ne[2] *
                                  ((Q->ne[2] / K->ne[2] + ncols - 1) / ncols);
        choice = blocks_32 >= 4*nsm ? turbo_decode_choice::rows32 : turbo_decode_choice::rows16;
    }

    fattn_kernel_t kernel;
    int nbatch_fa; // the cache is split over blocks in steps of one block's rows (launch_fattn)
    if (choice == turbo_decode_choice::simt) {
        kernel = logit_softcap == 0.0f ?
            flash_attn_ext_turbo_decode<D, ncols, type_K, type_V, false> :
            flash_attn_ext_turbo_decode<D, ncols, type_K, type_V, true>;
        nbatch_fa = TURBO_DECODE_NWARPS*WARP_SIZE;
    } else if (choice == turbo_decode_choice::rows16) {
        kernel = logit_softcap == 0.0f ?
            flash_attn_ext_turbo_decode_mma<D, ncols, 16, type_K, type_V, false> :
            flash_attn_ext_turbo_decode_mma<D, ncols, 16, type_K, type_V, true>;
        nbatch_fa = TURBO_DECODE_NWARPS*16;
    } else {
        kernel = logit_softcap == 0.0f ?
            flash_attn_ext_turbo_decode_mma<D, ncols, 32, type_K, type_V, false> :
            flash_attn_ext_turbo_decode_mma<D, ncols, 32, type_K, type_V, true>;
        nbatch_fa = TURBO_DECODE_NWARPS*32;
    }
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
