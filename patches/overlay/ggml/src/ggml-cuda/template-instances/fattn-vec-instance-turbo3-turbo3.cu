// Flash-attention vector kernel for K turbo3 and V turbo3 (TurboQuant; see fattn-turbo.cuh).

#include "../fattn-vec.cuh"

DECL_FATTN_VEC_CASE( 64, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
DECL_FATTN_VEC_CASE(128, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
DECL_FATTN_VEC_CASE(256, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
