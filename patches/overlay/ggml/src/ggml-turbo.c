// TurboQuant KV-cache types turbo2/turbo3/turbo4: the reference quantizer and dequantizer.
//
// This is the C twin of crates/turboquant/src/block.rs and must give the same codes: the same
// operations in the same order, in f32. The quantizer tries 16 scales between 0.5 and 1.1 times
// the block's largest magnitude; for each, every value takes its nearest level and the
// least-squares scale for those levels is computed; the candidate that explains the most energy
// wins, and the values are re-coded against the scale as stored in fp16.

#define GGML_COMMON_DECL_C
#include "ggml-turbo-common.h"

#include "ggml-turbo.h"
#include "ggml-turbo-tables.h"
#include "ggml-impl.h"
#include "ggml-turbo-quants.h"

#include <math.h>
#include <string.h>

#define TURBO_FP16_MAX 65504.0f

// Index of the nearest level: the number of boundaries strictly below y.
static inline int turbo_nearest(float y, const float * boundaries, int n_boundaries) {
    int idx = 0;
    for (int k = 0; k < n_boundaries; ++k) {
        idx += y > boundaries[k];
    }
    return idx;
}

// Quantizes 64 values: writes the fp16 scale and one index per value.
static void turbo_quantize_block(const float * x, const float * codebook, const float * boundaries,
        int levels, ggml_half * d_out, uint8_t * idx) {
    float v[QK_TURBO];
    float amax = 0.0f;
    for (int i = 0; i < QK_TURBO; ++i) {
        v[i] = isfinite(x[i]) ? x[i] : 0.0f;
        const float a = fabsf(v[i]);
        if (a > amax) {
            amax = a;
        }
    }

    const int zero_index = levels / 2;
    if (!(amax >= TURBO_MIN_MAGNITUDE)) {
        *d_out = GGML_FP32_TO_FP16(0.0f);
        memset(idx, zero_index, QK_TURBO);
        return;
    }

    // candidates are compared on y = v / amax, in [-1, 1], so no sum can overflow
    const float inv_amax = 1.0f / amax;
    float y[QK_TURBO];
    for (int i = 0; i < QK_TURBO; ++i) {
        y[i] = v[i] * inv_amax;
    }

    float best_gain  = -1.0f;
    float best_scale = 0.0f;
    for (int j = 0; j < TURBO_SCALE_CANDIDATES; ++j) {
        const float inv = turbo_scale_grid_inv[j];
        float sxc = 0.0f;
        float scc = 0.0f;
        for (int i = 0; i < QK_TURBO; ++i) {
            const float c = codebook[turbo_nearest(y[i] * inv, boundaries, levels - 1)];
            sxc += y[i] * c;
            scc += c * c;
        }
        const float gain = sxc * sxc / scc;
        if (gain > best_gain) {
            best_gain  = gain;
            best_scale = sxc / scc;
        }
    }

    const float d = fminf(amax * best_scale, TURBO_FP16_MAX);
    *d_out = GGML_FP32_TO_FP16(d);
    const float df = GGML_FP16_TO_FP32(*d_out);
    if (!(df > 0.0f)) {
        *d_out = GGML_FP32_TO_FP16(0.0f);
        memset(idx, zero_index, QK_TURBO);
        return;
    }
    const float inv_d = 1.0f / df;
    for (int i = 0; i < QK_TURBO; ++i) {
        idx[i] = (uint8_t) turbo_nearest(v[i] * inv_d, boundaries, levels - 1);
    }
}

void quantize_row_turbo4_ref(const float * GGML_RESTRICT x, block_turbo4 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO == 0);
    uint8_t idx[QK_TURBO];
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        turbo_quantize_block(x + b*QK_TURBO, turbo4_codebook, turbo4_boundaries, 16, &y[b].d, idx);
        for (int j = 0; j < QK_TURBO/2; ++j) {
            y[b].qs[j] = idx[j] | (idx[j + 32] << 4);
        }
    }
}

static void pack_2bit(const uint8_t * idx, uint8_t * qs) {
    for (int j = 0; j < QK_TURBO/4; ++j) {
        qs[j] = (idx[j] & 3) | ((idx[j + 16] & 3) << 2) | ((idx[j + 32] & 3) << 4) | ((idx[j + 48] & 3) << 6);
    }
}

void quantize_row_turbo3_ref(const float * GGML_RESTRICT x, block_turbo3 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO == 0);
    uint8_t idx[QK_TURBO];
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        turbo_quantize_block(x + b*QK_TURBO, turbo3_codebook, turbo3_boundaries, 8, &y[b].d, idx);
        pack_2bit(idx, y[b].qs);
        for (int j = 0; j < QK_TURBO/8; ++j) {
            uint8_t h = 0;
            for (int t = 0; t < 8; ++t) {
                h |= ((idx[j + 8*t] >> 2) & 1) << t;
            }
            y[b].qh[j] = h;
        }
    }
}

void quantize_row_turbo2_ref(const float * GGML_RESTRICT x, block_turbo2 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_TURBO == 0);
    uint8_t idx[QK_TURBO];
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        turbo_quantize_block(x + b*QK_TURBO, turbo2_codebook, turbo2_boundaries, 4, &y[b].d, idx);
        pack_2bit(idx, y[b].qs);
    }
}

void dequantize_row_turbo4(const block_turbo4 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        const float d = GGML_FP16_TO_FP32(x[b].d);
        for (int j = 0; j < QK_TURBO/2; ++j) {
            y[b*QK_TURBO + j]      = d * turbo4_codebook[x[b].qs[j] & 15];
            y[b*QK_TURBO + j + 32] = d * turbo4_codebook[x[b].qs[j] >> 4];
        }
    }
}

void dequantize_row_turbo3(const block_turbo3 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        const float d = GGML_FP16_TO_FP32(x[b].d);
        for (int i = 0; i < QK_TURBO; ++i) {
            const int low  = (x[b].qs[i % 16] >> (2 * (i / 16))) & 3;
            const int high = (x[b].qh[i % 8] >> (i / 8)) & 1;
            y[b*QK_TURBO + i] = d * turbo3_codebook[low | (high << 2)];
        }
    }
}

void dequantize_row_turbo2(const block_turbo2 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    for (int64_t b = 0; b < k / QK_TURBO; ++b) {
        const float d = GGML_FP16_TO_FP32(x[b].d);
        for (int i = 0; i < QK_TURBO; ++i) {
            y[b*QK_TURBO + i] = d * turbo2_codebook[(x[b].qs[i % 16] >> (2 * (i / 16))) & 3];
        }
    }
}

// ggml_quantize_chunk entry points (no importance matrix: the cache is written token by token)
#define TURBO_QUANTIZE_CHUNK(NAME)                                                                   \
size_t quantize_##NAME(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrow,     \
        int64_t n_per_row, const float * imatrix) {                                                  \
    GGML_UNUSED(imatrix);                                                                            \
    const size_t row_size = ggml_row_size(GGML_TYPE_##NAME##_UPPER, n_per_row);                      \
    for (int64_t row = 0; row < nrow; ++row) {                                                       \
        quantize_row_##NAME##_ref(src + row*n_per_row, (block_##NAME *)((char *) dst + row*row_size), n_per_row); \
    }                                                                                                \
    return nrow * row_size;                                                                          \
}

#define GGML_TYPE_turbo2_UPPER GGML_TYPE_TURBO2
#define GGML_TYPE_turbo3_UPPER GGML_TYPE_TURBO3
#define GGML_TYPE_turbo4_UPPER GGML_TYPE_TURBO4
TURBO_QUANTIZE_CHUNK(turbo2)
TURBO_QUANTIZE_CHUNK(turbo3)
TURBO_QUANTIZE_CHUNK(turbo4)

void ggml_turbo_quantize_row_ref(enum ggml_type type, const float * x, void * y, int64_t n) {
    switch (type) {
        case GGML_TYPE_TURBO2: quantize_row_turbo2_ref(x, (block_turbo2 *) y, n); break;
        case GGML_TYPE_TURBO3: quantize_row_turbo3_ref(x, (block_turbo3 *) y, n); break;
        case GGML_TYPE_TURBO4: quantize_row_turbo4_ref(x, (block_turbo4 *) y, n); break;
        default: GGML_ABORT("%s is not a turbo type", ggml_type_name(type));
    }
}

void ggml_turbo_dequantize_row(enum ggml_type type, const void * x, float * y, int64_t n) {
    switch (type) {
        case GGML_TYPE_TURBO2: dequantize_row_turbo2((const block_turbo2 *) x, y, n); break;
        case GGML_TYPE_TURBO3: dequantize_row_turbo3((const block_turbo3 *) x, y, n); break;
        case GGML_TYPE_TURBO4: dequantize_row_turbo4((const block_turbo4 *) x, y, n); break;
        default: GGML_ABORT("%s is not a turbo type", ggml_type_name(type));
    }
}
