// TurboQuant: the transform, the Hadamard rotation and the cache write in one kernel (turbo-fuse.cuh).

#include "turbo-fuse.cuh"

#include "fwht.cuh"
#include "turbo.cuh"

#include "ggml-impl.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

//
// kernels: a warp holds a rotation group of n_rot values, lane l holding values l + 32 i
//

// The orthonormal Walsh-Hadamard transform of the group (Sylvester order, as ggml_gen_hadamard
// builds it; the 1/sqrt(n_rot) is applied by the caller): strides below 32 pair lanes through
// shuffles, strides of 32 and above pair registers of one lane.
template <int n_rot>
static __device__ __forceinline__ void turbo_hadamard_warp(float (&v)[n_rot/WARP_SIZE], const int lane) {
    constexpr int per_lane = n_rot/WARP_SIZE;
#pragma unroll
    for (int h = 1; h < WARP_SIZE; h *= 2) {
#pragma unroll
        for (int i = 0; i < per_lane; ++i) {
            const float other = __shfl_xor_sync(0xFFFFFFFF, v[i], h, WARP_SIZE);
            v[i] = (lane & h) ? other - v[i] : v[i] + other;
        }
    }
#pragma unroll
    for (int h = 1; h < per_lane; h *= 2) {
#pragma unroll
        for (int i = 0; i < per_lane; ++i) {
            if ((i & h) == 0) {
                const float a = v[i];
                const float b = v[i + h];
                v[i]     = a + b;
                v[i + h] = a - b;
            }
        }
    }
}

// Loads group g of x, with ((x - mu) * scale) per channel and head when mu is given and x * scale
// when only scale is: the same operations, in the same order, as the unfused nodes.
template <int n_rot>
static __device__ __forceinline__ void turbo_load_group(
        float (&v)[n_rot/WARP_SIZE], const float * __restrict__ x, const float * __restrict__ mu,
        const float * __restrict__ scale, const int64_t g, const uint3 period, const float norm, const int lane) {
    const uint32_t first = (uint32_t) (g * n_rot);
    const uint32_t c0    = scale ? fastmodulo(first, period) : 0; // the group lies within one period
#pragma unroll
    for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
        const int j = i*WARP_SIZE + lane;
        float     y = x[first + j];
        if (mu) {
            y -= mu[c0 + j];
        }
        if (scale) {
            y *= scale[c0 + j];
        }
        v[i] = y * norm;
    }
}

// K and V: transform, rotate and quantize into the rows of the cache that idx names. A warp per
// 64-value block: each warp of a group rotates the whole group (a few shuffles) and quantizes its
// own block, so the blocks' scale searches, the long part, run side by side rather than in turn.
template <int n_rot, ggml_type type, typename idx_t>
static __global__ void __launch_bounds__(4*WARP_SIZE) k_turbo_rotate_set_rows(
        const float * __restrict__ x, const float * __restrict__ mu, const float * __restrict__ scale,
        const idx_t * __restrict__ idx, char * __restrict__ dst, const int64_t n_groups, const uint3 period,
        const float norm, const uint3 ne00, const uint3 ne01, const uint3 ne02, const uint3 ne11, const uint3 ne12,
        const int64_t s10, const int64_t s11, const int64_t s12, const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    constexpr int blocks_per_group = n_rot/QK_TURBO;
    const int64_t w    = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    const int64_t g    = w / blocks_per_group;
    const int     b    = w % blocks_per_group;
    const int     lane = threadIdx.x;
    if (g >= n_groups) {
        return; // the whole warp
    }

    ggml_cuda_pdl_sync();
    float v[n_rot/WARP_SIZE];
    turbo_load_group<n_rot>(v, x, mu, scale, g, period, norm, lane);
    turbo_hadamard_warp<n_rot>(v, lane);

    // block b is values 2b and 2b + 1 of every lane (selected without indexing the registers)
    float v0 = v[0];
    float v1 = v[1];
#pragma unroll
    for (int i = 1; i < blocks_per_group; ++i) {
        v0 = b == i ? v[2*i]     : v0;
        v1 = b == i ? v[2*i + 1] : v1;
    }

    // the group's place in SET_ROWS's (contiguous) source, and the cache row it goes to
    uint2 dm = fast_div_modulo((uint32_t) (g * n_rot), ne00);
    const uint32_t i00 = dm.y;
    dm = fast_div_modulo(dm.x, ne01);
    const uint32_t i01 = dm.y;
    dm = fast_div_modulo(dm.x, ne02);
    const uint32_t i02 = dm.y;
    const uint32_t i03 = dm.x;
    const int64_t  row = idx[i01*s10 + fastmodulo(i02, ne11)*s11 + fastmodulo(i03, ne12)*s12];

    constexpr size_t block_size = turbo_block_size<type>();
    char * out = dst + row*nb1 + i02*nb2 + i03*nb3 + (i00/QK_TURBO + b)*block_size;
    quantize_turbo_block_warp<type>(v0, v1, out, lane);
}

// Q: transform and rotate.
template <int n_rot>
static __global__ void __launch_bounds__(4*WARP_SIZE) k_turbo_rotate(
        const float * __restrict__ x, const float * __restrict__ scale, float * __restrict__ dst,
        const int64_t n_groups, const uint3 period, const float norm) {
    const int64_t g    = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    const int     lane = threadIdx.x;
    if (g >= n_groups) {
        return;
    }

    ggml_cuda_pdl_sync();
    float v[n_rot/WARP_SIZE];
    turbo_load_group<n_rot>(v, x, nullptr, scale, g, period, norm, lane);
    turbo_hadamard_warp<n_rot>(v, lane);
#pragma unroll
    for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
        dst[g*n_rot + i*WARP_SIZE + lane] = v[i];
    }
}

//
// launch
//

static constexpr int TURBO_FUSE_WARPS = 4; // warps per CUDA block

template <int n_rot, ggml_type type, typename idx_t>
static void turbo_rotate_set_rows_cuda(const ggml_cuda_turbo_chain & c, const int64_t n_groups, const uint3 period,
                                       cudaStream_t stream) {
    const ggml_tensor * sr   = c.end;
    const ggml_tensor * src0 = sr->src[0];
    const ggml_tensor * src1 = sr->src[1];
    const int64_t n_warps = n_groups*(n_rot/QK_TURBO);
    const dim3 block(WARP_SIZE, TURBO_FUSE_WARPS);
    const dim3 grid((n_warps + TURBO_FUSE_WARPS - 1)/TURBO_FUSE_WARPS);
    k_turbo_rotate_set_rows<n_rot, type, idx_t><<<grid, block, 0, stream>>>(
        (const float *) c.src->data, c.mu ? (const float *) c.mu->data : nullptr,
        c.scale ? (const float *) c.scale->data : nullptr, (const idx_t *) src1->data, (char *) sr->data,
        n_groups, period, 1.0f/sqrtf((float) n_rot),
        init_fastdiv_values((uint32_t) src0->ne[0]), init_fastdiv_values((uint32_t) src0->ne[1]),
        init_fastdiv_values((uint32_t) src0->ne[2]), init_fastdiv_values((uint32_t) src1->ne[1]),
        init_fastdiv_values((uint32_t) src1->ne[2]),
        src1->nb[0]/sizeof(idx_t), src1->nb[1]/sizeof(idx_t), src1->nb[2]/sizeof(idx_t),
        sr->nb[1], sr->nb[2], sr->nb[3]);
}

template <int n_rot, ggml_type type>
static void turbo_rotate_set_rows_cuda(const ggml_cuda_turbo_chain & c, const int64_t n_groups, const uint3 period,
                                       cudaStream_t stream) {
    if (c.end->src[1]->type == GGML_TYPE_I64) {
        turbo_rotate_set_rows_cuda<n_rot, type, int64_t>(c, n_groups, period, stream);
    } else {
        turbo_rotate_set_rows_cuda<n_rot, type, int32_t>(c, n_groups, period, stream);
    }
}

template <int n_rot>
static void turbo_fused_chain_cuda(const ggml_cuda_turbo_chain & c, cudaStream_t stream) {
    const int64_t n_groups = ggml_nelements(c.src)/n_rot;
    const uint3   period   = init_fastdiv_values(c.scale ? (uint32_t) (c.scale->ne[0]*c.scale->ne[1]) : 1u);

    if (c.end->op == GGML_OP_MUL_MAT) {
        const dim3 block(WARP_SIZE, TURBO_FUSE_WARPS);
        const dim3 grid((n_groups + TURBO_FUSE_WARPS - 1)/TURBO_FUSE_WARPS);
        k_turbo_rotate<n_rot><<<grid, block, 0, stream>>>(
            (const float *) c.src->data, (const float *) c.scale->data, (float *) c.end->data, n_groups, period,
            1.0f/sqrtf((float) n_rot));
        return;
    }
    switch (c.end->type) {
        case GGML_TYPE_TURBO4: turbo_rotate_set_rows_cuda<n_rot, GGML_TYPE_TURBO4>(c, n_groups, period, stream); break;
        case GGML_TYPE_TURBO3: turbo_rotate_set_rows_cuda<n_rot, GGML_TYPE_TURBO3>(c, n_groups, period, stream); break;
        case GGML_TYPE_TURBO2: turbo_rotate_set_rows_cuda<n_rot, GGML_TYPE_TURBO2>(c, n_groups, period, stream); break;
        default: GGML_ABORT("turbo fusion: not a turbo cache type");
    }
}

bool ggml_cuda_turbo_fusion_run(ggml_backend_cuda_context & ctx, const ggml_cuda_turbo_fusion & plan, ggml_tensor * node) {
    if (plan.chains.empty()) {
        return false;
    }
    const auto it = plan.chains.find(node);
    if (it == plan.chains.end()) {
        return false;
    }
    const ggml_cuda_turbo_chain & c = it->second;
    switch (c.n_rot) {
        case  64: turbo_fused_chain_cuda< 64>(c, ctx.stream()); break;
        case 128: turbo_fused_chain_cuda<128>(c, ctx.stream()); break;
        case 256: turbo_fused_chain_cuda<256>(c, ctx.stream()); break;
        default: GGML_ABORT("turbo fusion: rotation of %d values", c.n_rot);
    }
    CUDA_CHECK(cudaGetLastError());
    return true;
}

//
// the plan
//

// which chains to fuse: bit 0 the K cache write, bit 1 the V cache write, bit 2 the query
static int turbo_fusion_chains() {
    static const int chains = [] {
        const char * all   = getenv("GGML_CUDA_DISABLE_FUSION");
        const char * turbo = getenv("GGML_CUDA_TURBO_FUSION");
        return all && atoi(all) ? 0 : turbo ? atoi(turbo) & 7 : 7;
    }();
    return chains;
}

namespace {

struct turbo_graph {
    const ggml_cgraph * cgraph;
    std::unordered_map<const ggml_tensor *, int> index;

    explicit turbo_graph(const ggml_cgraph * cgraph) : cgraph(cgraph) {
        index.reserve(cgraph->n_nodes);
        for (int i = 0; i < cgraph->n_nodes; ++i) {
            index.emplace(cgraph->nodes[i], i);
        }
    }

    // position in the graph being evaluated; -1 for a leaf or a node of another split
    int pos(const ggml_tensor * t) const {
        const auto it = index.find(t);
        return it == index.end() ? -1 : it->second;
    }

    // a node of this graph that exactly one node reads and nobody asked to see: its work may move
    bool single_use(const ggml_tensor * t) const {
        const int i = pos(t);
        return i >= 0 && ggml_node_get_use_count(cgraph, i) == 1 && !(t->flags & GGML_TENSOR_FLAG_OUTPUT) &&
               (t->flags & GGML_TENSOR_FLAG_COMPUTE);
    }

    // where t's data was computed: the tensor its views start from
    static const ggml_tensor * root(const ggml_tensor * t) {
        while (t->view_src) {
            t = t->view_src;
        }
        return t;
    }

    // the tensor that t is a whole, contiguous reshape or view of (through any number of them);
    // with `only_reader`, each of them must be read by the next alone. Null if t is no such thing.
    const ggml_tensor * through_views(const ggml_tensor * t, const bool only_reader) const {
        while (t && (t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW)) {
            const ggml_tensor * s = t->src[0];
            if ((only_reader && !single_use(t)) || t->view_offs != 0 || !ggml_is_contiguous(t) ||
                ggml_nelements(t) != ggml_nelements(s)) {
                return nullptr;
            }
            t = s;
        }
        return t;
    }

    // the Hadamard product that upstream runs as a Walsh-Hadamard transform, of a size a warp can do
    static int hadamard_size(const ggml_tensor * t) {
        if (t->op != GGML_OP_MUL_MAT || !ggml_cuda_op_mul_mat_use_fwht(t) || t->src[1]->type != GGML_TYPE_F32) {
            return 0;
        }
        const int64_t n = t->src[0]->ne[0];
        return n == 64 || n == 128 || n == 256 ? (int) n : 0;
    }
};

// p holds one value per channel and head of x ([head size, heads, 1, 1], broadcast over tokens)
bool turbo_per_channel(const ggml_tensor * p, const ggml_tensor * x, const int n_rot) {
    return p->type == GGML_TYPE_F32 && ggml_is_contiguous(p) && p->ne[0] == x->ne[0] && p->ne[1] == x->ne[1] &&
           p->ne[2] == 1 && p->ne[3] == 1 && (p->ne[0]*p->ne[1]) % n_rot == 0;
}

bool turbo_plain_f32(const ggml_tensor * t, const ggml_tensor * like) {
    return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == ggml_nelements(like);
}

// K or V: [SUB -> MUL ->] hadamard MUL_MAT -> SET_ROWS into a turbo cache
bool turbo_plan_cache_write(const turbo_graph & g, ggml_tensor * sr, ggml_cuda_turbo_fusion & plan, const int chains) {
    if (sr->op != GGML_OP_SET_ROWS || !ggml_cuda_type_is_turbo(sr->type) || sr->src[0]->type != GGML_TYPE_F32 ||
        !ggml_is_contiguous(sr->src[0])) {
        return false;
    }
    const ggml_tensor * rot   = g.through_views(sr->src[0], true);
    const int           n_rot = rot ? turbo_graph::hadamard_size(rot) : 0;
    if (n_rot == 0 || !g.single_use(rot) || sr->src[0]->ne[0] % n_rot != 0) {
        return false;
    }

    ggml_cuda_turbo_chain c;
    c.end   = sr;
    c.n_rot = n_rot;
    std::vector<const ggml_tensor *> members = { rot, sr };

    const ggml_tensor * x = g.through_views(rot->src[1], true);
    if (x && x->op == GGML_OP_MUL && g.single_use(x) && x->src[0]->op == GGML_OP_SUB && g.single_use(x->src[0])) {
        const ggml_tensor * sub = x->src[0];
        if (!turbo_plain_f32(sub->src[0], rot) || !ggml_are_same_shape(sub->src[0], sub) ||
            !ggml_are_same_shape(sub, x) || !turbo_per_channel(sub->src[1], sub, n_rot) ||
            !turbo_per_channel(x->src[1], sub, n_rot)) {
            return false;
        }
        if (!(chains & 1)) {
            return false;
        }
        c.src   = sub->src[0];
        c.mu    = sub->src[1];
        c.scale = x->src[1];
        members.push_back(sub);
        members.push_back(x);
    } else {
        if (!(chains & 2)) {
            return false;
        }
        x = g.through_views(rot->src[1], false);
        if (!x || !turbo_plain_f32(x, rot)) {
            return false;
        }
        c.src = x;
    }

    // the chain runs at its first node, so every input must be there by then, and the nodes
    // between may neither read nor write the cache it writes early
    int first = g.pos(sr);
    for (const ggml_tensor * m : members) {
        first = std::min(first, g.pos(m));
    }
    const int last = g.pos(sr);
    for (const ggml_tensor * in : { c.src, c.mu, c.scale, (const ggml_tensor *) sr->src[1] }) {
        if (in && g.pos(turbo_graph::root(in)) >= first) {
            return false;
        }
    }
    const ggml_tensor * cache = turbo_graph::root(sr);
    for (int i = first + 1; i < last; ++i) {
        const ggml_tensor * n = g.cgraph->nodes[i];
        if (ggml_op_is_empty(n->op) || std::find(members.begin(), members.end(), n) != members.end()) {
            continue;
        }
        if (turbo_graph::root(n) == cache) {
            return false;
        }
        for (const ggml_tensor * s : n->src) {
            if (s && turbo_graph::root(s) == cache) {
                return false;
            }
        }
    }

    const ggml_tensor * start = g.cgraph->nodes[first];
    for (const ggml_tensor * m : members) {
        if (m != start) {
            plan.skipped.insert(m);
        }
    }
    plan.chains.emplace(start, c);
    return true;
}

// Q: MUL -> hadamard MUL_MAT, with nothing but views between them
void turbo_plan_query(const turbo_graph & g, ggml_tensor * rot, ggml_cuda_turbo_fusion & plan) {
    const int n_rot = turbo_graph::hadamard_size(rot);
    if (n_rot == 0 || plan.skipped.count(rot) || plan.chains.count(rot) || !ggml_is_contiguous(rot)) {
        return;
    }
    const ggml_tensor * x = g.through_views(rot->src[1], true);
    if (!x || x->op != GGML_OP_MUL || !g.single_use(x) || !turbo_plain_f32(x->src[0], rot) ||
        !ggml_are_same_shape(x->src[0], x) || !turbo_per_channel(x->src[1], x, n_rot)) {
        return;
    }
    for (int i = g.pos(x) + 1; i < g.pos(rot); ++i) {
        if (!ggml_op_is_empty(g.cgraph->nodes[i]->op)) {
            return;
        }
    }
    // each warp reads its group before writing it, so the output may be the input itself, but not
    // a shifted copy of it
    const char * in  = (const char *) x->src[0]->data;
    const char * out = (const char *) rot->data;
    if (in != out && in < out + ggml_nbytes(rot) && out < in + ggml_nbytes(x->src[0])) {
        return;
    }

    ggml_cuda_turbo_chain c;
    c.end   = rot;
    c.src   = x->src[0];
    c.scale = x->src[1];
    c.n_rot = n_rot;
    plan.skipped.insert(rot);
    plan.chains.emplace(x, c);
}

} // namespace

void ggml_cuda_turbo_fusion_plan(const ggml_cgraph * cgraph, ggml_cuda_turbo_fusion & plan) {
    plan.chains.clear();
    plan.skipped.clear();
    const int chains = turbo_fusion_chains();
    if (chains == 0) {
        return;
    }
    bool turbo = false;
    for (int i = 0; i < cgraph->n_nodes && !turbo; ++i) {
        turbo = cgraph->nodes[i]->op == GGML_OP_SET_ROWS && ggml_cuda_type_is_turbo(cgraph->nodes[i]->type);
    }
    if (!turbo) {
        return; // no turbo cache written: nothing of this kind to fuse
    }

    const turbo_graph g(cgraph);
    for (int i = 0; i < cgraph->n_nodes && (chains & 3); ++i) {
        turbo_plan_cache_write(g, cgraph->nodes[i], plan, chains);
    }
    for (int i = 0; i < cgraph->n_nodes && (chains & 4); ++i) {
        turbo_plan_query(g, cgraph->nodes[i], plan);
    }
    // backend-check reads this line to know that the chains ran fused
    GGML_LOG_DEBUG("%s: %zu TurboQuant chains fused\n", __func__, plan.chains.size());
}
