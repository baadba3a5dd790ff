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
        float (&v)[n_rot/WARP_SIZE], const float * GGML_CUDA_RESTRICT x, const float * GGML_CUDA_RESTRICT mu,
        const float * GGML_CUDA_RESTRICT scale, const int64_t g, const uint3 period, const float norm, const int lane) {
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

// One chain as the kernel runs it. The chains of a layer (K, V and Q) run in one launch: each is
// a few KiB while decoding, so a launch of its own costs more than its work.
struct turbo_fused_job {
    const float * x;     // the values before the transform (contiguous)
    const float * mu;    // subtracted per channel and head, or null
    const float * scale; // multiplied per channel and head, or null
    const void  * idx;   // SET_ROWS's row indices (int32 or int64); null for the query
    char        * dst;   // the turbo cache, or the rotated query (f32)
    int64_t       n_warps; // a warp per 64-value block of the cache, or per group of the query
    uint3         period;
    int           n_rot;   // the Hadamard rotation's size
    float         norm;    // 1/sqrt(n_rot), as the CPU rounds it
    ggml_type     type;    // dst's type
    bool          idx_i64;
    uint3         ne00, ne01, ne02, ne11, ne12; // SET_ROWS's source and index shapes
    int64_t       s10, s11, s12;                // index strides, in indices
    int64_t       nb1, nb2, nb3;                // cache strides, in bytes
};

static constexpr int TURBO_FUSE_MAX_JOBS = 3; // K, V and Q of one layer

struct turbo_fused_jobs {
    turbo_fused_job job[TURBO_FUSE_MAX_JOBS];
    int             n;
};

// K and V: transform, rotate and quantize into the rows of the cache that idx names. A warp per
// 64-value block: each warp of a group rotates the whole group (a few shuffles) and quantizes its
// own block, so the blocks' scale searches, the long part, run side by side rather than in turn.
template <int n_rot, ggml_type type>
static __device__ __forceinline__ void turbo_fused_cache_write(const turbo_fused_job & job, const int64_t w,
                                                               const int lane) {
    constexpr int blocks_per_group = n_rot/QK_TURBO;
    const int64_t g = w / blocks_per_group;
    const int     b = w % blocks_per_group;

    float v[n_rot/WARP_SIZE];
    turbo_load_group<n_rot>(v, job.x, job.mu, job.scale, g, job.period, job.norm, lane);
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
    uint2 dm = fast_div_modulo((uint32_t) (g * n_rot), job.ne00);
    const uint32_t i00 = dm.y;
    dm = fast_div_modulo(dm.x, job.ne01);
    const uint32_t i01 = dm.y;
    dm = fast_div_modulo(dm.x, job.ne02);
    const uint32_t i02 = dm.y;
    const uint32_t i03 = dm.x;
    const int64_t  i   = i01*job.s10 + fastmodulo(i02, job.ne11)*job.s11 + fastmodulo(i03, job.ne12)*job.s12;
    const int64_t  row = job.idx_i64 ? ((const int64_t *) job.idx)[i] : (int64_t) ((const int32_t *) job.idx)[i];

    constexpr size_t block_size = turbo_block_size<type>();
    char * out = job.dst + row*job.nb1 + i02*job.nb2 + i03*job.nb3 + (i00/QK_TURBO + b)*block_size;
    quantize_turbo_block_warp<type>(v0, v1, out, lane);
}

// Q: transform and rotate. Each warp reads its group before writing it, so dst may be x itself.
template <int n_rot>
static __device__ __forceinline__ void turbo_fused_query(const turbo_fused_job & job, const int64_t g, const int lane) {
    float v[n_rot/WARP_SIZE];
    turbo_load_group<n_rot>(v, job.x, nullptr, job.scale, g, job.period, job.norm, lane);
    turbo_hadamard_warp<n_rot>(v, lane);
    float * dst = (float *) job.dst;
#pragma unroll
    for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
        dst[g*n_rot + i*WARP_SIZE + lane] = v[i];
    }
}

// One kind of job a kernel instance can run: a rotation size and dst's type (F32: the query).
template <int n_rot_, ggml_type type_>
struct turbo_fused_path {
    static constexpr int       n_rot = n_rot_;
    static constexpr ggml_type type  = type_;
};

// Runs the job if it is of the kind of path.
template <typename path>
static __device__ __forceinline__ bool turbo_fused_try(const turbo_fused_job & job, const int64_t w, const int lane) {
    if (job.n_rot != path::n_rot || job.type != path::type) {
        return false;
    }
    if constexpr (path::type == GGML_TYPE_F32) {
        turbo_fused_query<path::n_rot>(job, w, lane);
    } else {
        turbo_fused_cache_write<path::n_rot, path::type>(job, w, lane);
    }
    return true;
}

// The warps are the jobs' warps one after another; each finds its job and runs the path of its
// kind. An instance holds only the paths a layer of one cache type needs: the warps wait on
// instruction fetches for half their time in this short kernel, and an instance with every path
// (the fallback) has more code to fetch.
template <typename... paths>
static __global__ void __launch_bounds__(4*WARP_SIZE) k_turbo_fused_chains(const turbo_fused_jobs jobs) {
    int64_t w = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    int     j = 0;
#pragma unroll
    for (int i = 0; i < TURBO_FUSE_MAX_JOBS - 1; ++i) {
        if (i < jobs.n && j == i && w >= jobs.job[i].n_warps) {
            w -= jobs.job[i].n_warps;
            j  = i + 1;
        }
    }
    if (j >= jobs.n || w >= jobs.job[j].n_warps) {
        return; // the whole warp: a block's last warps may have no work
    }
    // the job by a select per field rather than an indexed copy of the parameters, which would
    // go through local memory
    turbo_fused_job job = jobs.job[0];
#pragma unroll
    for (int i = 1; i < TURBO_FUSE_MAX_JOBS; ++i) {
        if (j == i) {
            job = jobs.job[i];
        }
    }

    const int lane = threadIdx.x;
    ggml_cuda_pdl_sync();
    (turbo_fused_try<paths>(job, w, lane) || ...);
}

//
// launch
//

static constexpr int TURBO_FUSE_WARPS = 4; // warps per CUDA block

static turbo_fused_job turbo_fused_job_of(const ggml_cuda_turbo_chain & c) {
    turbo_fused_job job = {};
    job.x        = (const float *) c.src->data;
    job.mu       = c.mu ? (const float *) c.mu->data : nullptr;
    job.scale    = c.scale ? (const float *) c.scale->data : nullptr;
    job.period   = init_fastdiv_values(c.scale ? (uint32_t) (c.scale->ne[0]*c.scale->ne[1]) : 1u);
    job.n_rot    = c.n_rot;
    job.norm     = 1.0f/sqrtf((float) c.n_rot);
    job.dst      = (char *) c.end->data;

    const int64_t n_groups = ggml_nelements(c.src)/c.n_rot;
    if (c.end->op == GGML_OP_MUL_MAT) { // the query
        job.type    = GGML_TYPE_F32;
        job.n_warps = n_groups;
        return job;
    }
    const ggml_tensor * sr   = c.end;
    const ggml_tensor * src0 = sr->src[0];
    const ggml_tensor * src1 = sr->src[1];
    const size_t        ts   = ggml_type_size(src1->type);
    job.type    = sr->type;
    job.n_warps = n_groups*(c.n_rot/QK_TURBO);
    job.idx     = src1->data;
    job.idx_i64 = src1->type == GGML_TYPE_I64;
    job.ne00    = init_fastdiv_values((uint32_t) src0->ne[0]);
    job.ne01    = init_fastdiv_values((uint32_t) src0->ne[1]);
    job.ne02    = init_fastdiv_values((uint32_t) src0->ne[2]);
    job.ne11    = init_fastdiv_values((uint32_t) src1->ne[1]);
    job.ne12    = init_fastdiv_values((uint32_t) src1->ne[2]);
    job.s10     = src1->nb[0]/ts;
    job.s11     = src1->nb[1]/ts;
    job.s12     = src1->nb[2]/ts;
    job.nb1     = sr->nb[1];
    job.nb2     = sr->nb[2];
    job.nb3     = sr->nb[3];
    return job;
}

using turbo_fused_kernel_t = void (*)(const turbo_fused_jobs);

// The instances for a layer with head size D whose K and V caches are one turbo type, or K turbo4
// and V turbo3 or turbo2: Q and K rotate D values, V 64 (as llama.cpp picks them), in any order.
template <int D, ggml_type type_K, ggml_type type_V>
static turbo_fused_kernel_t turbo_fused_layer_kernel(const turbo_fused_jobs & jobs) {
    for (int i = 0; i < jobs.n; ++i) {
        const turbo_fused_job & job = jobs.job[i];
        const bool known = (job.type == GGML_TYPE_F32 && job.n_rot == D) || (job.type == type_K && job.n_rot == D) ||
                           (job.type == type_V && job.n_rot == 64);
        if (!known) {
            return nullptr;
        }
    }
    using Q = turbo_fused_path<D, GGML_TYPE_F32>;
    using K = turbo_fused_path<D, type_K>;
    using V = turbo_fused_path<64, type_V>;
    return k_turbo_fused_chains<K, V, Q>;
}

template <int D>
static turbo_fused_kernel_t turbo_fused_layer_kernel(const turbo_fused_jobs & jobs) {
    turbo_fused_kernel_t k = nullptr;
    (k = turbo_fused_layer_kernel<D, GGML_TYPE_TURBO4, GGML_TYPE_TURBO4>(jobs)) ||
    (k = turbo_fused_layer_kernel<D, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3>(jobs)) ||
    (k = turbo_fused_layer_kernel<D, GGML_TYPE_TURBO2, GGML_TYPE_TURBO2>(jobs)) ||
    (k = turbo_fused_layer_kernel<D, GGML_TYPE_TURBO4, GGML_TYPE_TURBO3>(jobs)) ||
    (k = turbo_fused_layer_kernel<D, GGML_TYPE_TURBO4, GGML_TYPE_TURBO2>(jobs));
    return k;
}

// the instance with the fewest paths that runs every job; the one with all of them otherwise
static turbo_fused_kernel_t turbo_fused_kernel(const turbo_fused_jobs & jobs) {
    turbo_fused_kernel_t k = nullptr;
    (k = turbo_fused_layer_kernel<64>(jobs)) || (k = turbo_fused_layer_kernel<128>(jobs)) ||
    (k = turbo_fused_layer_kernel<256>(jobs));
    if (k) {
        return k;
    }
#define TURBO_FUSED_PATHS(n)                                                                     \
    turbo_fused_path<n, GGML_TYPE_F32>, turbo_fused_path<n, GGML_TYPE_TURBO4>,                   \
    turbo_fused_path<n, GGML_TYPE_TURBO3>, turbo_fused_path<n, GGML_TYPE_TURBO2>
    return k_turbo_fused_chains<TURBO_FUSED_PATHS(64), TURBO_FUSED_PATHS(128), TURBO_FUSED_PATHS(256)>;
#undef TURBO_FUSED_PATHS
}

bool ggml_cuda_turbo_fusion_run(ggml_backend_cuda_context & ctx, const ggml_cuda_turbo_fusion & plan, ggml_tensor * node) {
    if (plan.runs.empty()) {
        return false;
    }
    const auto it = plan.runs.find(node);
    if (it == plan.runs.end()) {
        return false;
    }
    const std::vector<ggml_cuda_turbo_chain> & chains = it->second;
    GGML_ASSERT(!chains.empty() && chains.size() <= TURBO_FUSE_MAX_JOBS);
    turbo_fused_jobs jobs = {};
    jobs.n = (int) chains.size();
    int64_t n_warps = 0;
    for (int i = 0; i < jobs.n; ++i) {
        GGML_ASSERT(chains[i].n_rot == 64 || chains[i].n_rot == 128 || chains[i].n_rot == 256);
        jobs.job[i] = turbo_fused_job_of(chains[i]);
        n_warps += jobs.job[i].n_warps;
    }
    const dim3 block(WARP_SIZE, TURBO_FUSE_WARPS);
    const dim3 grid((n_warps + TURBO_FUSE_WARPS - 1)/TURBO_FUSE_WARPS);
    ggml_cuda_kernel_launch(turbo_fused_kernel(jobs), ggml_cuda_kernel_launch_params(grid, block, 0, ctx.stream()), jobs);
    return true;
}

//
// the plan
//

// which chains to fuse: bit 0 the K cache write, bit 1 the V cache write, bit 2 the query; bit 3
// runs a layer's fused chains in one launch
static int turbo_fusion_chains() {
    static const int chains = [] {
        const char * all   = getenv("GGML_CUDA_DISABLE_FUSION");
        const char * turbo = getenv("GGML_CUDA_TURBO_FUSION");
        return all && atoi(all) ? 0 : turbo ? atoi(turbo) & 15 : 15;
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

// memory a node or a chain reads or writes
struct turbo_range {
    const char * lo = nullptr;
    const char * hi = nullptr;

    explicit turbo_range(const ggml_tensor * t) : lo((const char *) t->data), hi(lo ? lo + ggml_nbytes(t) : lo) {}

    bool overlaps(const turbo_range & o) const {
        return lo < o.hi && o.lo < hi;
    }

    bool overlaps_any(const std::vector<turbo_range> & rs) const {
        return std::any_of(rs.begin(), rs.end(), [this](const turbo_range & r) { return overlaps(r); });
    }
};

// a chain found in the graph, with what it takes to place its launch
struct turbo_candidate {
    ggml_cuda_turbo_chain            chain;
    int                              first = 0; // its first node: its inputs are intact there
    std::vector<const ggml_tensor *> members;   // its nodes, whose work it does
    std::vector<turbo_range>         reads;
    std::vector<turbo_range>         writes;
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
bool turbo_plan_cache_write(const turbo_graph & g, ggml_tensor * sr, const int chains, turbo_candidate & cand) {
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

    // the chain runs at its first node or later, so every input must be there by then, and the
    // nodes between its first and last may neither read nor write the cache it writes early
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

    cand.chain   = c;
    cand.first   = first;
    cand.members = members;
    cand.reads   = { turbo_range(c.src), turbo_range(sr->src[1]) };
    for (const ggml_tensor * p : { c.mu, c.scale }) {
        if (p) {
            cand.reads.emplace_back(p);
        }
    }
    cand.writes = { turbo_range(cache) };
    return true;
}

// Q: MUL -> hadamard MUL_MAT, with nothing but views between them
bool turbo_plan_query(const turbo_graph & g, ggml_tensor * rot, turbo_candidate & cand) {
    const int n_rot = turbo_graph::hadamard_size(rot);
    if (n_rot == 0 || !ggml_is_contiguous(rot)) {
        return false;
    }
    const ggml_tensor * x = g.through_views(rot->src[1], true);
    if (!x || x->op != GGML_OP_MUL || !g.single_use(x) || !turbo_plain_f32(x->src[0], rot) ||
        !ggml_are_same_shape(x->src[0], x) || !turbo_per_channel(x->src[1], x, n_rot)) {
        return false;
    }
    for (int i = g.pos(x) + 1; i < g.pos(rot); ++i) {
        if (!ggml_op_is_empty(g.cgraph->nodes[i]->op)) {
            return false;
        }
    }
    // each warp reads its group before writing it, so the output may be the input itself, but not
    // a shifted copy of it
    if (x->src[0]->data != rot->data && turbo_range(x->src[0]).overlaps(turbo_range(rot))) {
        return false;
    }

    cand.chain.end   = rot;
    cand.chain.src   = x->src[0];
    cand.chain.scale = x->src[1];
    cand.chain.n_rot = n_rot;
    cand.first       = g.pos(x);
    cand.members     = { x, rot };
    cand.reads       = { turbo_range(x->src[0]), turbo_range(x->src[1]) };
    cand.writes      = { turbo_range(rot) };
    return true;
}

bool turbo_overlap(const std::vector<turbo_range> & a, const std::vector<turbo_range> & b) {
    return std::any_of(a.begin(), a.end(), [&b](const turbo_range & r) { return r.overlaps_any(b); });
}

// Whether c may run at node `at` instead of at its first node: no node that runs in between
// (fused ones do not) writes what c reads or writes, or reads what c writes.
bool turbo_can_defer(const turbo_graph & g, const turbo_candidate & c, const int at,
                     const std::unordered_set<const ggml_tensor *> & fused) {
    for (int i = c.first + 1; i < at; ++i) {
        const ggml_tensor * n = g.cgraph->nodes[i];
        if (ggml_op_is_empty(n->op) || fused.count(n)) {
            continue;
        }
        const turbo_range out(n);
        if (out.overlaps_any(c.reads) || out.overlaps_any(c.writes)) {
            return false;
        }
        for (const ggml_tensor * s : n->src) {
            if (s && turbo_range(s).overlaps_any(c.writes)) {
                return false;
            }
        }
    }
    return true;
}

// Whether c may join the chains of group, all running at c's first node in one launch.
bool turbo_can_group(const turbo_graph & g, const std::vector<const turbo_candidate *> & group,
                     const turbo_candidate & c, const std::unordered_set<const ggml_tensor *> & fused) {
    if (group.size() >= TURBO_FUSE_MAX_JOBS) {
        return false;
    }
    for (const turbo_candidate * o : group) {
        // in one launch the chains run side by side, so neither may touch what the other writes
        if (turbo_overlap(o->writes, c.reads) ||
            turbo_overlap(o->writes, c.writes) || turbo_overlap(c.writes, o->reads) ||
            !turbo_can_defer(g, *o, c.first, fused)) {
            return false;
        }
    }
    return true;
}

} // namespace

void ggml_cuda_turbo_fusion_plan(const ggml_cgraph * cgraph, ggml_cuda_turbo_fusion & plan) {
    plan.runs.clear();
    plan.skipped.clear();
    const int chains = turbo_fusion_chains();
    if ((chains & 7) == 0) {
        return;
    }
    bool turbo = false;
    for (int i = 0; i < cgraph->n_nodes && !turbo; ++i) {
        turbo = cgraph->nodes[i]->op == GGML_OP_SET_ROWS && ggml_cuda_type_is_turbo(cgraph->nodes[i]->type);
    }
    if (!turbo) {
        return; // no turbo cache written: nothing of this kind to fuse
    }

    const turbo_graph                       g(cgraph);
    std::vector<turbo_candidate>            cands;
    std::unordered_set<const ggml_tensor *> fused; // the nodes whose work the chains do
    for (int i = 0; i < cgraph->n_nodes && (chains & 3); ++i) {
        turbo_candidate c;
        if (turbo_plan_cache_write(g, cgraph->nodes[i], chains, c)) {
            fused.insert(c.members.begin(), c.members.end());
            cands.push_back(std::move(c));
        }
    }
    for (int i = 0; i < cgraph->n_nodes && (chains & 4); ++i) {
        turbo_candidate c;
        if (!fused.count(cgraph->nodes[i]) && turbo_plan_query(g, cgraph->nodes[i], c) &&
            !fused.count(c.members[0])) {
            fused.insert(c.members.begin(), c.members.end());
            cands.push_back(std::move(c));
        }
    }
    std::sort(cands.begin(), cands.end(),
              [](const turbo_candidate & a, const turbo_candidate & b) { return a.first < b.first; });

    // consecutive chains share a launch while each can wait for the next one's first node
    std::vector<const turbo_candidate *> group;
    const auto close_group = [&]() {
        if (group.empty()) {
            return;
        }
        std::vector<ggml_cuda_turbo_chain> & run = plan.runs[cgraph->nodes[group.back()->first]];
        for (const turbo_candidate * c : group) {
            run.push_back(c->chain);
        }
        group.clear();
    };
    for (const turbo_candidate & c : cands) {
        if (!(chains & 8) || !turbo_can_group(g, group, c, fused)) {
            close_group();
        }
        group.push_back(&c);
    }
    close_group();

    for (const ggml_tensor * n : fused) {
        if (!plan.runs.count(n)) {
            plan.skipped.insert(n);
        }
    }
    // backend-check reads this line to know that the chains ran fused (each run is one launch: the
    // chains' first nodes differ)
    GGML_LOG_DEBUG("%s: %zu TurboQuant chains fused, in %zu launches\n", __func__, cands.size(), plan.runs.size());
}
