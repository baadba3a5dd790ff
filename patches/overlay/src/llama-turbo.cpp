// TurboQuant KV cache: per-layer mean and channel scales of K, measured once per context, and the
// transform that uses them (see llama-turbo.h for why it leaves attention unchanged).

#include "llama-turbo.h"
#include "llama-turbo-api.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

bool llama_turbo_is_turbo_type(ggml_type type) {
    return type == GGML_TYPE_TURBO2 || type == GGML_TYPE_TURBO3 || type == GGML_TYPE_TURBO4;
}

void llama_turbo_transform(ggml_context * ctx, ggml_tensor * params, ggml_tensor ** q, ggml_tensor ** k) {
    const int64_t d    = params->ne[0];
    const int64_t n_q  = (*q)->ne[1];
    const int64_t n_kv = (params->ne[1] - n_q) / 2;
    GGML_ASSERT((*q)->ne[0] == d && n_kv > 0 && 2*n_kv + n_q == params->ne[1]);

    ggml_tensor * mu    = ggml_view_3d(ctx, params, d, n_kv, 1, params->nb[1], params->nb[1]*n_kv, 0);
    ggml_tensor * scale = ggml_view_3d(ctx, params, d, n_kv, 1, params->nb[1], params->nb[1]*n_kv, params->nb[1]*n_kv);
    ggml_tensor * q_inv = ggml_view_3d(ctx, params, d, n_q,  1, params->nb[1], params->nb[1]*n_q,  params->nb[1]*2*n_kv);

    *q = ggml_mul(ctx, *q, q_inv);
    if (k && *k) {
        GGML_ASSERT((*k)->ne[0] == d && (*k)->ne[1] == n_kv);
        *k = ggml_mul(ctx, ggml_sub(ctx, *k, mu), scale);
    }
}

void llama_turbo_expand_projections(ggml_cgraph * gf, ggml_tensor * q, ggml_tensor * v, ggml_tensor * k) {
    for (ggml_tensor * t : { q, v, k }) {
        if (t) {
            const bool rope_joins = t->op == GGML_OP_ROPE && t->src[0]->op != GGML_OP_MUL;
            ggml_build_forward_expand(gf, rope_joins ? t->src[0] : t);
        }
    }
}

//
// the cache's parameter tensors
//

void llama_kv_cache::turbo_init() {
    if (hparams.no_alloc) {
        return;
    }

    std::map<ggml_backend_buffer_type_t, ggml_context_ptr> ctx_map;
    std::vector<std::pair<uint32_t, ggml_tensor *>> created;

    for (const auto & layer : layers) {
        if (!layer.k || !llama_turbo_is_turbo_type(layer.k->type)) {
            continue;
        }
        const uint32_t il   = layer.il;
        const int64_t  d    = hparams.n_embd_head_k(il);
        const int64_t  n_kv = hparams.n_head_kv(il);
        const int64_t  n_q  = hparams.n_head(il);
        if (d <= 0 || n_kv <= 0 || n_q % n_kv != 0 || d*n_kv != (int64_t) hparams.n_embd_k_gqa(il)) {
            continue;
        }

        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(layer.k->buffer);
        auto & ctx = ctx_map[buft];
        if (!ctx) {
            ggml_init_params params = {
                /*.mem_size   =*/ (layers.size() + 1)*ggml_tensor_overhead(),
                /*.mem_buffer =*/ nullptr,
                /*.no_alloc   =*/ true,
            };
            ctx.reset(ggml_init(params));
        }
        ggml_tensor * t = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, d, 2*n_kv + n_q);
        ggml_format_name(t, "turbo_params_l%u", il);
        created.emplace_back(il, t);
    }

    for (auto & [buft, ctx] : ctx_map) {
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx.get(), buft);
        if (!buf) {
            LLAMA_LOG_WARN("%s: no memory for the turbo cache parameters; using the plain rotation\n", __func__);
            return;
        }
        turbo_ctxs_bufs.emplace_back(std::move(ctx), buf);
    }

    for (auto & [il, t] : created) {
        turbo_map[il] = t;
        turbo_set(il, nullptr, nullptr);
    }
}

void llama_kv_cache::turbo_set(uint32_t il, const float * mu, const float * scale) const {
    ggml_tensor * t = turbo_map.at(il);
    const int64_t d    = t->ne[0];
    const int64_t n_kv = hparams.n_head_kv(il);
    const int64_t n_q  = t->ne[1] - 2*n_kv;
    const int64_t g    = n_q / n_kv;

    std::vector<float> data(d*t->ne[1]);
    for (int64_t h = 0; h < n_kv; ++h) {
        for (int64_t i = 0; i < d; ++i) {
            data[(0*n_kv + h)*d + i] = mu    ? mu[h*d + i]    : 0.0f;
            data[(1*n_kv + h)*d + i] = scale ? scale[h*d + i] : 1.0f;
        }
    }
    for (int64_t j = 0; j < n_q; ++j) {
        for (int64_t i = 0; i < d; ++i) {
            data[(2*n_kv + j)*d + i] = 1.0f / data[(n_kv + j/g)*d + i];
        }
    }
    ggml_backend_tensor_set(t, data.data(), 0, ggml_nbytes(t));
}

std::vector<uint32_t> llama_kv_cache::turbo_layers() const {
    std::vector<uint32_t> res;
    for (const auto & [il, t] : turbo_map) {
        res.push_back(il);
    }
    return res;
}

ggml_tensor * llama_kv_cache::turbo_params(int32_t il) const {
    const auto it = map_layer_ids.find(il);
    if (it == map_layer_ids.end()) {
        return nullptr;
    }
    const auto found = turbo_map.find(layers[it->second].il);
    return found == turbo_map.end() ? nullptr : found->second;
}

bool llama_kv_cache::turbo_enabled() const {
    return !turbo_map.empty();
}

ggml_tensor * llama_kv_cache_context::get_turbo(int32_t il) const {
    return kv->turbo_params(il);
}

//
// calibration: one pass over a short built-in text, collecting Q and K as they enter attention
//

// Ordinary English prose, written for this purpose; its statistics stand for the model's.
static const char * k_turbo_calibration_text =
    "The old harbour town wakes slowly. Before the first ferry leaves, the bakers have already "
    "lit their ovens, and the smell of bread drifts down the narrow streets towards the water. "
    "Fishermen check their nets, complaining about the weather and the price of diesel, while "
    "a few tourists wander past with cameras, looking for the lighthouse they saw on a postcard. "
    "Nobody is in a hurry. The town has survived storms, wars and the slow decline of its "
    "shipyard, and it has learned that most problems look smaller after a cup of coffee.\n\n"
    "In the library on the hill, a retired engineer is reading about the history of the canal. "
    "It was dug in the eighteenth century to connect the harbour with the river, so that timber "
    "and grain could reach the coast without the long journey around the cape. The project took "
    "eleven years, cost three times the original estimate, and nearly bankrupted the merchants "
    "who paid for it. Yet within a generation the canal had doubled the trade of the region, and "
    "the same merchants were building houses with tall windows and gardens full of roses.\n\n"
    "Questions about money, time and risk have not changed much since then. How much should we "
    "spend today for a benefit that may arrive only in twenty years? Who carries the cost if the "
    "plan fails, and who collects the reward if it succeeds? Economists describe these choices "
    "with equations, but the people who made them usually relied on experience, intuition and a "
    "certain stubbornness. They counted carefully, argued loudly, and then took the decision "
    "that seemed least foolish.\n\n"
    "Later that afternoon the wind turns to the west. Clouds gather over the islands, the ferry "
    "returns early, and the cafe on the square fills with people shaking rain from their coats. "
    "Someone starts to tell a story about the winter when the harbour froze, and everybody "
    "listens, although they have heard it many times before.";

// The seed of the random signs for contexts created from now on (llama_turbo_set_seed).
static std::atomic<uint32_t> g_turbo_seed{0};

// The text that contexts created from now on calibrate on, in place of the built-in paragraph
// (llama_turbo_set_calibration_text); empty: the built-in paragraph.
static std::mutex  g_turbo_calibration_mutex;
static std::string g_turbo_calibration_text;

// The most tokens of a given calibration text that are used. The calibration is a forward pass
// made every time a context is created, and every turbo layer's Q and K are copied to the host
// and accumulated token by token, so its cost grows with the tokens: a whole book handed to a
// context of 128K tokens would cost a long prefill before the first prompt. The statistics are
// per-channel means and mean squares, which a few thousand tokens estimate well, and positions
// beyond the calibrated ones are extrapolated from them (turbo_position_weights).
constexpr int k_turbo_calibration_max_tokens = 2048;

namespace {

// The exponent of the channel balance s = (rms(q) / rms(k - mu))^balance. Minimising the mean
// squared score error alone gives 1/2; 0.4 measured better on the reference models at 2 bits
// (the error is not spread exactly evenly) and as good at 3 and 4.
constexpr double k_turbo_balance = 0.4;

// A pseudo-random sign per channel: folded into s, it makes the Hadamard rotation that follows a
// randomized one (H times random signs), as the TurboQuant paper's random rotation asks. Seed 0
// gives the built-in pattern (llama_turbo_set_seed).
double turbo_sign(int32_t il, int64_t j, uint32_t seed) {
    uint64_t x = (uint64_t) il * 0x9E3779B97F4A7C15ull + (uint64_t) j * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull +
        (uint64_t) seed * 0xD1B54A32D192ED03ull;
    x ^= x >> 31; x *= 0xD6E8FEB86659FD93ull; x ^= x >> 32;
    return (x & 1) ? -1.0 : 1.0;
}

// How RoPE turns a layer's channels, read from the RoPE node that produced its Q or K: for each
// channel, its partner in the rotated pair and the pair's angle per position (radians per
// token). Channels RoPE leaves alone have no partner and angle 0.
struct turbo_rope {
    std::vector<int64_t> partner;
    std::vector<double>  omega;
};

// Mirrors the angles of ggml's RoPE (ggml-cpu's rope cache): NORMAL and NEOX layouts, frequency
// factors, YaRN. Other layouts (multi-section) and nodes that are not a RoPE give no rotation,
// which leaves the statistics as measured, in the post-RoPE frame.
turbo_rope turbo_rope_of(const ggml_tensor * t, int64_t d) {
    turbo_rope r;
    r.partner.assign(d, -1);
    r.omega.assign(d, 0.0);
    // past operations that keep each channel where it is (Gemma scales Q after RoPE)
    for (int step = 0; step < 4 && t && t->op != GGML_OP_ROPE; ++step) {
        const bool same_layout = t->op == GGML_OP_SCALE || t->op == GGML_OP_CONT ||
            ((t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW) && t->src[0] && t->src[0]->ne[0] == t->ne[0]);
        t = same_layout ? t->src[0] : nullptr;
    }
    if (!t || t->op != GGML_OP_ROPE || t->ne[0] != d) {
        return r;
    }
    const int32_t * ip = t->op_params;
    const int n_dims = ip[1];
    const int mode   = ip[2];
    const int n_ctx_orig = ip[4];
    const int n_offs = ip[15];
    float freq_base, freq_scale, ext_factor, beta_fast, beta_slow;
    memcpy(&freq_base,  ip + 5, sizeof(float));
    memcpy(&freq_scale, ip + 6, sizeof(float));
    memcpy(&ext_factor, ip + 7, sizeof(float));
    memcpy(&beta_fast,  ip + 9, sizeof(float));
    memcpy(&beta_slow,  ip + 10, sizeof(float));
    if ((mode != GGML_ROPE_TYPE_NORMAL && mode != GGML_ROPE_TYPE_NEOX) || n_dims <= 0 || n_offs < 0 || n_offs + n_dims > d) {
        return r;
    }
    std::vector<float> ff(n_dims/2, 1.0f);
    const ggml_tensor * factors = t->src[2];
    if (factors && factors->type == GGML_TYPE_F32 && factors->ne[0] >= n_dims/2) {
        ggml_backend_tensor_get(factors, ff.data(), 0, ff.size()*sizeof(float));
    }
    float corr_dims[2];
    ggml_rope_yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow, corr_dims);
    const double theta_scale = std::pow((double) freq_base, -2.0/n_dims);
    for (int i = 0; i < n_dims/2; ++i) {
        double mix = freq_scale;
        if (ext_factor != 0.0f) {
            const double y = (i - corr_dims[0]) / std::max(0.001, (double) (corr_dims[1] - corr_dims[0]));
            const double ramp = (1.0 - std::min(1.0, std::max(0.0, y))) * ext_factor;
            mix = freq_scale*(1.0 - ramp) + ramp;
        }
        const double w = std::pow(theta_scale, i) / ff[i] * mix;
        const int64_t a = n_offs + (mode == GGML_ROPE_TYPE_NEOX ? i : 2*i);
        const int64_t b = a + (mode == GGML_ROPE_TYPE_NEOX ? n_dims/2 : 1);
        r.partner[a] = b;
        r.partner[b] = a;
        r.omega[a] = r.omega[b] = w;
    }
    return r;
}

// How much each position of a context counts, and the weighted means of cos(p w), sin(p w) over
// the positions the calibration did not see. A key at position p is weighted by the attention it
// would receive if every query t >= p spread its attention evenly over the t + 1 keys it sees:
// sum over t = p .. n_ctx-1 of 1/(t + 1). Early keys (the attention sink among them) weigh
// most, as every later query sees them.
struct turbo_position_weights {
    int64_t n_ctx = 0;
    int64_t n_seen = 0; // positions 0 .. n_seen-1 were measured
    double measured = 1.0; // the share of the weight on the measured positions
    std::map<double, std::pair<double, double>> cache; // angle per token -> (cos, sin) means

    turbo_position_weights(int64_t n_ctx, int64_t n_seen) : n_ctx(std::max<int64_t>(n_ctx, 1)), n_seen(n_seen) {
        double weight = 0.0, total = 0.0, early = 0.0;
        for (int64_t p = this->n_ctx - 1; p >= 0; --p) {
            weight += 1.0/(p + 1);
            total += weight;
            early += p < n_seen ? weight : 0.0;
        }
        measured = early/total;
    }

    // the means over positions n_seen .. n_ctx-1
    std::pair<double, double> mean_rotation(double w) {
        auto it = cache.find(w);
        if (it != cache.end()) {
            return it->second;
        }
        // from the last position down: the weight grows by 1/(p + 1), the angle steps back by w
        const double cw = std::cos(w), sw = std::sin(w);
        double zc = std::cos(w*(n_ctx - 1)), zs = std::sin(w*(n_ctx - 1));
        double weight = 0.0, total = 0.0, sum_c = 0.0, sum_s = 0.0;
        for (int64_t p = n_ctx - 1; p >= n_seen; --p) {
            weight += 1.0/(p + 1);
            total += weight;
            sum_c += weight*zc;
            sum_s += weight*zs;
            const double c = zc*cw + zs*sw;
            zs = zs*cw - zc*sw;
            zc = c;
        }
        return cache[w] = total > 0 ? std::make_pair(sum_c/total, sum_s/total) : std::make_pair(1.0, 0.0);
    }
};

// Moments of Q and K in the frame before RoPE (each token turned back by its position's angle),
// so that their value at any other position follows: per channel the sum and the sum of squares,
// and for the first channel of each rotated pair the sum of products with its partner.
struct turbo_stats {
    int64_t d    = 0;
    int64_t n_kv = 0;
    int64_t n_q  = 0;
    double  n_k_tokens = 0;
    double  n_q_tokens = 0;
    // how RoPE turned K and Q (read from their RoPE nodes; the same in any model we know)
    turbo_rope rope_k;
    turbo_rope rope_q;
    std::vector<double> k_sum;
    std::vector<double> k_sq;
    std::vector<double> k_cross;
    std::vector<double> q_sq;
    std::vector<double> q_cross;
    // as measured, after RoPE
    std::vector<double> k_sum_seen;
    std::vector<double> k_sq_seen;
    std::vector<double> q_sq_seen;
};

struct turbo_collector {
    std::map<int32_t, turbo_stats> layers;
    ggml_backend_sched_eval_callback user_cb = nullptr;
    void * user_data = nullptr;
    std::vector<float> buf;
};

// "turbo_q-12" -> ('q', 12)
bool turbo_parse_name(const char * name, char & which, int32_t & il) {
    if (strncmp(name, "turbo_q-", 8) != 0 && strncmp(name, "turbo_k-", 8) != 0) {
        return false;
    }
    which = name[6];
    il = atoi(name + 8);
    return true;
}

bool turbo_collect(ggml_tensor * t, bool ask, void * user_data) {
    auto * c = (turbo_collector *) user_data;
    char which = 0;
    int32_t il = -1;
    const bool ours = turbo_parse_name(t->name, which, il) && c->layers.count(il) && t->type == GGML_TYPE_F32;
    const bool theirs = c->user_cb ? c->user_cb(t, ask, c->user_data) : false;
    if (ask) {
        return ours || theirs;
    }
    if (!ours || !ggml_is_contiguous(t)) {
        return true;
    }

    auto & s = c->layers[il];
    const int64_t heads = which == 'q' ? s.n_q : s.n_kv;
    if (t->ne[0] != s.d || t->ne[1] != heads) {
        return true;
    }
    turbo_rope & rope = which == 'q' ? s.rope_q : s.rope_k;
    if (rope.omega.empty()) {
        rope = turbo_rope_of(t, s.d);
    }
    const int64_t n_tokens = ggml_nelements(t) / (s.d*heads);
    c->buf.resize(ggml_nelements(t));
    ggml_backend_tensor_get(t, c->buf.data(), 0, ggml_nbytes(t));

    // the calibration batch starts at position 0 of an empty cache; a batch split into several
    // micro-batches arrives here in order
    double & seen = which == 'q' ? s.n_q_tokens : s.n_k_tokens;
    std::vector<double> x(s.d), ca(s.d), sa(s.d);
    for (int64_t tok = 0; tok < n_tokens; ++tok) {
        const double pos = seen + tok;
        for (int64_t i = 0; i < s.d; ++i) {
            ca[i] = std::cos(pos*rope.omega[i]);
            sa[i] = std::sin(pos*rope.omega[i]);
        }
        for (int64_t h = 0; h < heads; ++h) {
            const float * row = c->buf.data() + (tok*heads + h)*s.d;
            const int64_t o = h*s.d;
            for (int64_t i = 0; i < s.d; ++i) {
                x[i] = std::isfinite(row[i]) ? row[i] : 0.0;
                if (which == 'q') {
                    s.q_sq_seen[o + i] += x[i]*x[i];
                } else {
                    s.k_sum_seen[o + i] += x[i];
                    s.k_sq_seen [o + i] += x[i]*x[i];
                }
            }
            // turn each pair back by its angle at this position
            for (int64_t i = 0; i < s.d; ++i) {
                const int64_t j = rope.partner[i];
                if (j > i) {
                    const double xi = x[i], xj = x[j];
                    x[i] =  xi*ca[i] + xj*sa[i];
                    x[j] = -xi*sa[i] + xj*ca[i];
                }
            }
            for (int64_t i = 0; i < s.d; ++i) {
                const int64_t j = rope.partner[i];
                if (which == 'q') {
                    s.q_sq[o + i] += x[i]*x[i];
                    if (j > i) {
                        s.q_cross[o + i] += x[i]*x[j];
                    }
                } else {
                    s.k_sum[o + i] += x[i];
                    s.k_sq [o + i] += x[i]*x[i];
                    if (j > i) {
                        s.k_cross[o + i] += x[i]*x[j];
                    }
                }
            }
        }
    }
    seen += n_tokens;
    return true;
}

} // namespace

void llama_context::turbo_calibrate() {
    std::vector<llama_kv_cache *> caches;
    if (auto * kv = dynamic_cast<llama_kv_cache *>(memory.get())) {
        caches.push_back(kv);
    } else if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(memory.get())) {
        caches.push_back(iswa->get_base());
        caches.push_back(iswa->get_swa());
    }

    const auto & hparams = model.hparams;
    turbo_collector collector;
    std::map<int32_t, llama_kv_cache *> owner;
    for (auto * kv : caches) {
        for (uint32_t il : kv->turbo_layers()) {
            turbo_stats s;
            s.d    = hparams.n_embd_head_k(il);
            s.n_kv = hparams.n_head_kv(il);
            s.n_q  = hparams.n_head(il);
            s.k_sum  .assign(s.d*s.n_kv, 0.0);
            s.k_sq   .assign(s.d*s.n_kv, 0.0);
            s.k_cross.assign(s.d*s.n_kv, 0.0);
            s.q_sq   .assign(s.d*s.n_q,  0.0);
            s.q_cross.assign(s.d*s.n_q,  0.0);
            s.k_sum_seen.assign(s.d*s.n_kv, 0.0);
            s.k_sq_seen .assign(s.d*s.n_kv, 0.0);
            s.q_sq_seen .assign(s.d*s.n_q,  0.0);
            collector.layers[il] = std::move(s);
            owner[il] = kv;
        }
    }
    if (collector.layers.empty()) {
        return;
    }

    std::string text;
    {
        std::lock_guard<std::mutex> lock(g_turbo_calibration_mutex);
        text = g_turbo_calibration_text;
    }
    const bool given = !text.empty();
    if (!given) {
        text = k_turbo_calibration_text;
    }

    // a given text is tokenized as a prompt is: a chat template's markers (<|im_start|>, ...)
    // become the special tokens a chat sends (the built-in paragraph has none)
    const llama_vocab * vocab = &model.vocab;
    std::vector<llama_token> tokens(text.size() + 8);
    const int n_tok = llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(), true, given);
    const int n = std::min<int>({ n_tok, (int) cparams.n_ctx_seq, k_turbo_calibration_max_tokens });
    if (n < 32) {
        LLAMA_LOG_WARN("%s: too few tokens (%d) to calibrate the turbo cache; using the plain rotation\n", __func__, n);
        return;
    }
    tokens.resize(n);

    collector.user_cb   = cparams.cb_eval;
    collector.user_data = cparams.cb_eval_user_data;
    cparams.cb_eval           = turbo_collect;
    cparams.cb_eval_user_data = &collector;

    const int64_t t_start_us = ggml_time_us();
    // in batches of at most n_batch tokens, so a context made for short prompts calibrates too;
    // the collector numbers the positions in order
    int ret = 0;
    for (int i = 0; i < n && ret == 0; i += (int) cparams.n_batch) {
        ret = decode(llama_batch_get_one(tokens.data() + i, std::min<int>(n - i, cparams.n_batch)));
    }

    cparams.cb_eval           = collector.user_cb;
    cparams.cb_eval_user_data = collector.user_data;
    ggml_backend_sched_set_eval_callback(sched.get(), cparams.cb_eval, cparams.cb_eval_user_data);
    memory->clear(true);
    perf_reset();

    if (ret != 0) {
        LLAMA_LOG_WARN("%s: calibration pass failed (%d); using the plain rotation\n", __func__, ret);
        return;
    }

    // The cache will hold keys at every position of a sequence's context, and RoPE turns each
    // channel pair of a key by an angle that grows with its position: the mean and channel
    // energies measured here hold at positions 0 .. n-1 only. Beyond them they follow from the
    // same statistics taken before RoPE, turned by each position's angle. mu and s are those of
    // keys and queries over the whole context, each position weighted by the attention a key
    // there receives (turbo_position_weights): the measured statistics for the positions the
    // calibration saw, the turned ones for the rest (pairs that turn through revolutions average
    // out towards 0). A context no longer than the calibration text uses the measurement alone.
    turbo_position_weights positions(cparams.n_ctx_seq, n);
    const uint32_t seed = g_turbo_seed.load();
    int n_done = 0;
    for (auto & [il, s] : collector.layers) {
        if (s.n_k_tokens < 16 || s.n_q_tokens < 16) {
            continue;
        }
        // a layer whose Q and K were not turned alike (or whose RoPE is not read) keeps the
        // statistics as measured
        const bool same_rope = s.rope_q.omega == s.rope_k.omega && s.rope_q.partner == s.rope_k.partner;
        const double f = same_rope ? positions.measured : 1.0;
        const turbo_rope & rope = s.rope_k;
        const int64_t g = s.n_q / s.n_kv;
        std::vector<float> mu(s.d*s.n_kv);
        std::vector<float> scale(s.d*s.n_kv);
        double log_sum = 0.0;
        for (int64_t h = 0; h < s.n_kv; ++h) {
            for (int64_t i = 0; i < s.d; ++i) {
                const int64_t j = h*s.d + i;
                // the pair (i, p), ia its first channel and ib its second (both i if unrotated)
                const int64_t p  = rope.partner[i];
                const int64_t ia = p < 0 || p > i ? i : p;
                const int64_t ib = p < 0 ? i : std::max(i, p);
                const bool first = ia == i;
                const double w = rope.omega[i];
                const auto [c1, s1] = positions.mean_rotation(w);
                const auto [c2, s2] = positions.mean_rotation(2*w);
                // weighted means of cos^2, sin^2 and sin*cos of the angle
                const double ecc = (1 + c2)/2, ess = (1 - c2)/2, ecs = s2/2;
                const bool pair = p >= 0;

                const double nk = s.n_k_tokens;
                const double ma  = s.k_sum[h*s.d + ia] / nk;
                const double mb  = pair ? s.k_sum[h*s.d + ib] / nk : 0.0;
                const double kaa = s.k_sq[h*s.d + ia] / nk;
                const double kbb = pair ? s.k_sq[h*s.d + ib] / nk : 0.0;
                const double kab = pair ? s.k_cross[h*s.d + ia] / nk : 0.0;
                // beyond the calibration: the pre-RoPE mean turned by the mean rotation, and the
                // mean square turned likewise
                const double mean_far = first ? c1*ma - s1*mb : s1*ma + c1*mb;
                const double k2_far = first ? ecc*kaa - 2*ecs*kab + ess*kbb : ess*kaa + 2*ecs*kab + ecc*kbb;
                const double mean = f*s.k_sum_seen[j]/nk + (1 - f)*mean_far;
                const double k2   = f*s.k_sq_seen[j]/nk  + (1 - f)*k2_far;
                const double rms_k = std::sqrt(std::max(k2 - mean*mean, 0.0));

                double q2_far = 0.0, q2_seen = 0.0;
                for (int64_t r = 0; r < g; ++r) {
                    const int64_t o = (h*g + r)*s.d;
                    const double qaa = s.q_sq[o + ia];
                    const double qbb = pair ? s.q_sq[o + ib] : 0.0;
                    const double qab = pair ? s.q_cross[o + ia] : 0.0;
                    q2_far  += first ? ecc*qaa - 2*ecs*qab + ess*qbb : ess*qaa + 2*ecs*qab + ecc*qbb;
                    q2_seen += s.q_sq_seen[o + i];
                }
                const double q2 = (f*q2_seen + (1 - f)*q2_far) / (g*s.n_q_tokens);
                const double rms_q = std::sqrt(std::max(q2, 0.0));
                const double sc = (rms_k > 1e-20 && rms_q > 1e-20) ? std::pow(rms_q / rms_k, k_turbo_balance) : 1.0;
                mu[j] = (float) mean;
                scale[j] = (float) sc;
                log_sum += std::log(sc);
            }
        }
        // overall magnitude is free: centre the scales on 1, and keep them within [1/32, 32]
        const double norm = std::exp(-log_sum / (s.d*s.n_kv));
        for (int64_t j = 0; j < s.d*s.n_kv; ++j) {
            const double sc = std::min(32.0, std::max(1.0/32.0, scale[j]*norm));
            scale[j] = (float) (turbo_sign(il, j, seed) * sc);
        }
        owner[il]->turbo_set(il, mu.data(), scale.data());
        n_done++;
    }

    LLAMA_LOG_INFO("%s: turbo cache: calibrated %d layers on %d tokens of %s in %.1f ms\n", __func__, n_done, n,
            given ? "the given text" : "the built-in text", (ggml_time_us() - t_start_us)/1000.0);
}

//
// the public read-out of the parameters
//

bool llama_turbo_layer_params(llama_context * ctx, int32_t il, float * mu, float * scale, int64_t n) {
    llama_memory_t mem = llama_get_memory(ctx);
    std::vector<llama_kv_cache *> caches;
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        caches.push_back(kv);
    } else if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        caches.push_back(iswa->get_base());
        caches.push_back(iswa->get_swa());
    }
    for (auto * kv : caches) {
        ggml_tensor * t = kv->turbo_params(il);
        if (!t) {
            continue;
        }
        const int64_t d    = t->ne[0];
        const int64_t n_kv = llama_get_model(ctx)->hparams.n_head_kv(il);
        if (n != d*n_kv) {
            return false;
        }
        std::vector<float> data(ggml_nelements(t));
        ggml_backend_tensor_get(t, data.data(), 0, ggml_nbytes(t));
        std::copy(data.begin(), data.begin() + n, mu);
        std::copy(data.begin() + n, data.begin() + 2*n, scale);
        return true;
    }
    return false;
}

void llama_turbo_set_seed(uint32_t seed) {
    g_turbo_seed.store(seed);
}

void llama_turbo_set_calibration_text(const char * text) {
    std::lock_guard<std::mutex> lock(g_turbo_calibration_mutex);
    g_turbo_calibration_text = text ? text : "";
}
