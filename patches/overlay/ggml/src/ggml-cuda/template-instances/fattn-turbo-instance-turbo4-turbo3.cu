// Flash-attention decode kernel for K turbo4 and V turbo3 (TurboQuant; see fattn-turbo-decode.cuh).

#include "../fattn-turbo-decode.cuh"

DECL_FATTN_TURBO_DECODE_CASE( 64, GGML_TYPE_TURBO4, GGML_TYPE_TURBO3);
DECL_FATTN_TURBO_DECODE_CASE(128, GGML_TYPE_TURBO4, GGML_TYPE_TURBO3);
DECL_FATTN_TURBO_DECODE_CASE(256, GGML_TYPE_TURBO4, GGML_TYPE_TURBO3);
