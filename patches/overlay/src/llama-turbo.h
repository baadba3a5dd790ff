// TurboQuant KV cache: the calibrated transform of Q and K that the turbo cache types use.
//
// Attention scores are q·k. For any per-layer, per-KV-head vector mu and positive per-channel
// scale s, storing k' = (k - mu) * s and attending with q' = q / s changes every score of a
// query by the same amount, -q·mu, which softmax ignores: the attention is exactly the same. But
// the quantization error is not. Keys share a large common component (40-70% of their energy in
// the models we measured), and their channels are out of balance with the queries' channels;
// subtracting the mean and choosing s = sqrt(rms(q) / rms(k - mu)) per channel minimises the
// score error that a given key error causes (for errors spread evenly over channels, as the
// Hadamard rotation after this transform makes them). mu and s are measured once per context,
// on a short built-in text (llama_context::turbo_calibrate), and averaged over every position of
// the context: RoPE turns a key's channel pairs by its position, so statistics taken at the
// first few hundred positions alone would be wrong for distant keys.

#pragma once

#include "ggml.h"

// Applies the transform of one layer: params is [n_embd_head_k, 2*n_head_kv + n_head] f32 with
// columns mu (per KV head), s (per KV head) and 1/s mapped to each query head.
// k may be null (layers that reuse another layer's cache only transform q).
void llama_turbo_transform(ggml_context * ctx, ggml_tensor * params, ggml_tensor ** q, ggml_tensor ** k);

// Adds a layer's Q, V and K projections (any may be null) to the graph ahead of the transforms,
// so that the transforms, rotations and cache writes that follow form unbroken chains, which
// ggml-cuda runs in one launch per layer (turbo-fuse.cuh). A RoPE stays after its projection, as
// the first node of its chain, unless it turns the output of a multiplication (an RMS norm's
// weight: ggml-cuda runs that RoPE with the norm).
void llama_turbo_expand_projections(ggml_cgraph * gf, ggml_tensor * q, ggml_tensor * v, ggml_tensor * k);

// Whether a cache type is one of the TurboQuant types.
bool llama_turbo_is_turbo_type(ggml_type type);
