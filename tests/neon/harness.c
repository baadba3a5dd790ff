// Runs the turbo CPU kernels compiled for aarch64 (under qemu on other machines) and checks that
// the NEON paths give the scalar paths' results. Built and run by tests/neon.rs.

#include "ggml-turbo.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

// the few ggml functions the kernels reach, without the rest of ggml
size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    const size_t block = type == GGML_TYPE_TURBO4 ? 34 : type == GGML_TYPE_TURBO3 ? 26 : 18;
    return (size_t) (ne / 64) * block;
}
const char * ggml_type_name(enum ggml_type type) { (void) type; return "turbo"; }
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    (void) fmt;
    fprintf(stderr, "abort at %s:%d\n", file, line);
    abort();
}

static uint64_t state = 42;
static float gaussian(void) {
    float s = 0.0f;
    for (int i = 0; i < 12; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        s += (float) (state >> 40) / (float) (1ull << 24);
    }
    return s - 6.0f;
}

int main(void) {
    enum { N = 64 * 64 };
    static float x[N], y[N], a[N], b[N];
    static unsigned char q[N];
    for (int i = 0; i < N; ++i) {
        x[i] = gaussian() * (1.0f + (float) (i / 64 % 7));
        y[i] = gaussian();
    }
    x[5] = NAN;
    x[77] = INFINITY;

    const enum ggml_type types[3] = { GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4 };
    int failures = 0;
    if (ggml_turbo_cpu_impl() != GGML_TURBO_IMPL_NEON) {
        printf("FAIL: the NEON path is not the one chosen\n");
        return 1;
    }
    for (int t = 0; t < 3; ++t) {
        ggml_turbo_quantize_row_ref(types[t], x, q, N);
        float s_scalar = 0.0f, s_neon = 0.0f, magnitude = 0.0f;
        ggml_turbo_cpu_vec_dot(types[t], GGML_TURBO_IMPL_SCALAR, N, &s_scalar, q, y);
        ggml_turbo_cpu_vec_dot(types[t], GGML_TURBO_IMPL_NEON, N, &s_neon, q, y);
        ggml_turbo_cpu_dequantize(types[t], GGML_TURBO_IMPL_SCALAR, N, q, a);
        ggml_turbo_cpu_dequantize(types[t], GGML_TURBO_IMPL_NEON, N, q, b);
        int mismatched = 0;
        for (int i = 0; i < N; ++i) {
            mismatched += a[i] != b[i];
            magnitude += fabsf(a[i] * y[i]);
        }
        const int dot_ok = fabsf(s_scalar - s_neon) <= 1e-5f * magnitude;
        printf("type %d: dot scalar %.6f neon %.6f %s; dequantize mismatches %d\n", types[t], s_scalar, s_neon,
               dot_ok ? "ok" : "DIFFER", mismatched);
        failures += !dot_ok || mismatched;
    }
    printf(failures ? "FAIL\n" : "PASS\n");
    return failures != 0;
}
