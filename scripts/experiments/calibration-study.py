#!/usr/bin/env python3
"""How the turbo keys' calibration holds up with distance: attention KL by query position.

Reads what `turboquant fidelity --dump-qk DIR` writes (post-RoPE Q and K of every layer, and the
mean and scales the turbo context calibrated), simulates the turbo key quantizer (blocks of 64,
Lloyd-Max levels, the 16-candidate scale search) under several calibrations, and prints the mean
attention KL divergence (exact keys against quantized ones; values exact) of sampled queries in
each position range. An offline stand-in for the perplexity runs, used to choose the design of
the position-weighted calibration (docs/design-log.md, "Long contexts").

  python3 calibration-study.py DIR BITS VARIANTS [LAYERS]

VARIANTS, comma-separated:
  plain       no mean, no scales (the Hadamard rotation alone)
  current     the mean and scales in DIR (what the binary that wrote DIR calibrated)
  mu, scale   only the mean, only the scales of DIR
  q4_0        upstream q4_0 on the rotated keys
  selfcal     the pre-position-weighting method (post-RoPE statistics of the first 300 keys
              of the scored text itself)
  posexact    statistics before RoPE from those keys, turned to every position of the context
  paracal, paraexact  the same two from another dump (PARA=DIR2: the calibration paragraph)
Environment: NCTX (the context the calibration is for), WEIGHT (uniform, harm: the harmonic
position weights, powK, sinkP), EDGES (position ranges), ROPE (norm | neox), BASE (RoPE base),
GEMMA=1 (Gemma-3's per-layer bases and 512-token windows), ALPHA (the balance exponent).
Needs numpy.
"""
import sys, os, glob
import numpy as np

D = sys.argv[1]
BITS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
VARIANTS = sys.argv[3].split(',') if len(sys.argv) > 3 else ['plain', 'current']
LAYERS = None
if len(sys.argv) > 4:
    LAYERS = [int(x) for x in sys.argv[4].split(',')]

CB = {
    2: np.array([-1.0, -0.29977143, 0.29977143, 1.0]),
    3: np.array([-1.0, -0.6245089, -0.35131243, -0.113894224, 0.113894224, 0.35131243, 0.6245089, 1.0]),
    4: None,
}
GRID = np.array([0.5, 0.54, 0.58, 0.62, 0.66, 0.7, 0.74, 0.78, 0.82, 0.86, 0.9, 0.94, 0.98, 1.02, 1.06, 1.1])


def lloyd_max_4():
    # 16-level Lloyd-Max for N(0,1), normalised to largest 1
    from math import erf, sqrt, exp, pi
    lv = np.linspace(-2.7, 2.7, 16)
    xs = np.linspace(-6, 6, 200001)
    pdf = np.exp(-xs * xs / 2)
    for _ in range(200):
        b = (lv[1:] + lv[:-1]) / 2
        idx = np.searchsorted(b, xs)
        lv = np.array([(xs[idx == i] * pdf[idx == i]).sum() / pdf[idx == i].sum() for i in range(16)])
    return lv / lv.max()


CB[4] = lloyd_max_4()


def hadamard(n):
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def quantize(x, bits):
    """x: (..., 64) blocks; turbo block quantizer (scale search + LS refine)."""
    cb = CB[bits]
    shp = x.shape
    x = x.reshape(-1, 64)
    amax = np.abs(x).max(axis=1, keepdims=True) + 1e-30
    best_err = np.full((x.shape[0], 1), np.inf)
    best = np.zeros_like(x)
    bounds = (cb[1:] + cb[:-1]) / 2
    for g in GRID:
        sc = amax * g
        y = x / sc
        idx = np.searchsorted(bounds, y)
        lv = cb[idx]
        # least-squares refine of the scale
        num = (x * lv).sum(axis=1, keepdims=True)
        den = (lv * lv).sum(axis=1, keepdims=True) + 1e-30
        s2 = num / den
        s2 = s2.astype(np.float16).astype(np.float64)
        rec = lv * s2
        err = ((x - rec) ** 2).sum(axis=1, keepdims=True)
        m = err < best_err
        best_err = np.where(m, err, best_err)
        best = np.where(m, rec, best)
    return best.reshape(shp)


def q4_0(x):
    shp = x.shape
    x = x.reshape(-1, 32)
    amax_i = np.argmax(np.abs(x), axis=1)
    mx = x[np.arange(x.shape[0]), amax_i][:, None]
    d = mx / -8
    d16 = d.astype(np.float16).astype(np.float64)
    idd = np.where(d != 0, 1 / d, 0)
    q = np.clip(np.floor(x * idd + 8.5), 0, 15)
    return ((q - 8) * d16).reshape(shp)


def load(il):
    hd, nq, nkv, n = map(int, open(f'{D}/L{il}_meta.txt').read().split())
    q = np.fromfile(f'{D}/L{il}_q.f32', dtype=np.float32).reshape(n, nq, hd).astype(np.float64)
    k = np.fromfile(f'{D}/L{il}_k.f32', dtype=np.float32).reshape(n, nkv, hd).astype(np.float64)
    mu = sc = None
    if os.path.exists(f'{D}/L{il}_mu.f32'):
        mu = np.fromfile(f'{D}/L{il}_mu.f32', dtype=np.float32)[: nkv * hd].reshape(nkv, hd).astype(np.float64)
        sc = np.fromfile(f'{D}/L{il}_scale.f32', dtype=np.float32)[: nkv * hd].reshape(nkv, hd).astype(np.float64)
    return q, k, mu, sc


def pair_equal(sc, style):
    a = np.abs(sc)
    sign = np.sign(sc)
    d = sc.shape[-1]
    if style == 'norm':
        g = np.sqrt(a[..., 0::2] * a[..., 1::2])
        out = np.empty_like(a)
        out[..., 0::2] = g
        out[..., 1::2] = g
    else:
        g = np.sqrt(a[..., : d // 2] * a[..., d // 2:])
        out = np.concatenate([g, g], axis=-1)
    return out * sign


def variant_params(name, k, mu, sc, calib):
    nkv, hd = k.shape[1], k.shape[2]
    zero = np.zeros((nkv, hd))
    one = np.ones((nkv, hd))
    signs = np.sign(sc) if sc is not None else one
    if name == 'plain':
        return zero, one
    if name == 'current':
        return mu, sc
    if name == 'mu':
        return mu, signs
    if name == 'scale':
        return zero, sc
    if name == 'pairscale':
        return mu, pair_equal(sc, ROPE)
    if name == 'pairscale_nomu':
        return zero, pair_equal(sc, ROPE)
    if name in ('para_mu_exact', 'para_s_exact'):
        mu_e, s_e = variant_params('paraexact', k, mu, sc, calib)
        mu_c, s_c = variant_params('paracal', k, mu, sc, calib)
        return (mu_e, s_c) if name == 'para_mu_exact' else (mu_c, s_e)
    if name in ('paraexact', 'paracal'):
        qp = np.fromfile(f'{PARA}/L{LAYER}_q.f32', dtype=np.float32).reshape(-1, QCUR.shape[1], QCUR.shape[2]).astype(np.float64)
        kp = np.fromfile(f'{PARA}/L{LAYER}_k.f32', dtype=np.float32).reshape(-1, k.shape[1], k.shape[2]).astype(np.float64)
        return calibrate('posexact' if name == 'paraexact' else 'selfcal', kp, qp, sc, kp.shape[0])
    if name in ('selfcal', 'posrobust', 'posrobust_nomu', 'lowfreq', 'posexact', 'posexact_nomu'):
        return calibrate(name, k, QCUR, sc, calib)
    if name.startswith('selfmu'):
        # mean and scale from the context's own first `calib` keys
        return k[:calib].mean(axis=0), sc
    raise ValueError(name)


ROPE = os.environ.get('ROPE', 'norm')
BASE = float(os.environ.get('BASE', '100000'))
QCUR = None
WEIGHT = os.environ.get('WEIGHT', 'uniform')
PARA = os.environ.get('PARA', '/tmp/qk-calib')
ALPHA = float(os.environ.get('ALPHA', '0.4'))


def pair_index(hd):
    if ROPE == 'norm':
        return np.arange(0, hd, 2), np.arange(1, hd, 2)
    return np.arange(0, hd // 2), np.arange(hd // 2, hd)


LAYER = 0


def layer_base():
    if os.environ.get('GEMMA'):
        return 1e6 if LAYER % 6 == 5 else 1e4
    return BASE


def layer_window():
    if os.environ.get('GEMMA') and LAYER % 6 != 5:
        return 512
    return 1 << 30


def thetas(hd):
    return layer_base() ** (-2.0 * np.arange(hd // 2) / hd)


def rotate(x, pos, hd, sign=1):
    a, b = pair_index(hd)
    th = thetas(hd)
    ang = sign * np.outer(pos, th)  # (n, hd/2)
    c, s_ = np.cos(ang), np.sin(ang)
    out = np.empty_like(x)
    xa, xb = x[..., a], x[..., b]
    c = c[:, None, :]; s_ = s_[:, None, :]
    out[..., a] = xa * c - xb * s_
    out[..., b] = xa * s_ + xb * c
    return out


def calibrate(name, k, q, sc, calib):
    n, nkv, hd = k.shape
    nq = q.shape[1]
    g = nq // nkv
    signs = np.sign(sc)
    kc = k[:calib]
    qc = q[:calib].reshape(calib, nkv, g, hd)
    q_ms = (qc ** 2).mean(axis=(0, 2))  # (nkv, hd) per channel
    if name == 'selfcal':
        mu = kc.mean(axis=0)
        k_ms = ((kc - mu) ** 2).mean(axis=0)
        s = (np.sqrt(q_ms) / np.sqrt(k_ms + 1e-12)) ** ALPHA
        return mu, s * signs
    a, b = pair_index(hd)
    pos = np.arange(calib)
    kpre = rotate(kc, pos, hd, -1)
    m = kpre.mean(axis=0)  # (nkv, hd) pre-RoPE mean
    var = ((kpre - m) ** 2).mean(axis=0)
    N = int(os.environ.get('NCTX', 4096))  # the context the cache holds
    th = thetas(hd)
    P = np.arange(N)
    W = np.ones(N)
    if WEIGHT == 'seen':
        W = (N - P).astype(float)
    elif WEIGHT == 'harm':
        inv = 1.0 / np.arange(1, N + 1)
        W = np.cumsum(inv[::-1])[::-1]  # sum_{t=p}^{N-1} 1/(t+1)
    elif WEIGHT.startswith('sink'):
        W = np.ones(N) / N * (1 - float(WEIGHT[4:]) / 100)
        W[0] += float(WEIGHT[4:]) / 100
    elif WEIGHT.startswith('pow'):
        W = ((N - P).astype(float)) ** float(WEIGHT[3:])
    W = W / W.sum()
    cbar = (W[:, None] * np.cos(np.outer(P, th))).sum(axis=0)
    sbar = (W[:, None] * np.sin(np.outer(P, th))).sum(axis=0)
    mu = np.zeros_like(m)
    if name in ('posrobust',):
        mu[:, a] = m[:, a] * cbar - m[:, b] * sbar
        mu[:, b] = m[:, a] * sbar + m[:, b] * cbar
    if name == 'lowfreq':
        keep = th * N < 1.0
        mu[:, a] = np.where(keep, m[:, a], 0)
        mu[:, b] = np.where(keep, m[:, b], 0)
    if name.startswith('posexact'):
        E = lambda f: (W[:, None] * f(np.outer(P, th))).sum(axis=0)
        c1, s1 = cbar, sbar
        c2 = E(lambda x: np.cos(2 * x)); s2 = E(lambda x: np.sin(2 * x))
        ecc, ess, ecs = (1 + c2) / 2, (1 - c2) / 2, s2 / 2
        kp = kpre - m
        Caa = (kp[..., a] ** 2).mean(0); Cbb = (kp[..., b] ** 2).mean(0); Cab = (kp[..., a] * kp[..., b]).mean(0)
        mu = np.zeros_like(m)
        if name == 'posexact':
            mu[:, a] = m[:, a] * c1 - m[:, b] * s1
            mu[:, b] = m[:, a] * s1 + m[:, b] * c1
        ka = ecc * Caa - 2 * ecs * Cab + ess * Cbb + ecc * m[:, a] ** 2 - 2 * ecs * m[:, a] * m[:, b] + ess * m[:, b] ** 2 - mu[:, a] ** 2
        kb = ess * Caa + 2 * ecs * Cab + ecc * Cbb + ess * m[:, a] ** 2 + 2 * ecs * m[:, a] * m[:, b] + ecc * m[:, b] ** 2 - mu[:, b] ** 2
        qpre = rotate(q[:calib], pos, hd, -1).reshape(calib, nkv, g, hd)
        Qaa = (qpre[..., a] ** 2).mean((0, 2)); Qbb = (qpre[..., b] ** 2).mean((0, 2)); Qab = (qpre[..., a] * qpre[..., b]).mean((0, 2))
        if os.environ.get('QUNIFORM'):
            U = np.ones(N) / N
            c2u = (U[:, None] * np.cos(2 * np.outer(P, th))).sum(0); s2u = (U[:, None] * np.sin(2 * np.outer(P, th))).sum(0)
            ecc, ess, ecs = (1 + c2u) / 2, (1 - c2u) / 2, s2u / 2
        qa = ecc * Qaa - 2 * ecs * Qab + ess * Qbb
        qb = ess * Qaa + 2 * ecs * Qab + ecc * Qbb
        s = np.empty_like(m)
        floor = 1e-6 * (Caa + Cbb).mean() + 1e-20
        ka = np.maximum(ka, floor); kb = np.maximum(kb, floor)
        qa = np.maximum(qa, 1e-20); qb = np.maximum(qb, 1e-20)
        s[:, a] = (np.sqrt(qa) / np.sqrt(ka + 1e-12)) ** ALPHA
        s[:, b] = (np.sqrt(qb) / np.sqrt(kb + 1e-12)) ** ALPHA
        return mu, s * signs
    mm = m[:, a] ** 2 + m[:, b] ** 2
    mu2 = mu[:, a] ** 2 + mu[:, b] ** 2
    pair_k = (var[:, a] + var[:, b] + mm - mu2) / 2
    pair_q = (q_ms[:, a] + q_ms[:, b]) / 2
    sp = (np.sqrt(pair_q) / np.sqrt(pair_k + 1e-12)) ** ALPHA
    s = np.empty_like(m)
    s[:, a] = sp
    s[:, b] = sp
    return mu, s * signs
H = None


def attn_kl(q, k, khat, qpos, mu_shift):
    """KL(exact || approx) averaged over heads for query positions qpos."""
    n, nq, hd = q.shape
    nkv = k.shape[1]
    g = nq // nkv
    res = []
    for t in qpos:
        kl = 0.0
        for h in range(nq):
            kv = h // g
            lo = max(0, t + 1 - layer_window())
            s_ex = k[lo: t + 1, kv] @ q[t, h] / np.sqrt(hd)
            s_ap = khat[lo: t + 1, kv] @ q[t, h] / np.sqrt(hd)
            p = np.exp(s_ex - s_ex.max()); p /= p.sum()
            lq = s_ap - s_ap.max(); lq = lq - np.log(np.exp(lq).sum())
            kl += (p * (np.log(p + 1e-300) - lq)).sum()
        res.append(kl / nq)
    return np.array(res)


def main():
    files = sorted(glob.glob(f'{D}/L*_meta.txt'), key=lambda f: int(os.path.basename(f)[1:].split('_')[0]))
    layers = [int(os.path.basename(f)[1:].split('_')[0]) for f in files]
    if LAYERS:
        layers = [l for l in layers if l in LAYERS]
    rng = np.random.default_rng(0)
    n = int(open(files[0]).read().split()[3])
    edges = [int(x) for x in os.environ.get('EDGES', '0,256,1024,2048,4096,8192,16384,32768').split(',')]
    edges = [e for e in edges if e < n] + [n]
    qpos = []
    for a, b in zip(edges[:-1], edges[1:]):
        qpos.append(np.sort(rng.choice(np.arange(max(a, 16), b), size=min(24, b - max(a, 16)), replace=False)))
    results = {v: np.zeros(len(qpos)) for v in VARIANTS}
    for il in layers:
        q, k, mu, sc = load(il)
        if mu is None:
            continue
        global QCUR, LAYER
        QCUR = q
        LAYER = il
        hd = k.shape[2]
        Hm = hadamard(hd)
        for v in VARIANTS:
            if v == 'q4_0':
                khat = q4_0(k @ Hm.T) @ Hm
            else:
                m, s = variant_params(v, k, mu, sc, 300)
                r = ((k - m) * s) @ Hm.T
                rq = quantize(r, BITS)
                khat = (rq @ Hm) / s + m
                if os.environ.get('SINK'):
                    khat[: int(os.environ['SINK'])] = k[: int(os.environ['SINK'])]
            for bi, qp in enumerate(qpos):
                results[v][bi] += attn_kl(q, k, khat, qp, None).mean()
        print(f'layer {il} done', file=sys.stderr)
    nl = len(layers)
    print('bucket   ' + ' '.join(f'{a}-{b}'.rjust(11) for a, b in zip(edges[:-1], edges[1:])))
    for v in VARIANTS:
        print(v.ljust(14) + ' '.join(f'{x / nl:11.4f}' for x in results[v]))


main()
