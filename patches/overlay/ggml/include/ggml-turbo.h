// TurboQuant KV-cache types (turbo2, turbo3, turbo4): entry points beyond ggml's type traits,
// used by tests that compare the kernels with the Rust reference.

#pragma once

#include "ggml.h"
#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

    // Reference quantizer and dequantizer (ggml-base); n is a multiple of 64.
    GGML_API void ggml_turbo_quantize_row_ref(enum ggml_type type, const float * x, void * y, int64_t n);
    GGML_API void ggml_turbo_dequantize_row(enum ggml_type type, const void * x, float * y, int64_t n);

    // The CPU kernels' implementations, by name, so that tests can hold each SIMD path against the
    // scalar one. Returns false when `impl` was not compiled into this build.
    enum ggml_turbo_impl {
        GGML_TURBO_IMPL_SCALAR = 0,
        GGML_TURBO_IMPL_AVX2   = 1,
        GGML_TURBO_IMPL_AVX512 = 2,
        GGML_TURBO_IMPL_NEON   = 3,
    };

    // s = dot(x (n values of `type`), y (n floats))
    GGML_BACKEND_API bool ggml_turbo_cpu_vec_dot(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, float * s, const void * x, const float * y);
    // y = dequantize(x)
    GGML_BACKEND_API bool ggml_turbo_cpu_dequantize(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, const void * x, float * y);
    // y += v * dequantize(x)
    GGML_BACKEND_API bool ggml_turbo_cpu_vec_mad(enum ggml_type type, enum ggml_turbo_impl impl, int64_t n, float * y, const void * x, float v);
    // The implementation the CPU backend uses.
    GGML_BACKEND_API enum ggml_turbo_impl ggml_turbo_cpu_impl(void);

#ifdef __cplusplus
}
#endif
