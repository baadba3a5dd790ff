// Flash-attention vector kernel for K turbo4 and V turbo4 (TurboQuant; see fattn-turbo.cuh).

#include "../fattn-vec.cuh"

DECL_FATTN_VEC_CASE( 64, GGML_TYPE_TURBO4, GGML_TYPE_TURBO4);
DECL_FATTN_VEC_CASE(128, GGML_TYPE_TURBO4, GGML_TYPE_TURBO4);
DECL_FATTN_VEC_CASE(256, GGML_TYPE_TURBO4, GGML_TYPE_TURBO4);
