// CPU kernels of the TurboQuant KV-cache types turbo2/turbo3/turbo4.
//
// A block is an fp16 scale d and 64 b-bit indices into a small codebook (ggml-turbo-common.h).
// The dot product that flash attention takes between a cached key row and the (rotated) query
// is a codebook lookup and a multiply-add per value: the query stays in f32, it is never
// quantized. Lookups are register permutes: AVX2 permutes 8 floats (two of them and a blend for
// 16 levels), AVX-512 and NEON (as a byte table) cover 16 levels in one instruction.
//
// Paths are chosen at compile time, the way ggml chooses: AVX-512F, else AVX2+FMA, else NEON,
// else scalar. Every compiled path can also be called by name (ggml_turbo_cpu_vec_dot) so the
// tests can hold it against the scalar one.

#define GGML_COMMON_DECL_C
#include "ggml-turbo-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-turbo.h"
#include "ggml-turbo-quants.h"
#include "ggml-turbo-tables.h"
#include "turbo.h"

#include <assert.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#define TURBO_HAVE_AVX2 1
#endif
#if defined(__AVX512F__)
#define TURBO_HAVE_AVX512 1
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define TURBO_HAVE_NEON 1
#endif

// quantization happens once per cached token: the reference quantizer serves as it is

void quantize_row_turbo2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo2_ref(x, (block_turbo2 *) y, k);
}

void quantize_row_turbo3(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo3_ref(x, (block_turbo3 *) y, k);
}

void quantize_row_turbo4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_turbo4_ref(x, (block_turbo4 *) y, k);
}

// index of value i of a block
static inline int turbo4_index(const block_turbo4 * b, int i) {
    return (b->qs[i % 32] >> (4 * (i / 32))) & 15;
}

static inline int turbo3_index(const block_turbo3 * b, int i) {
    return ((b->qs[i % 16] >> (2 * (i / 16))) & 3) | (((b->qh[i % 8] >> (i / 8)) & 1) << 2);
}

static inline int turbo2_index(const block_turbo2 * b, int i) {
    return (b->qs[i % 16] >> (2 * (i / 16))) & 3;
}

//
// scalar: the reference order, Σ_b d_b · Σ_i codebook[idx_i] · y_i
//

#define TURBO_SCALAR_KERNELS(NAME)                                                                  \
static void vec_dot_##NAME##_scalar(int64_t n, float * s, const block_##NAME * x, const float * y) {\
    float sumf = 0.0f;                                                                              \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        float sum = 0.0f;                                                                           \
        for (int i = 0; i < QK_TURBO; ++i) {                                                        \
            sum += NAME##_codebook[NAME##_index(&x[ib], i)] * y[ib*QK_TURBO + i];                   \
        }                                                                                           \
        sumf += GGML_CPU_FP16_TO_FP32(x[ib].d) * sum;                                               \
    }                                                                                               \
    *s = sumf;                                                                                      \
}                                                                                                   \
static void dequantize_##NAME##_scalar(int64_t n, const block_##NAME * x, float * y) {             \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float d = GGML_CPU_FP16_TO_FP32(x[ib].d);                                             \
        for (int i = 0; i < QK_TURBO; ++i) {                                                        \
            y[ib*QK_TURBO + i] = d * NAME##_codebook[NAME##_index(&x[ib], i)];                      \
        }                                                                                           \
    }                                                                                               \
}

TURBO_SCALAR_KERNELS(turbo2)
TURBO_SCALAR_KERNELS(turbo3)
TURBO_SCALAR_KERNELS(turbo4)

// y += v * dequantize(x): the value accumulation of flash attention, without a row in between
#define TURBO_SCALAR_MAD(NAME)                                                                      \
static void mad_##NAME##_scalar(int64_t n, float * y, const block_##NAME * x, float v) {            \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float d = v * GGML_CPU_FP16_TO_FP32(x[ib].d);                                         \
        for (int i = 0; i < QK_TURBO; ++i) {                                                        \
            y[ib*QK_TURBO + i] += d * NAME##_codebook[NAME##_index(&x[ib], i)];                     \
        }                                                                                           \
    }                                                                                               \
}

TURBO_SCALAR_MAD(turbo2)
TURBO_SCALAR_MAD(turbo3)
TURBO_SCALAR_MAD(turbo4)

//
// AVX2: 8 values per step, indices widened to 32-bit lanes, looked up with vpermps
//

#if TURBO_HAVE_AVX2

static inline float turbo_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 8 bytes at p, one per 32-bit lane
static inline __m256i turbo_load8_epi32(const uint8_t * p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) p));
}

// codebook[idx] for 16 levels: two 8-level permutes, bit 3 of the index picks one
static inline __m256 turbo_lookup16_avx2(__m256i idx, __m256 lo, __m256 hi) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    const __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// the 8 values [8g, 8g + 8) of a turbo4 block
static inline __m256 turbo4_values_avx2(const block_turbo4 * b, int g, __m256 lo, __m256 hi) {
    const __m256i bytes = turbo_load8_epi32(b->qs + 8 * (g % 4));
    const __m256i idx = g < 4 ? _mm256_and_si256(bytes, _mm256_set1_epi32(15)) : _mm256_srli_epi32(bytes, 4);
    return turbo_lookup16_avx2(idx, lo, hi);
}

// the 8 values [8g, 8g + 8) of a turbo2 block (low bits of turbo3 alike)
static inline __m256i turbo2_low_avx2(const uint8_t * qs, int g) {
    const __m256i bytes = turbo_load8_epi32(qs + 8 * (g % 2));
    return _mm256_and_si256(_mm256_srlv_epi32(bytes, _mm256_set1_epi32(2 * (g / 2))), _mm256_set1_epi32(3));
}

static inline __m256i turbo3_index_avx2(const block_turbo3 * b, int g) {
    const __m256i high = _mm256_and_si256(_mm256_srlv_epi32(turbo_load8_epi32(b->qh), _mm256_set1_epi32(g)), _mm256_set1_epi32(1));
    return _mm256_or_si256(turbo2_low_avx2(b->qs, g), _mm256_slli_epi32(high, 2));
}

static void vec_dot_turbo4_avx2(int64_t n, float * s, const block_turbo4 * x, const float * y) {
    const __m256 lo = _mm256_loadu_ps(turbo4_codebook);
    const __m256 hi = _mm256_loadu_ps(turbo4_codebook + 8);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const float * yb = y + ib*QK_TURBO;
        __m256 sum = _mm256_setzero_ps();
        for (int g = 0; g < 8; ++g) {
            sum = _mm256_fmadd_ps(turbo4_values_avx2(&x[ib], g, lo, hi), _mm256_loadu_ps(yb + 8*g), sum);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d)), sum, acc);
    }
    *s = turbo_hsum_avx2(acc);
}

static void vec_dot_turbo3_avx2(int64_t n, float * s, const block_turbo3 * x, const float * y) {
    const __m256 cb = _mm256_loadu_ps(turbo3_codebook);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const float * yb = y + ib*QK_TURBO;
        __m256 sum = _mm256_setzero_ps();
        for (int g = 0; g < 8; ++g) {
            const __m256 v = _mm256_permutevar8x32_ps(cb, turbo3_index_avx2(&x[ib], g));
            sum = _mm256_fmadd_ps(v, _mm256_loadu_ps(yb + 8*g), sum);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d)), sum, acc);
    }
    *s = turbo_hsum_avx2(acc);
}

static void vec_dot_turbo2_avx2(int64_t n, float * s, const block_turbo2 * x, const float * y) {
    const __m256 cb = _mm256_setr_ps(turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3],
                                     turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3]);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const float * yb = y + ib*QK_TURBO;
        __m256 sum = _mm256_setzero_ps();
        for (int g = 0; g < 8; ++g) {
            const __m256 v = _mm256_permutevar8x32_ps(cb, turbo2_low_avx2(x[ib].qs, g));
            sum = _mm256_fmadd_ps(v, _mm256_loadu_ps(yb + 8*g), sum);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d)), sum, acc);
    }
    *s = turbo_hsum_avx2(acc);
}

static void dequantize_turbo4_avx2(int64_t n, const block_turbo4 * x, float * y) {
    const __m256 lo = _mm256_loadu_ps(turbo4_codebook);
    const __m256 hi = _mm256_loadu_ps(turbo4_codebook + 8);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d));
        for (int g = 0; g < 8; ++g) {
            _mm256_storeu_ps(y + ib*QK_TURBO + 8*g, _mm256_mul_ps(d, turbo4_values_avx2(&x[ib], g, lo, hi)));
        }
    }
}

static void dequantize_turbo3_avx2(int64_t n, const block_turbo3 * x, float * y) {
    const __m256 cb = _mm256_loadu_ps(turbo3_codebook);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d));
        for (int g = 0; g < 8; ++g) {
            const __m256 v = _mm256_permutevar8x32_ps(cb, turbo3_index_avx2(&x[ib], g));
            _mm256_storeu_ps(y + ib*QK_TURBO + 8*g, _mm256_mul_ps(d, v));
        }
    }
}

static void dequantize_turbo2_avx2(int64_t n, const block_turbo2 * x, float * y) {
    const __m256 cb = _mm256_setr_ps(turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3],
                                     turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3]);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d));
        for (int g = 0; g < 8; ++g) {
            const __m256 v = _mm256_permutevar8x32_ps(cb, turbo2_low_avx2(x[ib].qs, g));
            _mm256_storeu_ps(y + ib*QK_TURBO + 8*g, _mm256_mul_ps(d, v));
        }
    }
}

static void mad_turbo4_avx2(int64_t n, float * y, const block_turbo4 * x, float v) {
    const __m256 lo = _mm256_loadu_ps(turbo4_codebook);
    const __m256 hi = _mm256_loadu_ps(turbo4_codebook + 8);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(v * GGML_CPU_FP16_TO_FP32(x[ib].d));
        float * yb = y + ib*QK_TURBO;
        for (int g = 0; g < 8; ++g) {
            _mm256_storeu_ps(yb + 8*g, _mm256_fmadd_ps(d, turbo4_values_avx2(&x[ib], g, lo, hi), _mm256_loadu_ps(yb + 8*g)));
        }
    }
}

static void mad_turbo3_avx2(int64_t n, float * y, const block_turbo3 * x, float v) {
    const __m256 cb = _mm256_loadu_ps(turbo3_codebook);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(v * GGML_CPU_FP16_TO_FP32(x[ib].d));
        float * yb = y + ib*QK_TURBO;
        for (int g = 0; g < 8; ++g) {
            const __m256 c = _mm256_permutevar8x32_ps(cb, turbo3_index_avx2(&x[ib], g));
            _mm256_storeu_ps(yb + 8*g, _mm256_fmadd_ps(d, c, _mm256_loadu_ps(yb + 8*g)));
        }
    }
}

static void mad_turbo2_avx2(int64_t n, float * y, const block_turbo2 * x, float v) {
    const __m256 cb = _mm256_setr_ps(turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3],
                                     turbo2_codebook[0], turbo2_codebook[1], turbo2_codebook[2], turbo2_codebook[3]);
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {
        const __m256 d = _mm256_set1_ps(v * GGML_CPU_FP16_TO_FP32(x[ib].d));
        float * yb = y + ib*QK_TURBO;
        for (int g = 0; g < 8; ++g) {
            const __m256 c = _mm256_permutevar8x32_ps(cb, turbo2_low_avx2(x[ib].qs, g));
            _mm256_storeu_ps(yb + 8*g, _mm256_fmadd_ps(d, c, _mm256_loadu_ps(yb + 8*g)));
        }
    }
}

#endif // TURBO_HAVE_AVX2

//
// AVX-512: 16 values per step; one vpermps over a 16-float codebook
//

#if TURBO_HAVE_AVX512

static inline __m512i turbo_load16_epi32(const uint8_t * p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) p));
}

// the indices of values [16g, 16g + 16) of each type
static inline __m512i turbo4_index_avx512(const block_turbo4 * b, int g) {
    const __m512i bytes = turbo_load16_epi32(b->qs + 16 * (g % 2));
    return g < 2 ? _mm512_and_si512(bytes, _mm512_set1_epi32(15)) : _mm512_srli_epi32(bytes, 4);
}

static inline __m512i turbo2_index_avx512(const uint8_t * qs, int g) {
    return _mm512_and_si512(_mm512_srlv_epi32(turbo_load16_epi32(qs), _mm512_set1_epi32(2 * g)), _mm512_set1_epi32(3));
}

static inline __m512i turbo3_index_avx512(const block_turbo3 * b, int g) {
    // values 16g + l: high bit at qh[l % 8] bit (2g + l / 8)
    const __m128i qh = _mm_loadl_epi64((const __m128i *) b->qh);
    const __m512i hb = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(qh, qh));
    const __m512i shift = _mm512_add_epi32(_mm512_set1_epi32(2 * g),
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const __m512i high = _mm512_and_si512(_mm512_srlv_epi32(hb, shift), _mm512_set1_epi32(1));
    return _mm512_or_si512(turbo2_index_avx512(b->qs, g), _mm512_slli_epi32(high, 2));
}

#define TURBO_AVX512_KERNELS(NAME, INDEX)                                                   \
static void vec_dot_##NAME##_avx512(int64_t n, float * s, const block_##NAME * x, const float * y) {\
    const __m512 cb = _mm512_loadu_ps(NAME##_codebook_x16);                               \
    __m512 acc = _mm512_setzero_ps();                                                               \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float * yb = y + ib*QK_TURBO;                                                         \
        __m512 sum = _mm512_setzero_ps();                                                           \
        for (int g = 0; g < 4; ++g) {                                                               \
            const __m512 v = _mm512_permutexvar_ps(INDEX, cb);                                      \
            sum = _mm512_fmadd_ps(v, _mm512_loadu_ps(yb + 16*g), sum);                              \
        }                                                                                           \
        acc = _mm512_fmadd_ps(_mm512_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d)), sum, acc);            \
    }                                                                                               \
    *s = _mm512_reduce_add_ps(acc);                                                                 \
}                                                                                                   \
static void dequantize_##NAME##_avx512(int64_t n, const block_##NAME * x, float * y) {             \
    const __m512 cb = _mm512_loadu_ps(NAME##_codebook_x16);                               \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const __m512 d = _mm512_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d));                            \
        for (int g = 0; g < 4; ++g) {                                                               \
            _mm512_storeu_ps(y + ib*QK_TURBO + 16*g, _mm512_mul_ps(d, _mm512_permutexvar_ps(INDEX, cb))); \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
static void mad_##NAME##_avx512(int64_t n, float * y, const block_##NAME * x, float v) {           \
    const __m512 cb = _mm512_loadu_ps(NAME##_codebook_x16);                               \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const __m512 d = _mm512_set1_ps(v * GGML_CPU_FP16_TO_FP32(x[ib].d));                        \
        float * yb = y + ib*QK_TURBO;                                                               \
        for (int g = 0; g < 4; ++g) {                                                               \
            _mm512_storeu_ps(yb + 16*g, _mm512_fmadd_ps(d, _mm512_permutexvar_ps(INDEX, cb), _mm512_loadu_ps(yb + 16*g))); \
        }                                                                                           \
    }                                                                                               \
}

TURBO_AVX512_KERNELS(turbo4, turbo4_index_avx512(&x[ib], g))
TURBO_AVX512_KERNELS(turbo3, turbo3_index_avx512(&x[ib], g))
TURBO_AVX512_KERNELS(turbo2, turbo2_index_avx512(x[ib].qs, g))

#endif // TURBO_HAVE_AVX512

//
// NEON: 8 values per step; a 16-float codebook is a 64-byte table for vqtbl4q_u8, each lane
// fetching the 4 bytes of its float
//

#if TURBO_HAVE_NEON

// a 16-entry codebook (ggml-turbo-tables.h repeats shorter ones) as a 64-byte table
static inline uint8x16x4_t turbo_table_neon(const float * table) {
    uint8x16x4_t t;
    t.val[0] = vreinterpretq_u8_f32(vld1q_f32(table + 0));
    t.val[1] = vreinterpretq_u8_f32(vld1q_f32(table + 4));
    t.val[2] = vreinterpretq_u8_f32(vld1q_f32(table + 8));
    t.val[3] = vreinterpretq_u8_f32(vld1q_f32(table + 12));
    return t;
}

// codebook[idx] for 4 lanes: byte k of lane l is table byte 4 idx_l + k
static inline float32x4_t turbo_lookup_neon(uint32x4_t idx, uint8x16x4_t table) {
    static const uint8_t offsets[16] = { 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3 };
    const uint8x16_t bytes = vaddq_u8(vreinterpretq_u8_u32(vmulq_n_u32(idx, 0x04040404u)), vld1q_u8(offsets));
    return vreinterpretq_f32_u8(vqtbl4q_u8(table, bytes));
}

// the 8 indices [8g, 8g + 8) of a block, as bytes
static inline uint8x8_t turbo4_index_neon(const block_turbo4 * b, int g) {
    const uint8x8_t bytes = vld1_u8(b->qs + 8 * (g % 4));
    return g < 4 ? vand_u8(bytes, vdup_n_u8(15)) : vshr_n_u8(bytes, 4);
}

static inline uint8x8_t turbo2_index_neon(const uint8_t * qs, int g) {
    const uint8x8_t bytes = vld1_u8(qs + 8 * (g % 2));
    return vand_u8(vshl_u8(bytes, vdup_n_s8((int8_t) (-2 * (g / 2)))), vdup_n_u8(3));
}

static inline uint8x8_t turbo3_index_neon(const block_turbo3 * b, int g) {
    const uint8x8_t high = vand_u8(vshl_u8(vld1_u8(b->qh), vdup_n_s8((int8_t) -g)), vdup_n_u8(1));
    return vorr_u8(turbo2_index_neon(b->qs, g), vshl_n_u8(high, 2));
}

#define TURBO_NEON_KERNELS(NAME, INDEX)                                                     \
static void vec_dot_##NAME##_neon(int64_t n, float * s, const block_##NAME * x, const float * y) {  \
    const uint8x16x4_t table = turbo_table_neon(NAME##_codebook_x16);                           \
    float32x4_t acc = vdupq_n_f32(0.0f);                                                            \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float * yb = y + ib*QK_TURBO;                                                         \
        float32x4_t sum = vdupq_n_f32(0.0f);                                                        \
        for (int g = 0; g < 8; ++g) {                                                               \
            const uint16x8_t idx = vmovl_u8(INDEX);                                                 \
            sum = vfmaq_f32(sum, turbo_lookup_neon(vmovl_u16(vget_low_u16(idx)), table),  vld1q_f32(yb + 8*g));     \
            sum = vfmaq_f32(sum, turbo_lookup_neon(vmovl_u16(vget_high_u16(idx)), table), vld1q_f32(yb + 8*g + 4)); \
        }                                                                                           \
        acc = vfmaq_n_f32(acc, sum, GGML_CPU_FP16_TO_FP32(x[ib].d));                                \
    }                                                                                               \
    *s = vaddvq_f32(acc);                                                                           \
}                                                                                                   \
static void dequantize_##NAME##_neon(int64_t n, const block_##NAME * x, float * y) {               \
    const uint8x16x4_t table = turbo_table_neon(NAME##_codebook_x16);                           \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float d = GGML_CPU_FP16_TO_FP32(x[ib].d);                                             \
        for (int g = 0; g < 8; ++g) {                                                               \
            const uint16x8_t idx = vmovl_u8(INDEX);                                                 \
            vst1q_f32(y + ib*QK_TURBO + 8*g,     vmulq_n_f32(turbo_lookup_neon(vmovl_u16(vget_low_u16(idx)), table), d));  \
            vst1q_f32(y + ib*QK_TURBO + 8*g + 4, vmulq_n_f32(turbo_lookup_neon(vmovl_u16(vget_high_u16(idx)), table), d)); \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
static void mad_##NAME##_neon(int64_t n, float * y, const block_##NAME * x, float v) {             \
    const uint8x16x4_t table = turbo_table_neon(NAME##_codebook_x16);                           \
    for (int64_t ib = 0; ib < n / QK_TURBO; ++ib) {                                                 \
        const float d = v * GGML_CPU_FP16_TO_FP32(x[ib].d);                                         \
        float * yb = y + ib*QK_TURBO;                                                               \
        for (int g = 0; g < 8; ++g) {                                                               \
            const uint16x8_t idx = vmovl_u8(INDEX);                                                 \
            vst1q_f32(yb + 8*g,     vfmaq_n_f32(vld1q_f32(yb + 8*g),     turbo_lookup_neon(vmovl_u16(vget_low_u16(idx)), table), d));  \
            vst1q_f32(yb + 8*g + 4, vfmaq_n_f32(vld1q_f32(yb + 8*g + 4), turbo_lookup_neon(vmovl_u16(vget_high_u16(idx)), table), d)); \
        }                                                                                           \
    }                                                                                               \
}

TURBO_NEON_KERNELS(turbo4, turbo4_index_neon(&x[ib], g))
TURBO_NEON_KERNELS(turbo3, turbo3_index_neon(&x[ib], g))
TURBO_NEON_KERNELS(turbo2, turbo2_index_neon(x[ib].qs, g))

#endif // TURBO_HAVE_NEON

//
// dispatch
//

enum ggml_turbo_impl ggml_turbo_cpu_impl(void) {
#if TURBO_HAVE_AVX512
    return GGML_TURBO_IMPL_AVX512;
#elif TURBO_HAVE_AVX2
    return GGML_TURBO_IMPL_AVX2;
#elif TURBO_HAVE_NEON
    return GGML_TURBO_IMPL_NEON;
#else
    return GGML_TURBO_IMPL_SCALAR;
#endif
}

#define TURBO_DISPATCH(NAME)                                                                        \
static bool vec_dot_##NAME##_impl(enum ggml_turbo_impl impl, int64_t n, float * s, const void * x, const float * y) { \
    const block_##NAME * b = (const block_##NAME *) x;                                              \
    switch (impl) {                                                                                 \
        case GGML_TURBO_IMPL_SCALAR: vec_dot_##NAME##_scalar(n, s, b, y); return true;              \
        TURBO_CASE_AVX2(vec_dot_##NAME##_avx2(n, s, b, y))                                          \
        TURBO_CASE_AVX512(vec_dot_##NAME##_avx512(n, s, b, y))                                      \
        TURBO_CASE_NEON(vec_dot_##NAME##_neon(n, s, b, y))                                          \
        default: return false;                                                                      \
    }                                                                                               \
}                                                                                                   \
static bool dequantize_##NAME##_impl(enum ggml_turbo_impl impl, int64_t n, const void * x, float * y) { \
    const block_##NAME * b = (const block_##NAME *) x;                                              \
    switch (impl) {                                                                                 \
        case GGML_TURBO_IMPL_SCALAR: dequantize_##NAME##_scalar(n, b, y); return true;              \
        TURBO_CASE_AVX2(dequantize_##NAME##_avx2(n, b, y))                                          \
        TURBO_CASE_AVX512(dequantize_##NAME##_avx512(n, b, y))                                      \
        TURBO_CASE_NEON(dequantize_##NAME##_neon(n, b, y))                                          \
        default: return false;                                                                      \
    }                                                                                               \
}                                                                                                   \
void ggml_vec_dot_##NAME##_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, \
        const void * GGML_RESTRICT vy, size_t by, int nrc) {                                        \
    assert(nrc == 1);                                                                               \
    assert(n % QK_TURBO == 0);                                                                      \
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);                            \
    vec_dot_##NAME##_impl(ggml_turbo_cpu_impl(), n, s, vx, (const float *) vy);                     \
}                                                                                                   \
void ggml_turbo_dequantize_##NAME##_cpu(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n) { \
    dequantize_##NAME##_impl(ggml_turbo_cpu_impl(), n, x, y);                                       \
}                                                                                                   \
static bool mad_##NAME##_impl(enum ggml_turbo_impl impl, int64_t n, float * y, const void * x, float v) { \
    const block_##NAME * b = (const block_##NAME *) x;                                              \
    switch (impl) {                                                                                 \
        case GGML_TURBO_IMPL_SCALAR: mad_##NAME##_scalar(n, y, b, v); return true;                  \
        TURBO_CASE_AVX2(mad_##NAME##_avx2(n, y, b, v))                                              \
        TURBO_CASE_AVX512(mad_##NAME##_avx512(n, y, b, v))                                          \
        TURBO_CASE_NEON(mad_##NAME##_neon(n, y, b, v))                                              \
        default: return false;                                                                      \
    }                                                                                               \
}

#if TURBO_HAVE_AVX2
#define TURBO_CASE_AVX2(CALL) case GGML_TURBO_IMPL_AVX2: CALL; return true;
#else
#define TURBO_CASE_AVX2(CALL)
#endif
#if TURBO_HAVE_AVX512
#define TURBO_CASE_AVX512(CALL) case GGML_TURBO_IMPL_AVX512: CALL; return true;
#else
#define TURBO_CASE_AVX512(CALL)
#endif
#if TURBO_HAVE_NEON
#define TURBO_CASE_NEON(CALL) case GGML_TURBO_IMPL_NEON: CALL; return true;
#else
#define TURBO_CASE_NEON(CALL)
#endif

TURBO_DISPATCH(turbo2)
TURBO_DISPATCH(turbo3)
TURBO_DISPATCH(turbo4)

bool ggml_turbo_cpu_vec_dot(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, float * s, const void * x, const float * y) {
    switch (type) {
        case GGML_TYPE_TURBO2: return vec_dot_turbo2_impl(impl, n, s, x, y);
        case GGML_TYPE_TURBO3: return vec_dot_turbo3_impl(impl, n, s, x, y);
        case GGML_TYPE_TURBO4: return vec_dot_turbo4_impl(impl, n, s, x, y);
        default: return false;
    }
}

bool ggml_turbo_cpu_vec_mad(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, float * y, const void * x, float v) {
    switch (type) {
        case GGML_TYPE_TURBO2: return mad_turbo2_impl(impl, n, y, x, v);
        case GGML_TYPE_TURBO3: return mad_turbo3_impl(impl, n, y, x, v);
        case GGML_TYPE_TURBO4: return mad_turbo4_impl(impl, n, y, x, v);
        default: return false;
    }
}

void ggml_turbo_vec_mad_cpu(enum ggml_type type, int64_t n, float * GGML_RESTRICT y, const void * GGML_RESTRICT x, float v) {
    ggml_turbo_cpu_vec_mad(type, ggml_turbo_cpu_impl(), n, y, x, v);
}

bool ggml_turbo_cpu_dequantize(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, const void * x, float * y) {
    switch (type) {
        case GGML_TYPE_TURBO2: return dequantize_turbo2_impl(impl, n, x, y);
        case GGML_TYPE_TURBO3: return dequantize_turbo3_impl(impl, n, x, y);
        case GGML_TYPE_TURBO4: return dequantize_turbo4_impl(impl, n, x, y);
        default: return false;
    }
}
