//! The ways keys can be compressed, and the attention scores each gives.
//!
//! * `mse`, `prod`: the Rust core's `TurboQuantMse` and `TurboQuantProd` (the paper's quantizers,
//!   one norm per vector, QJL for prod), on the raw keys.
//! * `turbo` and every ggml cache type: the real cache. Keys go through what llama.cpp does to
//!   them before the cache — the turbo transform (mean and channel scales the context measured),
//!   the Hadamard rotation — are quantized by ggml's own CPU quantizer, and scored by ggml's own
//!   CPU dot product against the query as llama.cpp converts it (f32 for turbo, q8_0 for q4_0).
//!   `--seeds` adds random signs before the rotation (seed 0 is llama.cpp's exact pipeline).
//! * `kivi`: KIVI (the Rust core's `Kivi`) with b-bit integers, the paper's groups of 32 tokens
//!   per key channel and its 128 most recent tokens in f16. The context's keys are quantized once,
//!   as a cache holds them once the context has been read, and every query of the context is
//!   scored against them: a query from the middle of the context sees only quantized keys, the
//!   last query also the window. Its bits per value (b + 1 for the f16 scale and zero of each
//!   group of 32, plus the window's share) depend on the context length.
//! * `polar`: PolarQuant (the core's `PolarQuant`), randomized Hadamard rotation, the full polar
//!   recursion with one f16 norm and the angle bits allocated within b bits per value (matched
//!   bits); `polar-paper` is the paper's own setting, 4 levels at 4/2/2/2 bits: 3.875 bits.

use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;
use turboquant::batch::{BatchCompressor, BatchConfig, KeyMethod, Shape};
use turboquant::kivi::{Kivi, KiviConfig};
use turboquant::mse::QuantizerOptions;
use turboquant::polar::{PolarConfig, PolarQuant};
use turboquant::rotation::{fwht_orthonormal_groups, RotationKind};

use crate::llama::CacheType;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Mse,
    Prod,
    /// turbo2/3/4 by bit width
    Turbo,
    /// KIVI at b bits per quantized value
    Kivi,
    /// PolarQuant within b bits per value
    Polar,
    /// PolarQuant in the paper's setting (3.875 bits)
    PolarPaper,
    Ggml(CacheType),
}

/// One method at one bit width.
#[derive(Clone, Debug)]
pub struct Method {
    pub kind: Kind,
    pub bits: u8,
    /// The name files and tables use: `mse`, `prod`, `turbo`, `q4_0`, ...
    pub name: String,
}

impl Method {
    /// `--methods mse,prod,turbo,q4_0` × `--bits 2,3,4` (ggml types and `polar-paper` ignore the
    /// bit widths).
    pub fn parse_list(methods: &str, bits: &[u8]) -> Result<Vec<Method>> {
        let mut out = Vec::new();
        for name in methods.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let lower = name.to_ascii_lowercase();
            let kind = match lower.as_str() {
                "mse" => Kind::Mse,
                "prod" | "qjl" => Kind::Prod,
                "turbo" => Kind::Turbo,
                "kivi" => Kind::Kivi,
                "polar" => Kind::Polar,
                "polar-paper" => Kind::PolarPaper,
                other => Kind::Ggml(CacheType::parse(other).map_err(|_| {
                    anyhow::anyhow!("unknown method `{name}`: use mse, prod, turbo, kivi, polar, polar-paper or a cache type (q4_0, q8_0, turbo3, ...)")
                })?),
            };
            match kind {
                Kind::Ggml(_) | Kind::PolarPaper => out.push(Method {
                    kind,
                    bits: 0,
                    name: lower,
                }),
                _ => {
                    for &b in bits {
                        let range = match kind {
                            Kind::Turbo => 2..=4,
                            // 1 bit per angle and the f16 norm already take more than 1 bit
                            Kind::Polar => 2..=8,
                            _ => 1..=8,
                        };
                        if !range.contains(&b) {
                            bail!("{name} cannot use {b} bits (turbo: 2-4, polar: 2-8, mse/prod/kivi: 1-8)");
                        }
                        out.push(Method {
                            kind,
                            bits: b,
                            name: lower.clone(),
                        });
                    }
                }
            }
        }
        if out.is_empty() {
            bail!("no method given");
        }
        Ok(out)
    }

    /// The ggml type this method stores keys as, if it is a cache type.
    pub fn cache_type(&self) -> Option<CacheType> {
        match self.kind {
            Kind::Ggml(t) => Some(t),
            Kind::Turbo => Some(CacheType::turbo(self.bits)),
            _ => None,
        }
    }
}

/// The keys and queries of one layer, head-major: keys (kv_heads, tokens, d), queries
/// (q_heads, n_queries, d) at positions `positions`.
pub struct Layer<'a> {
    pub d: usize,
    pub kv_heads: usize,
    pub q_heads: usize,
    pub tokens: usize,
    pub keys: &'a [f32],
    pub queries: &'a [f32],
    pub positions: &'a [usize],
}

/// What llama.cpp does to K and Q of a layer before a turbo cache: mean, scale (KV head by KV head).
pub struct TurboParams {
    pub mu: Vec<f32>,
    pub scale: Vec<f32>,
}

/// Scores (q_heads, n_queries, tokens) of a method; only keys up to each query's position are
/// meaningful (causal attention). Also returns the bits the method stores per key value.
pub fn scores(
    method: &Method,
    layer: &Layer,
    seed: u64,
    turbo: Option<&TurboParams>,
) -> Result<(Vec<f32>, f64)> {
    match method.kind {
        Kind::Mse | Kind::Prod => core_scores(method, layer, seed),
        Kind::Kivi => kivi_scores(method.bits, layer),
        Kind::Polar => polar_scores(
            PolarConfig::matched(layer.d, f64::from(method.bits))?,
            layer,
            seed,
        ),
        Kind::PolarPaper => polar_scores(PolarConfig::paper(), layer, seed),
        Kind::Turbo | Kind::Ggml(_) => ggml_scores(
            method.cache_type().expect("a cache type"),
            layer,
            seed,
            turbo,
        ),
    }
}

fn core_scores(method: &Method, layer: &Layer, seed: u64) -> Result<(Vec<f32>, f64)> {
    let config = BatchConfig {
        key_method: if method.kind == Kind::Mse {
            KeyMethod::Mse
        } else {
            KeyMethod::Prod
        },
        key_bits: method.bits,
        value_bits: method.bits,
        seed,
        // the randomized Hadamard rotation: O(d log d), and what llama.cpp can afford as well
        options: QuantizerOptions::with_rotation(RotationKind::Hadamard),
        threads: 0,
    };
    let compressor = BatchCompressor::new(layer.d, &config)?;
    let k_shape = Shape::new(layer.kv_heads, layer.tokens, layer.d);
    let keys = compressor.compress_keys(layer.keys, k_shape)?;
    let bits = keys.storage_bytes() as f64 * 8.0 / (layer.kv_heads * layer.tokens * layer.d) as f64;
    let q_shape = Shape::new(layer.q_heads, layer.positions.len(), layer.d);
    Ok((keys.attention_scores(layer.queries, q_shape)?, bits))
}

/// KIVI's keys: b-bit integers per channel over groups of 32 tokens, the last 128 tokens in f16
/// (the paper's setting); the bits are everything stored, over the context's keys.
fn kivi_scores(bits: u8, layer: &Layer) -> Result<(Vec<f32>, f64)> {
    let kivi = Kivi::new(&KiviConfig {
        key_bits: bits,
        value_bits: bits,
        ..KiviConfig::default()
    })?;
    let keys = kivi.compress_keys(
        layer.keys,
        Shape::new(layer.kv_heads, layer.tokens, layer.d),
    )?;
    let q_shape = Shape::new(layer.q_heads, layer.positions.len(), layer.d);
    Ok((
        keys.attention_scores(layer.queries, q_shape)?,
        keys.bits_per_value(),
    ))
}

/// PolarQuant's keys, with the randomized Hadamard rotation of `seed` (as `mse` and `prod`).
fn polar_scores(config: PolarConfig, layer: &Layer, seed: u64) -> Result<(Vec<f32>, f64)> {
    let quantizer = PolarQuant::new(layer.d, &config.with_rotation(RotationKind::Hadamard, seed))?;
    let keys = quantizer.compress(
        layer.keys,
        Shape::new(layer.kv_heads, layer.tokens, layer.d),
    )?;
    let q_shape = Shape::new(layer.q_heads, layer.positions.len(), layer.d);
    Ok((
        keys.attention_scores(layer.queries, q_shape)?,
        quantizer.bits_per_value(),
    ))
}

/// The size of the Hadamard rotation llama.cpp applies to keys of head size d.
fn rotation_size(d: usize) -> usize {
    if d % 64 != 0 {
        return 1;
    }
    let mut n = 64;
    while d % (2 * n) == 0 {
        n *= 2;
    }
    n
}

/// Random ±1 per channel for `seed` (none for seed 0).
fn signs(seed: u64, d: usize) -> Vec<f32> {
    let mut state = seed;
    (0..d)
        .map(|_| {
            if seed == 0 {
                return 1.0;
            }
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if state >> 63 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

fn ggml_scores(
    t: CacheType,
    layer: &Layer,
    seed: u64,
    turbo: Option<&TurboParams>,
) -> Result<(Vec<f32>, f64)> {
    let d = layer.d;
    let quantized = t.is_quantized();
    let n_rot = if quantized { rotation_size(d) } else { 1 };
    let sign = signs(seed, d);
    let is_turbo = t.name().starts_with("turbo");
    let params = if is_turbo { turbo } else { None };
    if is_turbo && params.is_none() {
        bail!("the turbo parameters of the model are missing");
    }

    // SAFETY (all ggml calls): the CPU type traits of a valid type, buffers sized by ggml_row_size.
    let traits = unsafe { &*sys::ggml_get_type_traits_cpu(t.ggml()) };
    let from_float = traits
        .from_float
        .expect("cache types can be quantized on the CPU");
    let vec_dot = traits.vec_dot.expect("cache types have a CPU dot product");
    let q_traits = unsafe { &*sys::ggml_get_type_traits_cpu(traits.vec_dot_type) };
    let q_from_float = q_traits
        .from_float
        .expect("the query type converts from f32");
    let k_row = unsafe { sys::ggml_row_size(t.ggml(), d as i64) };
    let q_row = unsafe { sys::ggml_row_size(traits.vec_dot_type, d as i64) };

    // keys as the cache holds them
    let mut cache = vec![0u8; layer.kv_heads * layer.tokens * k_row];
    let mut buf = vec![0f32; d];
    for h in 0..layer.kv_heads {
        for tok in 0..layer.tokens {
            let k = &layer.keys[(h * layer.tokens + tok) * d..][..d];
            for i in 0..d {
                buf[i] = match params {
                    Some(p) => (k[i] - p.mu[h * d + i]) * p.scale[h * d + i],
                    None => k[i],
                } * sign[i];
            }
            fwht_orthonormal_groups(&mut buf, n_rot)?;
            let out = &mut cache[(h * layer.tokens + tok) * k_row..][..k_row];
            unsafe { from_float(buf.as_ptr(), out.as_mut_ptr().cast(), d as i64) };
        }
    }

    let group = layer.q_heads / layer.kv_heads;
    let n_q = layer.positions.len();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; layer.q_heads * n_q * layer.tokens];
    let mut q_conv = vec![0u8; q_row];
    for h in 0..layer.q_heads {
        let kv = h / group;
        for qi in 0..n_q {
            let q = &layer.queries[(h * n_q + qi) * d..][..d];
            // the score shift that the mean removal causes (undone here, so scores compare)
            let mut shift = 0.0f32;
            for i in 0..d {
                buf[i] = match params {
                    Some(p) => {
                        shift += q[i] * p.mu[kv * d + i];
                        q[i] / p.scale[kv * d + i]
                    }
                    None => q[i],
                } * sign[i];
            }
            fwht_orthonormal_groups(&mut buf, n_rot)?;
            unsafe { q_from_float(buf.as_ptr(), q_conv.as_mut_ptr().cast(), d as i64) };
            let row = &mut scores[(h * n_q + qi) * layer.tokens..][..layer.tokens];
            for (tok, s) in row.iter_mut().enumerate().take(layer.positions[qi] + 1) {
                let k = &cache[(kv * layer.tokens + tok) * k_row..][..k_row];
                let mut dot = 0f32;
                unsafe {
                    vec_dot(
                        d as i32,
                        &mut dot,
                        0,
                        k.as_ptr().cast(),
                        0,
                        q_conv.as_ptr().cast(),
                        0,
                        1,
                    );
                }
                *s = scale * (dot + shift);
            }
        }
    }
    Ok((scores, t.bits_per_value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadamard_is_orthonormal_and_its_own_inverse() {
        let mut x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.7).sin()).collect();
        let orig = x.clone();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        fwht_orthonormal_groups(&mut x, 64).unwrap();
        assert!((norm(&x) - norm(&orig)).abs() < 1e-3);
        fwht_orthonormal_groups(&mut x, 64).unwrap();
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
        assert_eq!(rotation_size(64), 64);
        assert_eq!(rotation_size(128), 128);
        assert_eq!(rotation_size(256), 256);
        assert_eq!(rotation_size(96), 1);
    }

    #[test]
    fn kivi_and_polar_score_close_to_exact_and_count_their_bits() {
        let (d, tokens, kv_heads, q_heads) = (64, 400, 2, 4);
        let keys = turboquant::random_normal(kv_heads * tokens * d, 1);
        let queries = turboquant::random_normal(q_heads * 2 * d, 2);
        let positions = [200, tokens - 1];
        let layer = Layer {
            d,
            kv_heads,
            q_heads,
            tokens,
            keys: &keys,
            queries: &queries,
            positions: &positions,
        };
        let exact = turboquant::batch::exact_attention_scores(
            &keys,
            Shape::new(kv_heads, tokens, d),
            &queries,
            Shape::new(q_heads, 2, d),
        )
        .unwrap();
        for (name, bits, expected_bits, min_cosine) in [
            // 256 quantized tokens at 4 + 1 bits, 144 in f16
            ("kivi", 4, (256.0 * 5.0 + 144.0 * 16.0) / 400.0, 0.99),
            ("kivi", 2, (256.0 * 3.0 + 144.0 * 16.0) / 400.0, 0.9),
            ("polar", 4, 4.0, 0.99),
            ("polar", 2, 2.0, 0.85),
            ("polar-paper", 0, 3.875, 0.98),
        ] {
            let methods = Method::parse_list(name, &[bits.max(2)]).unwrap();
            let (est, bpv) = scores(&methods[0], &layer, 1, None).unwrap();
            assert_eq!(est.len(), exact.len());
            assert!((bpv - expected_bits).abs() < 1e-9, "{name} {bits}: {bpv}");
            let cosine = turboquant::metrics::cosine_similarity(&exact, &est).unwrap();
            assert!(cosine > min_cosine, "{name} {bits}: {cosine}");
        }
    }

    #[test]
    fn method_lists() {
        let m = Method::parse_list("mse,turbo,q4_0", &[2, 3]).unwrap();
        let names: Vec<String> = m.iter().map(|m| format!("{}/{}", m.name, m.bits)).collect();
        assert_eq!(names, ["mse/2", "mse/3", "turbo/2", "turbo/3", "q4_0/0"]);
        assert_eq!(m[3].cache_type().unwrap().name(), "turbo3");
        assert!(Method::parse_list("turbo", &[5]).is_err());
        let m = Method::parse_list("kivi,polar,polar-paper", &[2, 4]).unwrap();
        let names: Vec<String> = m.iter().map(|m| format!("{}/{}", m.name, m.bits)).collect();
        assert_eq!(
            names,
            ["kivi/2", "kivi/4", "polar/2", "polar/4", "polar-paper/0"]
        );
        assert!(m.iter().all(|m| m.cache_type().is_none()));
        assert!(Method::parse_list("polar", &[1]).is_err());
        assert!(Method::parse_list("zip", &[3]).is_err());
    }
}
