// TurboQuant cache types: the calibrated transform and upstream's Hadamard rotation, done inside
// the cache write and the query rotation on the GPU instead of as kernels of their own.
//
// The graph every backend runs (llama-turbo.cpp, llama-graph.cpp) turns each layer's new keys,
// values and queries into
//
//   K: [ROPE ->] SUB(k, mu) -> MUL(., scale) -> MUL_MAT(hadamard, .) -> SET_ROWS(turbo cache)
//   V:                                         MUL_MAT(hadamard, v) -> SET_ROWS(turbo cache)
//   Q: [ROPE ->]              MUL(q, q_inv) -> MUL_MAT(hadamard, .) -> FLASH_ATTN_EXT
//
// (with reshapes and views between them). The RoPE joins the chain when it turns whole heads in
// ggml's normal or NeoX order and upstream does not already fuse it with the RMS norm before it.
// On the GPU each of those nodes is a launch of a kernel that touches a few KiB while decoding, so
// together they cost more than the cache write itself.
// Here a plan, made once per graph evaluation, finds these chains and runs each as one kernel:
// for K and V the transform, the rotation and the quantization in one warp per 64-value block,
// for Q the transform and the rotation. A layer's chains then share one launch, at the first node
// of the last of them, where the memory the earlier ones read and write is shown to be untouched
// by the nodes in between. The CPU graph and the results are unchanged; only the launches go.
//
// A chain is fused only when every intermediate node is in the graph being evaluated and has no
// other consumer, so an eval callback that reads one of them, or a graph split between two
// of them, keeps the unfused path. GGML_CUDA_DISABLE_FUSION=1 or GGML_CUDA_TURBO_FUSION=0
// turns it off, GGML_CUDA_TURBO_FUSION=1, 2 or 4 fuses only the K, V or Q chains (sums combine
// them), each in a launch of its own; adding 8 shares the launches and 16 lets the RoPE join
// (the default is 31), to compare the paths in one build.

#pragma once

#include "common.cuh"

#include <unordered_map>
#include <unordered_set>
#include <vector>

struct ggml_cuda_turbo_chain {
    const ggml_tensor * end   = nullptr; // SET_ROWS into a turbo cache, or the query's MUL_MAT
    const ggml_tensor * src   = nullptr; // the values before the chain (f32; contiguous unless rope reads it)
    const ggml_tensor * rope  = nullptr; // the chain's first node, a ROPE of src, or null
    const ggml_tensor * mu    = nullptr; // subtracted per channel and head, or null
    const ggml_tensor * scale = nullptr; // multiplied per channel and head, or null
    int                 n_rot = 0;       // the Hadamard rotation's size
};

struct ggml_cuda_turbo_fusion {
    // the chains, by the node where they run as one launch: the first node of the last of them,
    // where their inputs are certain to be intact (a later node may reuse the memory of an input
    // whose last reader was a chain's first node)
    std::unordered_map<const ggml_tensor *, std::vector<ggml_cuda_turbo_chain>> runs;
    // the chains' other nodes, whose work is done where they run
    std::unordered_set<const ggml_tensor *> skipped;

    bool skips(const ggml_tensor * node) const {
        return !skipped.empty() && skipped.count(node) != 0;
    }
};

// Finds the chains of cgraph; leaves the plan empty when fusion is turned off.
void ggml_cuda_turbo_fusion_plan(const ggml_cgraph * cgraph, ggml_cuda_turbo_fusion & plan);

// Runs the chains that run at node; false when none does (then node runs as usual).
bool ggml_cuda_turbo_fusion_run(ggml_backend_cuda_context & ctx, const ggml_cuda_turbo_fusion & plan, ggml_tensor * node);
