// CPU kernels of the TurboQuant KV-cache types (turbo.c), for the CPU backend's type traits.

#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

void quantize_row_turbo2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo3(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// dot product of a quantized row with an f32 row (the query stays in f32)
void ggml_vec_dot_turbo2_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo3_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo4_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// dequantization with the SIMD path of this build
void ggml_turbo_dequantize_turbo2_cpu(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n);
void ggml_turbo_dequantize_turbo3_cpu(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n);
void ggml_turbo_dequantize_turbo4_cpu(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t n);

// y += v * dequantize(x): flash attention's value accumulation, fused
void ggml_turbo_vec_mad_cpu(enum ggml_type type, int64_t n, float * GGML_RESTRICT y, const void * GGML_RESTRICT x, float v);

#ifdef __cplusplus
}
#endif
