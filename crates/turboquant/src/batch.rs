//! Compression of whole (heads, seq, head_dim) tensors, and attention scores of
//! full-precision queries against compressed keys, with grouped-query attention.
//!
//! Tensors are flat row-major `&[f32]` described by a [`Shape`]. Query tensors use the same
//! struct with `seq` = the number of query rows. With `q_heads = g · kv_heads`, query head h
//! reads KV head h / g (consecutive query heads share a KV head, as in llama.cpp). All heads
//! share one quantizer (one rotation, one QJL matrix). Work is split over heads with
//! scoped threads ([`crate::parallel::map`]).

use std::sync::Arc;

use crate::error::{check_finite, check_len, Error, Result};
use crate::linalg;
use crate::mse::{QuantizerOptions, TurboQuantMse};
use crate::parallel;
use crate::prod::TurboQuantProd;
use crate::store::{mse_scores, MseStore, ProdStore};

/// The shape of a (heads, seq, head_dim) row-major tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of heads.
    pub heads: usize,
    /// Tokens (or query rows) per head.
    pub seq: usize,
    /// Vector length.
    pub head_dim: usize,
}

impl Shape {
    /// A shape.
    pub fn new(heads: usize, seq: usize, head_dim: usize) -> Self {
        Self {
            heads,
            seq,
            head_dim,
        }
    }

    /// heads · seq · head_dim (saturating at `usize::MAX`).
    pub fn len(&self) -> usize {
        self.checked_len().unwrap_or(usize::MAX)
    }

    fn checked_len(&self) -> Option<usize> {
        self.heads.checked_mul(self.seq)?.checked_mul(self.head_dim)
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, what: &'static str, data: &[f32]) -> Result<()> {
        if self.heads == 0 || self.head_dim == 0 {
            return Err(Error::InvalidInput(format!(
                "{what}: shape {self:?} has no heads or zero head_dim"
            )));
        }
        let Some(len) = self.checked_len() else {
            return Err(Error::InvalidInput(format!(
                "{what}: shape {self:?} overflows"
            )));
        };
        check_len(what, len, data.len())
    }

    fn head<'a>(&self, data: &'a [f32], h: usize) -> &'a [f32] {
        let n = self.seq * self.head_dim;
        &data[h * n..(h + 1) * n]
    }
}

/// How keys are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KeyMethod {
    /// [`TurboQuantProd`]: unbiased scores (b-1 bits MSE + 1 bit QJL).
    #[default]
    Prod,
    /// [`TurboQuantMse`] at the full b bits: lower variance, biased (shrunk) scores.
    Mse,
}

/// Settings of a [`BatchCompressor`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// The key quantizer.
    pub key_method: KeyMethod,
    /// Bits per key coordinate (1..=8 for Prod, 1..=8 for Mse).
    pub key_bits: u8,
    /// Bits per value coordinate (1..=8).
    pub value_bits: u8,
    /// Seed of the rotations and the QJL matrix.
    pub seed: u64,
    /// Rotation and codebook options.
    pub options: QuantizerOptions,
    /// Worker threads; 0 = the machine's available parallelism.
    pub threads: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            key_method: KeyMethod::Prod,
            key_bits: 4,
            value_bits: 4,
            seed: 0,
            options: QuantizerOptions::default(),
            threads: 0,
        }
    }
}

#[derive(Debug, Clone)]
enum KeyQuantizer {
    Prod(Arc<TurboQuantProd>),
    Mse(Arc<TurboQuantMse>),
}

/// Compresses key and value tensors of one head dimension.
#[derive(Debug, Clone)]
pub struct BatchCompressor {
    head_dim: usize,
    threads: usize,
    keys: KeyQuantizer,
    values: Arc<TurboQuantMse>,
}

impl BatchCompressor {
    /// Builds the quantizers for `head_dim`.
    pub fn new(head_dim: usize, config: &BatchConfig) -> Result<Self> {
        let keys = match config.key_method {
            KeyMethod::Prod => KeyQuantizer::Prod(Arc::new(TurboQuantProd::with_options(
                head_dim,
                config.key_bits,
                config.seed,
                &config.options,
            )?)),
            KeyMethod::Mse => KeyQuantizer::Mse(Arc::new(TurboQuantMse::with_options(
                head_dim,
                config.key_bits,
                config.seed,
                &config.options,
            )?)),
        };
        let values = Arc::new(TurboQuantMse::with_options(
            head_dim,
            config.value_bits,
            config.seed ^ 0x9E37_79B9_7F4A_7C15,
            &config.options,
        )?);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        Ok(Self {
            head_dim,
            threads,
            keys,
            values,
        })
    }

    /// The head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    fn check_shape(&self, what: &'static str, shape: Shape, data: &[f32]) -> Result<()> {
        shape.check(what, data)?;
        check_len("head_dim", self.head_dim, shape.head_dim)?;
        check_finite(what, data)
    }

    /// Compresses a (kv_heads, seq, head_dim) key tensor.
    pub fn compress_keys(&self, keys: &[f32], shape: Shape) -> Result<CompressedKeys> {
        self.check_shape("keys", shape, keys)?;
        let d = self.head_dim;
        let stores = match &self.keys {
            KeyQuantizer::Prod(q) => {
                let heads = parallel::map((0..shape.heads).collect(), self.threads, |h| {
                    let mut store = ProdStore::new(q);
                    for x in shape.head(keys, h).chunks_exact(d) {
                        store.push(&q.quantize(x)?);
                    }
                    Ok(store)
                })
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
                KeyStores::Prod(Arc::clone(q), heads)
            }
            KeyQuantizer::Mse(q) => {
                let heads = compress_mse(q, keys, shape, self.threads)?;
                KeyStores::Mse(Arc::clone(q), heads)
            }
        };
        Ok(CompressedKeys {
            shape,
            threads: self.threads,
            stores,
        })
    }

    /// Compresses a (kv_heads, seq, head_dim) value tensor.
    pub fn compress_values(&self, values: &[f32], shape: Shape) -> Result<CompressedValues> {
        self.check_shape("values", shape, values)?;
        Ok(CompressedValues {
            shape,
            threads: self.threads,
            quantizer: Arc::clone(&self.values),
            heads: compress_mse(&self.values, values, shape, self.threads)?,
        })
    }
}

fn compress_mse(
    q: &TurboQuantMse,
    data: &[f32],
    shape: Shape,
    threads: usize,
) -> Result<Vec<MseStore>> {
    parallel::map((0..shape.heads).collect(), threads, |h| {
        let mut store = MseStore::new(q);
        for x in shape.head(data, h).chunks_exact(shape.head_dim) {
            store.push(&q.quantize(x)?);
        }
        Ok(store)
    })
    .into_iter()
    .collect()
}

#[derive(Debug, Clone)]
enum KeyStores {
    Prod(Arc<TurboQuantProd>, Vec<ProdStore>),
    Mse(Arc<TurboQuantMse>, Vec<MseStore>),
}

/// A compressed key tensor.
#[derive(Debug, Clone)]
pub struct CompressedKeys {
    shape: Shape,
    threads: usize,
    stores: KeyStores,
}

/// Checks a (q_heads, n_q, head_dim) query tensor against a KV shape; returns the group size.
fn check_queries(kv: Shape, queries: &[f32], q_shape: Shape) -> Result<usize> {
    q_shape.check("queries", queries)?;
    check_len("query head_dim", kv.head_dim, q_shape.head_dim)?;
    check_finite("queries", queries)?;
    if q_shape.heads % kv.heads != 0 {
        return Err(Error::InvalidInput(format!(
            "{} query heads are not a multiple of {} KV heads",
            q_shape.heads, kv.heads
        )));
    }
    Ok(q_shape.heads / kv.heads)
}

impl CompressedKeys {
    /// The (kv_heads, seq, head_dim) shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Attention logits q·k̃/√head_dim of full-precision queries (q_heads, n_q, head_dim)
    /// against the compressed keys, as a (q_heads, n_q, seq) tensor. q_heads must be a
    /// multiple of the KV heads (grouped-query attention).
    pub fn attention_scores(&self, queries: &[f32], q_shape: Shape) -> Result<Vec<f32>> {
        let group = check_queries(self.shape, queries, q_shape)?;
        let d = self.shape.head_dim;
        let seq = self.shape.seq;
        let scale = 1.0 / (d as f32).sqrt();
        let per_head = parallel::map((0..q_shape.heads).collect(), self.threads, |h| {
            let kv = h / group;
            let mut out = vec![0.0f32; q_shape.seq * seq];
            let mut scratch = vec![0u8; d];
            for (q, row) in q_shape
                .head(queries, h)
                .chunks_exact(d)
                .zip(out.chunks_exact_mut(seq.max(1)))
            {
                match &self.stores {
                    KeyStores::Prod(quantizer, stores) => {
                        let prepared = quantizer.prepare_query(q)?;
                        stores[kv].scores(quantizer, &prepared, scale, &mut scratch, row);
                    }
                    KeyStores::Mse(quantizer, stores) => {
                        let prepared = quantizer.prepare_query(q)?;
                        mse_scores(
                            &stores[kv],
                            quantizer,
                            &prepared.rotated,
                            scale,
                            &mut scratch,
                            row,
                        );
                    }
                }
            }
            Ok(out)
        });
        let mut out = Vec::with_capacity(q_shape.heads * q_shape.seq * seq);
        for head in per_head {
            out.extend(head?);
        }
        Ok(out)
    }

    /// The reconstructed (kv_heads, seq, head_dim) key tensor.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.shape.len());
        for h in 0..self.shape.heads {
            for t in 0..self.shape.seq {
                match &self.stores {
                    KeyStores::Prod(q, stores) => out.extend(q.dequantize(&stores[h].code(t))?),
                    KeyStores::Mse(q, stores) => out.extend(q.dequantize(&stores[h].code(t))?),
                }
            }
        }
        Ok(out)
    }

    /// Bytes of compressed payload.
    pub fn storage_bytes(&self) -> usize {
        match &self.stores {
            KeyStores::Prod(_, s) => s.iter().map(ProdStore::bytes).sum(),
            KeyStores::Mse(_, s) => s.iter().map(MseStore::bytes).sum(),
        }
    }

    /// Bytes of the same tensor in f16.
    pub fn f16_bytes(&self) -> usize {
        2 * self.shape.len()
    }
}

/// A compressed value tensor.
#[derive(Debug, Clone)]
pub struct CompressedValues {
    shape: Shape,
    threads: usize,
    quantizer: Arc<TurboQuantMse>,
    heads: Vec<MseStore>,
}

impl CompressedValues {
    /// The (kv_heads, seq, head_dim) shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The reconstructed (kv_heads, seq, head_dim) value tensor.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.shape.len());
        for store in &self.heads {
            for t in 0..self.shape.seq {
                out.extend(self.quantizer.dequantize(&store.code(t))?);
            }
        }
        Ok(out)
    }

    /// The attention output P·Ṽ for attention weights `probs` of shape (q_heads, n_q, seq)
    /// (e.g. the row-wise softmax of the scores), as (q_heads, n_q, head_dim). Accumulates in
    /// the rotated basis and rotates back once per row.
    pub fn attention_output(&self, probs: &[f32], q_heads: usize, n_q: usize) -> Result<Vec<f32>> {
        let seq = self.shape.seq;
        let d = self.shape.head_dim;
        check_len("attention weights", q_heads * n_q * seq, probs.len())?;
        check_finite("attention weights", probs)?;
        if q_heads == 0 || q_heads % self.shape.heads != 0 {
            return Err(Error::InvalidInput(format!(
                "{q_heads} query heads are not a multiple of {} KV heads",
                self.shape.heads
            )));
        }
        let group = q_heads / self.shape.heads;
        let per_head = parallel::map((0..q_heads).collect(), self.threads, |h| {
            let store = &self.heads[h / group];
            let mut out = vec![0.0f32; n_q * d];
            let mut rotated = vec![0.0f32; d];
            let mut scratch = vec![0u8; d];
            let weights = &probs[h * n_q * seq..(h + 1) * n_q * seq];
            for (w, o) in weights
                .chunks_exact(seq.max(1))
                .zip(out.chunks_exact_mut(d))
            {
                rotated.fill(0.0);
                store.weighted_sum_rotated(&self.quantizer, &w[..seq], &mut scratch, &mut rotated);
                self.quantizer
                    .rotation()
                    .apply_transpose_unchecked(&rotated, o);
            }
            out
        });
        Ok(per_head.concat())
    }

    /// Bytes of compressed payload.
    pub fn storage_bytes(&self) -> usize {
        self.heads.iter().map(MseStore::bytes).sum()
    }

    /// Bytes of the same tensor in f16.
    pub fn f16_bytes(&self) -> usize {
        2 * self.shape.len()
    }
}

/// Exact logits q·k/√head_dim, (q_heads, n_q, seq), for reference.
pub fn exact_attention_scores(
    keys: &[f32],
    k_shape: Shape,
    queries: &[f32],
    q_shape: Shape,
) -> Result<Vec<f32>> {
    k_shape.check("keys", keys)?;
    let group = check_queries(k_shape, queries, q_shape)?;
    let d = k_shape.head_dim;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = Vec::with_capacity(q_shape.heads * q_shape.seq * k_shape.seq);
    for h in 0..q_shape.heads {
        let k_head = k_shape.head(keys, h / group);
        for q in q_shape.head(queries, h).chunks_exact(d) {
            out.extend(k_head.chunks_exact(d).map(|k| scale * linalg::dot(q, k)));
        }
    }
    Ok(out)
}

/// Exact P·V, (q_heads, n_q, head_dim), for attention weights (q_heads, n_q, seq), for
/// reference.
pub fn exact_attention_output(
    probs: &[f32],
    values: &[f32],
    v_shape: Shape,
    q_heads: usize,
) -> Result<Vec<f32>> {
    v_shape.check("values", values)?;
    if q_heads == 0 || q_heads % v_shape.heads != 0 {
        return Err(Error::InvalidInput(format!(
            "{q_heads} query heads are not a multiple of {} KV heads",
            v_shape.heads
        )));
    }
    let seq = v_shape.seq;
    let d = v_shape.head_dim;
    if seq == 0 || probs.len() % (q_heads * seq) != 0 {
        return Err(Error::InvalidInput(
            "attention weights do not form (q_heads, n_q, seq)".into(),
        ));
    }
    let n_q = probs.len() / (q_heads * seq);
    let group = q_heads / v_shape.heads;
    let mut out = vec![0.0f32; q_heads * n_q * d];
    for h in 0..q_heads {
        let v_head = v_shape.head(values, h / group);
        for i in 0..n_q {
            let row = &probs[(h * n_q + i) * seq..(h * n_q + i + 1) * seq];
            let o = &mut out[(h * n_q + i) * d..(h * n_q + i + 1) * d];
            for (&p, v) in row.iter().zip(v_head.chunks_exact(d)) {
                linalg::axpy(p, v, o);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{cosine_similarity, softmax, FidelityAggregator};
    use crate::rng::random_normal;

    #[test]
    fn gqa_scores_match_exact_at_4_bits() {
        let d = 64;
        let k_shape = Shape::new(2, 100, d);
        let q_shape = Shape::new(8, 3, d);
        let keys = random_normal(k_shape.len(), 1);
        let queries = random_normal(q_shape.len(), 2);
        let exact = exact_attention_scores(&keys, k_shape, &queries, q_shape).unwrap();
        assert_eq!(exact.len(), 8 * 3 * 100);
        for method in [KeyMethod::Prod, KeyMethod::Mse] {
            let config = BatchConfig {
                key_method: method,
                threads: 2,
                ..Default::default()
            };
            let c = BatchCompressor::new(d, &config).unwrap();
            let ck = c.compress_keys(&keys, k_shape).unwrap();
            let est = ck.attention_scores(&queries, q_shape).unwrap();
            assert_eq!(est.len(), exact.len());
            let mut agg = FidelityAggregator::new();
            agg.add_tensor(&exact, &est, 8, 100).unwrap();
            let s = agg.summary();
            // Random, unstructured logits are the hardest case: the prod estimator's noise
            // (π/2)·D_3 ≈ 0.053 of the signal variance caps the cosine near 1/√1.053 ≈ 0.974;
            // the MSE keys' (biased, lower-variance) error D_4 ≈ 0.0093 allows ≈ 0.995.
            let floor = match method {
                KeyMethod::Prod => 0.965,
                KeyMethod::Mse => 0.99,
            };
            assert!(s.min_cosine > floor, "{method:?}: {s:?}");
            // Single-threaded gives the same numbers.
            let c1 = BatchCompressor::new(
                d,
                &BatchConfig {
                    threads: 1,
                    ..config.clone()
                },
            )
            .unwrap();
            let est1 = c1
                .compress_keys(&keys, k_shape)
                .unwrap()
                .attention_scores(&queries, q_shape)
                .unwrap();
            assert_eq!(est, est1);
            // Query head h uses KV head h / 4: recompute head 5 against KV head 1 by hand.
            let q5 = &queries[5 * 3 * d..5 * 3 * d + d];
            let k1 = &keys[100 * d..200 * d];
            let manual: Vec<f32> = k1
                .chunks_exact(d)
                .map(|k| linalg::dot(q5, k) / (d as f32).sqrt())
                .collect();
            let from_est = &est[5 * 300..5 * 300 + 100];
            assert!(cosine_similarity(&manual, from_est).unwrap() > floor);
            let deq = ck.dequantize().unwrap();
            // The same noise budget applies to reconstructed keys (‖x̃ - x‖² ≈ (π/2)·D_3 for
            // prod).
            assert!(cosine_similarity(&deq, &keys).unwrap() > floor);
        }
    }

    #[test]
    fn values_and_outputs() {
        let d = 32;
        let v_shape = Shape::new(2, 50, d);
        let values = random_normal(v_shape.len(), 3);
        let c = BatchCompressor::new(d, &BatchConfig::default()).unwrap();
        let cv = c.compress_values(&values, v_shape).unwrap();
        assert_eq!(cv.storage_bytes(), 2 * 50 * (d * 4 / 8 + 4));
        assert_eq!(cv.f16_bytes(), 2 * 50 * d * 2);
        let deq = cv.dequantize().unwrap();
        assert!(cosine_similarity(&deq, &values).unwrap() > 0.99);
        // Attention weights for 4 query heads, 2 rows each.
        let logits = random_normal(4 * 2 * 50, 4);
        let probs: Vec<f32> = logits.chunks_exact(50).flat_map(softmax).collect();
        let exact = exact_attention_output(&probs, &values, v_shape, 4).unwrap();
        let est = cv.attention_output(&probs, 4, 2).unwrap();
        assert_eq!(est.len(), 4 * 2 * d);
        assert!(cosine_similarity(&exact, &est).unwrap() > 0.98);
    }

    #[test]
    fn shape_errors() {
        let c = BatchCompressor::new(16, &BatchConfig::default()).unwrap();
        let keys = vec![0.5; 2 * 4 * 16];
        assert!(c.compress_keys(&keys, Shape::new(2, 4, 8)).is_err());
        assert!(c.compress_keys(&keys, Shape::new(2, 5, 16)).is_err());
        let ck = c.compress_keys(&keys, Shape::new(2, 4, 16)).unwrap();
        // 3 query heads over 2 KV heads is not GQA.
        assert!(ck
            .attention_scores(&[0.0; 3 * 16], Shape::new(3, 1, 16))
            .is_err());
        assert!(ck
            .attention_scores(&[0.0; 2 * 8], Shape::new(2, 1, 8))
            .is_err());
        assert!(c
            .compress_values(&[f32::NAN; 16], Shape::new(1, 1, 16))
            .is_err());
        // An empty sequence is fine.
        let empty = c.compress_keys(&[], Shape::new(2, 0, 16)).unwrap();
        assert!(empty
            .attention_scores(&[0.0; 32], Shape::new(2, 1, 16))
            .unwrap()
            .is_empty());
    }
}
