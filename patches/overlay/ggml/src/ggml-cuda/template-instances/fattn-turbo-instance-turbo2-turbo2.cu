// Flash-attention decode kernel for K turbo2 and V turbo2 (TurboQuant; see fattn-turbo-decode.cuh).

#include "../fattn-turbo-decode.cuh"

DECL_FATTN_TURBO_DECODE_CASE( 64, GGML_TYPE_TURBO2, GGML_TYPE_TURBO2);
DECL_FATTN_TURBO_DECODE_CASE(128, GGML_TYPE_TURBO2, GGML_TYPE_TURBO2);
DECL_FATTN_TURBO_DECODE_CASE(256, GGML_TYPE_TURBO2, GGML_TYPE_TURBO2);
