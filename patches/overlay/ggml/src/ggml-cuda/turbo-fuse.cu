// TurboQuant: the transform, the Hadamard rotation and the cache write in one kernel (turbo-fuse.cuh).

#include "turbo-fuse.cuh"

#include "fwht.cuh"
#include "turbo.cuh"

#include "ggml-impl.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
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

// RoPE as the chain's first node: x is ROPE's source and a group is one head of it, turned whole
// (n_dims is the head size, no offset).
struct turbo_fused_rope {
    const int32_t * pos;  // each token's position; null when the chain has no RoPE
    const float   * freq_factors; // or null
    uint3           ne1;  // heads per token
    int64_t         s1, s2; // x's head and token strides, in floats
    float           theta_scale, freq_scale, ext_factor, attn_factor;
    float           corr_lo, corr_hi; // YaRN's correction range, in pair indices
    bool            neox;
};

// The angle's cosine and sine for pair c at position p, computed as ggml's CUDA ROPE computes them
// (theta = p theta_scale^c, YaRN's blend of interpolation and extrapolation, the magnitude scale).
static __device__ __forceinline__ void turbo_rope_angle(const turbo_fused_rope & r, const float p, const int c,
                                                        float & cos_theta, float & sin_theta) {
    float theta_extrap = p*powf(r.theta_scale, (float) c);
    if (r.freq_factors) {
        theta_extrap /= r.freq_factors[c];
    }
    const float theta_interp = r.freq_scale*theta_extrap;
    float       theta        = theta_interp;
    float       mscale       = r.attn_factor;
    if (r.ext_factor != 0.0f) {
        const float y        = (c - r.corr_lo)/fmaxf(0.001f, r.corr_hi - r.corr_lo);
        const float ramp_mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y)))*r.ext_factor;
        theta   = theta_interp*(1.0f - ramp_mix) + theta_extrap*ramp_mix;
        mscale *= 1.0f + 0.1f*logf(1.0f/r.freq_scale);
    }
    cos_theta = cosf(theta)*mscale;
    sin_theta = sinf(theta)*mscale;
}

// Turns the group's pairs: normal order pairs values 2c and 2c + 1 (neighbouring lanes), NeoX order
// c and c + n_rot/2 (registers i and i + per_lane/2 of one lane).
template <int n_rot>
static __device__ __forceinline__ void turbo_rope_group(float (&v)[n_rot/WARP_SIZE], const turbo_fused_rope & r,
                                                        const float p, const int lane) {
    constexpr int per_lane = n_rot/WARP_SIZE;
    if (r.neox) {
#pragma unroll
        for (int i = 0; i < per_lane/2; ++i) {
            float cos_theta, sin_theta;
            turbo_rope_angle(r, p, i*WARP_SIZE + lane, cos_theta, sin_theta);
            const float x0 = v[i];
            const float x1 = v[i + per_lane/2];
            v[i]              = x0*cos_theta - x1*sin_theta;
            v[i + per_lane/2] = x0*sin_theta + x1*cos_theta;
        }
    } else {
#pragma unroll
        for (int i = 0; i < per_lane; ++i) {
            float cos_theta, sin_theta;
            turbo_rope_angle(r, p, (i*WARP_SIZE + lane)/2, cos_theta, sin_theta);
            const float other = __shfl_xor_sync(0xFFFFFFFF, v[i], 1, WARP_SIZE);
            v[i] = lane & 1 ? other*sin_theta + v[i]*cos_theta : v[i]*cos_theta - other*sin_theta;
        }
    }
}

// Loads group g of x, with ((x - mu) * scale) per channel and head when mu is given and x * scale
// when only scale is, after the RoPE when there is one: the same operations, in the same order, as
// the unfused nodes.
template <int n_rot>
static __device__ __forceinline__ void turbo_load_group(
        float (&v)[n_rot/WARP_SIZE], const float * GGML_CUDA_RESTRICT x, const turbo_fused_rope & rope,
        const float * GGML_CUDA_RESTRICT mu, const float * GGML_CUDA_RESTRICT scale, const int64_t g,
        const uint3 period, const float norm, const int lane) {
    const uint32_t first = (uint32_t) (g * n_rot);
    const uint32_t c0    = scale ? fastmodulo(first, period) : 0; // the group lies within one period
    if (rope.pos) {
        const uint2 dm = fast_div_modulo((uint32_t) g, rope.ne1); // token, head
        const float * row = x + dm.y*rope.s1 + dm.x*rope.s2;
#pragma unroll
        for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
            v[i] = row[i*WARP_SIZE + lane];
        }
        turbo_rope_group<n_rot>(v, rope, (float) rope.pos[dm.x], lane);
    } else {
#pragma unroll
        for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
            v[i] = x[first + i*WARP_SIZE + lane];
        }
    }
#pragma unroll
    for (int i = 0; i < n_rot/WARP_SIZE; ++i) {
        const int j = i*WARP_SIZE + lane;
        float     y = v[i];
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
    const float * x;     // the values before the chain (contiguous unless rope.pos is set)
    turbo_fused_rope rope;
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
    turbo_load_group<n_rot>(v, job.x, job.rope, job.mu, job.scale, g, job.period, job.norm, lane);
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
    turbo_load_group<n_rot>(v, job.x, job.rope, nullptr, job.scale, g, job.period, job.norm, lane);
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
    if (c.rope) {
        const int32_t * params = (const int32_t *) c.rope->op_params;
        const int n_dims     = params[1];
        const int n_ctx_orig = params[4];
        float freq_base, beta_fast, beta_slow, corr[2];
        memcpy(&freq_base,             params + 5, sizeof(float));
        memcpy(&job.rope.freq_scale,   params + 6, sizeof(float));
        memcpy(&job.rope.ext_factor,   params + 7, sizeof(float));
        memcpy(&job.rope.attn_factor,  params + 8, sizeof(float));
        memcpy(&beta_fast,             params + 9, sizeof(float));
        memcpy(&beta_slow,             params + 10, sizeof(float));
        ggml_rope_yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow, corr);
        job.rope.pos          = (const int32_t *) c.rope->src[1]->data;
        job.rope.freq_factors = c.rope->src[2] ? (const float *) c.rope->src[2]->data : nullptr;
        job.rope.ne1          = init_fastdiv_values((uint32_t) c.src->ne[1]);
        job.rope.s1           = c.src->nb[1]/sizeof(float);
        job.rope.s2           = c.src->nb[2]/sizeof(float);
        job.rope.theta_scale  = powf(freq_base, -2.0f/n_dims);
        job.rope.corr_lo      = corr[0];
        job.rope.corr_hi      = corr[1];
        job.rope.neox         = params[2] == GGML_ROPE_TYPE_NEOX;
    }

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
// runs a layer's fused chains in one launch; bit 4 lets the K and Q chains start with their RoPE
static int turbo_fusion_chains() {
    static const int chains = [] {
        const char * all = getenv("GGML_CUDA_DISABLE_FUSION");
        if (all && atoi(all)) {
            return 0;
        }
        const char * turbo = getenv("GGML_CUDA_TURBO_FUSION");
        if (turbo == nullptr) {
            return 31;
        }
        // a value that is not one of the 32 would otherwise turn fusion off unnoticed
        char * end = nullptr;
        const long bits = strtol(turbo, &end, 10);
        if (end == turbo || *end != '\0' || bits < 0 || bits > 31) {
            GGML_ABORT("GGML_CUDA_TURBO_FUSION=%s: expected a number from 0 to 31 (bits: 1 K, 2 V, 4 Q, 8 one launch, 16 RoPE)", turbo);
        }
        return (int) bits;
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

// A ROPE the chain may start with: of whole heads (n_dims the head size and the rotation's, no
// offset) in normal or NeoX order, of f32 rows, read by the chain alone. Not one that upstream runs
// with the RMS norm and multiplication before it (ggml_cuda_try_fuse), which would then run twice.
bool turbo_rope_joins(const turbo_graph & g, const ggml_tensor * t, const int n_rot, const int chains) {
    if (!(chains & 16) || t->op != GGML_OP_ROPE || !g.single_use(t)) {
        return false;
    }
    const int32_t *     params = (const int32_t *) t->op_params;
    const int           n_dims = params[1];
    const int           mode   = params[2];
    const int           n_offs = params[15];
    const ggml_tensor * x      = t->src[0];
    const ggml_tensor * pos    = t->src[1];
    const ggml_tensor * ff     = t->src[2];
    return (mode == GGML_ROPE_TYPE_NORMAL || mode == GGML_ROPE_TYPE_NEOX) && n_dims == n_rot && n_offs == 0 &&
           x->ne[0] == n_rot && x->ne[3] == 1 && x->type == GGML_TYPE_F32 && t->type == GGML_TYPE_F32 &&
           x->nb[0] == sizeof(float) && x->nb[1] % sizeof(float) == 0 && x->nb[2] % sizeof(float) == 0 &&
           x->op != GGML_OP_MUL && ggml_is_contiguous(t) && pos->type == GGML_TYPE_I32 && pos->ne[0] == x->ne[2] &&
           (!ff || (ff->type == GGML_TYPE_F32 && ggml_is_contiguous(ff) && ff->ne[0] >= n_dims/2));
}

// Makes c start with the ROPE that its source is, when that RoPE may join (turbo_rope_joins).
void turbo_take_rope(const turbo_graph & g, ggml_cuda_turbo_chain & c, std::vector<const ggml_tensor *> & members,
                     const int chains) {
    if (turbo_rope_joins(g, c.src, c.n_rot, chains)) {
        c.rope = c.src;
        c.src  = c.rope->src[0];
        members.push_back(c.rope);
    }
}

// what the chain's kernel reads, besides a cache write's row indices
std::vector<const ggml_tensor *> turbo_chain_inputs(const ggml_cuda_turbo_chain & c) {
    std::vector<const ggml_tensor *> inputs = { c.src };
    for (const ggml_tensor * p : { c.mu, c.scale }) {
        if (p) {
            inputs.push_back(p);
        }
    }
    if (c.rope) {
        for (const ggml_tensor * p : { c.rope->src[1], c.rope->src[2] }) { // positions, frequency factors
            if (p) {
                inputs.push_back(p);
            }
        }
    }
    return inputs;
}

// K or V: [[ROPE ->] SUB -> MUL ->] hadamard MUL_MAT -> SET_ROWS into a turbo cache
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
        turbo_take_rope(g, c, members, chains);
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
    std::vector<const ggml_tensor *> inputs = turbo_chain_inputs(c);
    inputs.push_back(sr->src[1]);
    for (const ggml_tensor * in : inputs) {
        if (g.pos(turbo_graph::root(in)) >= first) {
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
    cand.reads   = std::vector<turbo_range>(inputs.begin(), inputs.end());
    cand.writes  = { turbo_range(cache) };
    return true;
}

// Q: [ROPE ->] MUL -> hadamard MUL_MAT, with nothing but views between them
bool turbo_plan_query(const turbo_graph & g, ggml_tensor * rot, const int chains, turbo_candidate & cand) {
    const int n_rot = turbo_graph::hadamard_size(rot);
    if (n_rot == 0 || !ggml_is_contiguous(rot)) {
        return false;
    }
    const ggml_tensor * x = g.through_views(rot->src[1], true);
    if (!x || x->op != GGML_OP_MUL || !g.single_use(x) || !turbo_plain_f32(x->src[0], rot) ||
        !ggml_are_same_shape(x->src[0], x) || !turbo_per_channel(x->src[1], x, n_rot)) {
        return false;
    }
    ggml_cuda_turbo_chain & c = cand.chain;
    c.end   = rot;
    c.src   = x->src[0];
    c.scale = x->src[1];
    c.n_rot = n_rot;
    cand.members = { x, rot };
    turbo_take_rope(g, c, cand.members, chains);
    cand.first = g.pos(c.rope ? c.rope : x);
    for (int i = cand.first + 1; i < g.pos(rot); ++i) {
        if (!ggml_op_is_empty(g.cgraph->nodes[i]->op) && g.cgraph->nodes[i] != x) {
            return false;
        }
    }
    // each warp reads its group before writing it, so the output may be the input itself, but not
    // a shifted copy of it
    if (!(c.src->data == rot->data && ggml_is_contiguous(c.src)) && turbo_range(c.src).overlaps(turbo_range(rot))) {
        return false;
    }

    const std::vector<const ggml_tensor *> inputs = turbo_chain_inputs(c);
    cand.reads  = std::vector<turbo_range>(inputs.begin(), inputs.end());
    cand.writes = { turbo_range(rot) };
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
        if (!fused.count(cgraph->nodes[i]) && turbo_plan_query(g, cgraph->nodes[i], chains, c) &&
            std::none_of(c.members.begin(), c.members.end(), [&fused](const ggml_tensor * m) { return fused.count(m); })) {
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
    const size_t with_rope = std::count_if(cands.begin(), cands.end(),
                                           [](const turbo_candidate & c) { return c.chain.rope != nullptr; });
    GGML_LOG_DEBUG("%s: %zu TurboQuant chains fused, %zu with their RoPE, in %zu launches\n", __func__, cands.size(),
                   with_rope, plan.runs.size());
}
