// TurboQuant KV cache: what a context measured for its turbo cache types, for tools that study
// the cache (the `turboquant fidelity` command reproduces the cache's scores with it).

#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

    // The calibrated transform of layer il: mu and scale, each n_head_kv * n_embd_head_k floats
    // (KV head by KV head). K is stored as (k - mu) * scale and Q enters attention as q / scale,
    // both then rotated by the Hadamard matrix llama.cpp applies to quantized caches.
    // Returns false when the layer has no turbo cache (or n is not the layer's size).
    LLAMA_API bool llama_turbo_layer_params(struct llama_context * ctx, int32_t il, float * mu, float * scale, int64_t n);

    // The seed of the random signs that make the turbo cache's Hadamard rotation a randomized one,
    // for every context created after the call (0, the default, is the built-in pattern). Studies
    // of the variance over rotations set it; the cache's quality is otherwise the same for any.
    LLAMA_API void llama_turbo_set_seed(uint32_t seed);

    // The text the turbo cache types measure their mean and channel scales on, for every context
    // created after the call, in place of the built-in English paragraph; NULL or "" restores
    // that paragraph. The text is copied. It is tokenized as a prompt (BOS where the model adds
    // one, a chat template's special-token text as those tokens), and its first tokens are used,
    // at most the context's size per sequence and at most 2048.
    LLAMA_API void llama_turbo_set_calibration_text(const char * text);

#ifdef __cplusplus
}
#endif
