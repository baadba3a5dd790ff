//! KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML
//! 2024): plain asymmetric min/max integer quantization, arranged the way the KV cache's
//! outliers are arranged, as a baseline for TurboQuant.
//!
//! * **Keys per channel.** A few key channels carry large magnitudes for every token, so each
//!   channel is quantized on its own over a group of `group` consecutive tokens: its min and max
//!   over the group give a zero point z and a scale s = (max - min)/(2^b - 1), and each value is
//!   stored as round((x - z)/s) in b bits.
//! * **Values per token.** Values have no such channels; each token's vector is quantized in
//!   groups of `group` consecutive channels, with a zero point and scale per group.
//! * **A full-precision window.** The most recent `residual` tokens stay in full precision (the
//!   paper uses `residual` = 128, `group` = 32): keys can only be grouped along the sequence once
//!   a whole group has arrived, and recent tokens draw most of the attention.
//!
//! Scales and zero points are f16 (KIVI keeps them in the model's half precision), and the
//! quantization uses the rounded f16 values, so what is decoded is exactly what is stored. The
//! full-precision window is stored as f16 too (the cache's own precision).
//! [`KiviTensor::storage_bits`] counts everything stored: b bits per quantized value, 2 × 16 bits
//! per group, 16 bits per window value. The window's share shrinks as the context grows: with b = 2, G = 32
//! and R = 128, keys take 3 bits per quantized value, 3.81 bits per value at 2048 tokens and
//! 3.20 at 8192 (window [`KeyWindow::Fixed`]).

use half::f16;

use crate::batch::{exact_attention_output, exact_attention_scores, Shape};
use crate::bitpack;
use crate::codebook::check_bits;
use crate::error::{check_finite, check_len, Error, Result};

/// Which full-precision window the keys keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KeyWindow {
    /// The last `residual` tokens stay in full precision, and so do the tokens just before them
    /// that do not fill a whole group of `group` tokens (fewer than `group`): the first
    /// ⌊(n - R)/G⌋·G tokens of n are quantized. Keys and values then keep (about) the same
    /// window, whatever the context length.
    #[default]
    Fixed,
    /// What KIVI's reference implementation holds after reading a prompt of n tokens: keys are
    /// quantized in blocks of `residual` tokens, so the first ⌊n/R⌋·R are quantized and only
    /// n mod R stay in full precision (none when n is a multiple of R); during generation the
    /// window grows to R tokens and is then quantized at once. Needs `residual` to be a
    /// positive multiple of `group`. Values keep their last R tokens either way.
    Streaming,
}

/// Settings of [`Kivi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KiviConfig {
    /// Bits per quantized key value (1..=8; the paper's KIVI-2 and KIVI-4 use 2 and 4).
    pub key_bits: u8,
    /// Bits per quantized value entry (1..=8).
    pub value_bits: u8,
    /// Group size G: tokens per key group, channels per value group.
    pub group: usize,
    /// The full-precision window R, in tokens.
    pub residual: usize,
    /// How the keys' window is laid out.
    pub key_window: KeyWindow,
}

impl Default for KiviConfig {
    /// The paper's setting: 2 bits, G = 32, R = 128.
    fn default() -> Self {
        Self {
            key_bits: 2,
            value_bits: 2,
            group: 32,
            residual: 128,
            key_window: KeyWindow::Fixed,
        }
    }
}

/// The KIVI compressor for (heads, tokens, head_dim) key and value tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kivi {
    config: KiviConfig,
}

/// Along which axis a [`KiviTensor`]'s groups run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KiviAxis {
    /// Keys: one channel over `group` consecutive tokens.
    Channel,
    /// Values: one token over `group` consecutive channels.
    Token,
}

/// Checks a (heads, seq, head_dim) tensor: no zero-sized head, the right length, finite values.
pub(crate) fn check_tensor(what: &'static str, shape: Shape, data: &[f32]) -> Result<()> {
    if shape.heads == 0 || shape.head_dim == 0 {
        return Err(Error::InvalidInput(format!(
            "{what}: shape {shape:?} has no heads or zero head_dim"
        )));
    }
    let len = shape
        .heads
        .checked_mul(shape.seq)
        .and_then(|n| n.checked_mul(shape.head_dim))
        .ok_or_else(|| Error::InvalidInput(format!("{what}: shape {shape:?} overflows")))?;
    check_len(what, len, data.len())?;
    check_finite(what, data)
}

impl Kivi {
    /// A compressor; the bit widths must be in 1..=8, the group positive, and with
    /// [`KeyWindow::Streaming`] the window a positive multiple of the group.
    pub fn new(config: &KiviConfig) -> Result<Self> {
        check_bits(config.key_bits)?;
        check_bits(config.value_bits)?;
        if config.group == 0 {
            return Err(Error::InvalidInput(
                "the KIVI group size must be positive".into(),
            ));
        }
        if config.key_window == KeyWindow::Streaming
            && (config.residual == 0 || config.residual % config.group != 0)
        {
            return Err(Error::InvalidInput(format!(
                "a streaming key window needs a residual ({}) that is a positive multiple of the group ({})",
                config.residual, config.group
            )));
        }
        Ok(Self { config: *config })
    }

    /// The settings.
    pub fn config(&self) -> &KiviConfig {
        &self.config
    }

    /// How many of the first keys of an `n`-token sequence are quantized (the rest stay in full
    /// precision); always a multiple of the group.
    pub fn quantized_keys(&self, n: usize) -> usize {
        let (g, r) = (self.config.group, self.config.residual);
        match self.config.key_window {
            KeyWindow::Fixed => n.saturating_sub(r) / g * g,
            KeyWindow::Streaming => n / r * r,
        }
    }

    /// How many of the first values of an `n`-token sequence are quantized: all but the last
    /// `residual`.
    pub fn quantized_values(&self, n: usize) -> usize {
        n.saturating_sub(self.config.residual)
    }

    /// Compresses a (kv_heads, tokens, head_dim) key tensor: per-channel groups along the
    /// tokens, the window in f16.
    pub fn compress_keys(&self, keys: &[f32], shape: Shape) -> Result<KiviTensor> {
        check_tensor("keys", shape, keys)?;
        let quantized = self.quantized_keys(shape.seq);
        self.compress(
            keys,
            shape,
            KiviAxis::Channel,
            self.config.key_bits,
            quantized,
        )
    }

    /// Compresses a (kv_heads, tokens, head_dim) value tensor: per-token groups along the
    /// channels, the window in f16.
    pub fn compress_values(&self, values: &[f32], shape: Shape) -> Result<KiviTensor> {
        check_tensor("values", shape, values)?;
        let quantized = self.quantized_values(shape.seq);
        self.compress(
            values,
            shape,
            KiviAxis::Token,
            self.config.value_bits,
            quantized,
        )
    }

    fn compress(
        &self,
        data: &[f32],
        shape: Shape,
        axis: KiviAxis,
        bits: u8,
        quantized: usize,
    ) -> Result<KiviTensor> {
        let d = shape.head_dim;
        let g = self.config.group;
        let per_head = shape.seq * d;
        let mut heads = Vec::with_capacity(shape.heads);
        for head in data.chunks_exact(per_head.max(1)).take(shape.heads) {
            let mut indices = vec![0u8; quantized * d];
            let mut params = Vec::new();
            match axis {
                KiviAxis::Channel => {
                    let mut column = vec![0f32; g];
                    let mut column_indices = vec![0u8; g];
                    for start in (0..quantized).step_by(g) {
                        for c in 0..d {
                            for (i, v) in column.iter_mut().enumerate() {
                                *v = head[(start + i) * d + c];
                            }
                            params.push(affine(&column, bits, &mut column_indices)?);
                            for (i, &q) in column_indices.iter().enumerate() {
                                indices[(start + i) * d + c] = q;
                            }
                        }
                    }
                }
                KiviAxis::Token => {
                    for (x, idx) in head[..quantized * d]
                        .chunks_exact(d)
                        .zip(indices.chunks_exact_mut(d))
                    {
                        for (xg, ig) in x.chunks(g).zip(idx.chunks_mut(g)) {
                            params.push(affine(xg, bits, ig)?);
                        }
                    }
                }
            }
            let window = head[quantized * d..]
                .iter()
                .map(|&v| to_f16("the full-precision window", v))
                .collect::<Result<Vec<_>>>()?;
            heads.push(KiviHead {
                codes: bitpack::pack(&indices, bits)?,
                params,
                window,
            });
        }
        Ok(KiviTensor {
            shape,
            axis,
            bits,
            group: g,
            quantized,
            heads,
        })
    }
}

fn to_f16(what: &str, v: f32) -> Result<f16> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Error::InvalidInput(format!(
            "{what}: {v} is beyond the f16 range KIVI stores"
        )))
    }
}

/// Asymmetric min/max quantization of one group into `out` (b-bit indices); returns the f16
/// (scale, zero point) it used.
fn affine(values: &[f32], bits: u8, out: &mut [u8]) -> Result<(f16, f16)> {
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let top = ((1u32 << bits) - 1) as f32;
    let zero = to_f16("a zero point", lo)?;
    let scale = to_f16("a scale", (hi - lo) / top)?;
    let (z, s) = (zero.to_f32(), scale.to_f32());
    for (o, &v) in out.iter_mut().zip(values) {
        // a constant group (or one whose range underflows f16) decodes to its zero point
        *o = if s > 0.0 {
            ((v - z) / s).round().clamp(0.0, top) as u8
        } else {
            0
        };
    }
    Ok((scale, zero))
}

#[derive(Debug, Clone, PartialEq)]
struct KiviHead {
    /// The quantized tokens' indices, token-major (token t, channel c at t·d + c), bit-packed.
    codes: Vec<u8>,
    /// (scale, zero point) per group: keys group-major then channel (g·d + c), values token-major
    /// then channel group.
    params: Vec<(f16, f16)>,
    /// The full-precision tokens, token-major.
    window: Vec<f16>,
}

/// A KIVI-compressed key or value tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct KiviTensor {
    shape: Shape,
    axis: KiviAxis,
    bits: u8,
    group: usize,
    quantized: usize,
    heads: Vec<KiviHead>,
}

impl KiviTensor {
    /// The (heads, tokens, head_dim) shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The axis the groups run along.
    pub fn axis(&self) -> KiviAxis {
        self.axis
    }

    /// Bits per quantized value.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// How many leading tokens are quantized (the rest are stored in f16).
    pub fn quantized_tokens(&self) -> usize {
        self.quantized
    }

    /// How many trailing tokens are stored in f16.
    pub fn full_precision_tokens(&self) -> usize {
        self.shape.seq - self.quantized
    }

    /// Every bit stored: b per quantized value, 16 for each group's scale and for its zero
    /// point, 16 per value of the window.
    pub fn storage_bits(&self) -> u64 {
        let d = self.shape.head_dim as u64;
        self.heads
            .iter()
            .map(|h| {
                self.quantized as u64 * d * u64::from(self.bits)
                    + 32 * h.params.len() as u64
                    + 16 * h.window.len() as u64
            })
            .sum()
    }

    /// [`Self::storage_bits`] per value of the tensor (0 for an empty one).
    pub fn bits_per_value(&self) -> f64 {
        let values = self.shape.len();
        if values == 0 {
            0.0
        } else {
            self.storage_bits() as f64 / values as f64
        }
    }

    /// The reconstructed (heads, tokens, head_dim) tensor.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let d = self.shape.head_dim;
        let g = self.group;
        let mut out = Vec::with_capacity(self.shape.len());
        for head in &self.heads {
            let indices = bitpack::unpack(&head.codes, self.bits, self.quantized * d)?;
            let start = out.len();
            out.extend(indices.iter().map(|&q| f32::from(q)));
            let quantized = &mut out[start..];
            match self.axis {
                KiviAxis::Channel => {
                    let groups = quantized.chunks_exact_mut(g * d);
                    for (block, params) in groups.zip(head.params.chunks_exact(d)) {
                        for row in block.chunks_exact_mut(d) {
                            for (v, &(s, z)) in row.iter_mut().zip(params) {
                                *v = z.to_f32() + s.to_f32() * *v;
                            }
                        }
                    }
                }
                KiviAxis::Token => {
                    let per_token = d.div_ceil(g);
                    for (row, params) in quantized
                        .chunks_exact_mut(d)
                        .zip(head.params.chunks_exact(per_token))
                    {
                        for (part, &(s, z)) in row.chunks_mut(g).zip(params) {
                            for v in part {
                                *v = z.to_f32() + s.to_f32() * *v;
                            }
                        }
                    }
                }
            }
            out.extend(head.window.iter().map(|v| v.to_f32()));
        }
        Ok(out)
    }

    /// Attention logits q·k̃/√head_dim of full-precision queries (q_heads, n_q, head_dim)
    /// against these (key) tensor's tokens, as (q_heads, n_q, tokens); q_heads must be a
    /// multiple of the tensor's heads (grouped-query attention, as in [`crate::batch`]).
    pub fn attention_scores(&self, queries: &[f32], q_shape: Shape) -> Result<Vec<f32>> {
        exact_attention_scores(&self.dequantize()?, self.shape, queries, q_shape)
    }

    /// The attention output P·Ṽ, (q_heads, n_q, head_dim), of attention weights
    /// (q_heads, n_q, tokens) over these (value) tensor's tokens.
    pub fn attention_output(&self, probs: &[f32], q_heads: usize) -> Result<Vec<f32>> {
        exact_attention_output(probs, &self.dequantize()?, self.shape, q_heads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::random_normal;

    fn mse(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            / a.len() as f64
    }

    fn kivi(bits: u8, group: usize, residual: usize, key_window: KeyWindow) -> Kivi {
        Kivi::new(&KiviConfig {
            key_bits: bits,
            value_bits: bits,
            group,
            residual,
            key_window,
        })
        .unwrap()
    }

    #[test]
    fn the_window_is_stored_exactly_in_f16() {
        let shape = Shape::new(2, 300, 64);
        let x = random_normal(shape.len(), 1);
        let k = kivi(2, 32, 128, KeyWindow::Fixed);
        let keys = k.compress_keys(&x, shape).unwrap();
        // 300 - 128 = 172 tokens before the window, of which 5 whole groups of 32
        assert_eq!(keys.quantized_tokens(), 160);
        assert_eq!(keys.full_precision_tokens(), 140);
        let values = k.compress_values(&x, shape).unwrap();
        assert_eq!(values.quantized_tokens(), 172);
        for t in [&keys, &values] {
            let deq = t.dequantize().unwrap();
            let q = t.quantized_tokens();
            for h in 0..2 {
                for i in q * 64..300 * 64 {
                    let j = h * 300 * 64 + i;
                    assert_eq!(deq[j], f16::from_f32(x[j]).to_f32());
                }
                // and the quantized part is not
                let j = h * 300 * 64;
                assert!(deq[j..j + q * 64] != x[j..j + q * 64]);
            }
        }
    }

    #[test]
    fn every_value_is_within_half_a_step() {
        let shape = Shape::new(1, 96, 40);
        let x: Vec<f32> = random_normal(shape.len(), 2)
            .iter()
            .enumerate()
            // an outlier channel: per-channel groups must not let it spoil the others
            .map(|(i, v)| if i % 40 == 3 { 50.0 + v } else { *v })
            .collect();
        for bits in [1, 2, 4, 8] {
            let k = kivi(bits, 32, 0, KeyWindow::Fixed);
            for (t, axis) in [
                (k.compress_keys(&x, shape).unwrap(), KiviAxis::Channel),
                (k.compress_values(&x, shape).unwrap(), KiviAxis::Token),
            ] {
                assert_eq!(t.axis(), axis);
                assert_eq!(t.full_precision_tokens(), 0);
                let deq = t.dequantize().unwrap();
                // the largest step of any group: the group's range over 2^b - 1, plus f16
                // rounding of scale and zero point
                for (i, (a, b)) in x.iter().zip(&deq).enumerate() {
                    let (tok, c) = (i / 40, i % 40);
                    let group: Vec<f32> = match axis {
                        KiviAxis::Channel => (tok / 32 * 32..tok / 32 * 32 + 32)
                            .map(|u| x[u * 40 + c])
                            .collect(),
                        KiviAxis::Token => {
                            let start = c / 32 * 32;
                            x[tok * 40 + start..tok * 40 + (start + 32).min(40)].to_vec()
                        }
                    };
                    let lo = group.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
                    let slack = 2e-3 * hi.abs().max(lo.abs()) + 1e-6;
                    assert!(
                        (a - b).abs() <= 0.5 * step + slack,
                        "{axis:?} {bits} bits at {i}: {a} vs {b}, step {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn error_falls_with_bits_as_a_uniform_quantizer_predicts() {
        // Gaussian data in groups of 32: the range is about 4.1σ, the step 4.1σ/(2^b - 1) and
        // the error about step²/12: 0.156, 0.029 and 0.0062 (measured: 0.156, 0.028, 0.0061).
        let shape = Shape::new(2, 512, 64);
        let x = random_normal(shape.len(), 3);
        let mut last = f64::INFINITY;
        for (bits, lo, hi) in [(2, 0.13, 0.18), (3, 0.024, 0.033), (4, 0.0052, 0.0072)] {
            let k = kivi(bits, 32, 0, KeyWindow::Fixed);
            let keys = mse(
                &x,
                &k.compress_keys(&x, shape).unwrap().dequantize().unwrap(),
            );
            let values = mse(
                &x,
                &k.compress_values(&x, shape).unwrap().dequantize().unwrap(),
            );
            for e in [keys, values] {
                assert!((lo..hi).contains(&e), "{bits} bits: mse {e}");
                assert!(e < last);
            }
            last = keys.min(values);
        }
    }

    #[test]
    fn bit_accounting_matches_an_independent_count() {
        let (heads, n, d) = (3, 300, 64);
        let shape = Shape::new(heads, n, d);
        let x = random_normal(shape.len(), 4);
        for bits in [2u64, 4] {
            let k = kivi(bits as u8, 32, 128, KeyWindow::Fixed);
            let keys = k.compress_keys(&x, shape).unwrap();
            // 160 quantized tokens = 5 groups × 64 channels, each 32 bits of scale and zero; 140
            // tokens of 64 f16 values
            let expected = heads as u64 * (160 * 64 * bits + 5 * 64 * 32 + 140 * 64 * 16);
            assert_eq!(keys.storage_bits(), expected);
            let bpv = expected as f64 / (heads * n * d) as f64;
            assert!((keys.bits_per_value() - bpv).abs() < 1e-12);
            // 172 quantized tokens with 2 groups of 32 channels each, 128 f16 tokens
            let values = k.compress_values(&x, shape).unwrap();
            let expected = heads as u64 * (172 * 64 * bits + 172 * 2 * 32 + 128 * 64 * 16);
            assert_eq!(values.storage_bits(), expected);
        }
        // the paper's setting at long contexts: 3 bits per quantized key value, plus the window
        let k = Kivi::new(&KiviConfig::default()).unwrap();
        for (n, bpv) in [(2048, 3.8125), (8192, 3.203125)] {
            let shape = Shape::new(1, n, 64);
            let keys = k.compress_keys(&vec![0.5; n * 64], shape).unwrap();
            assert!((keys.bits_per_value() - bpv).abs() < 1e-9, "{n}");
        }
        // a head size that is not a multiple of the group: values get a short last group
        let shape = Shape::new(1, 10, 40);
        let x = random_normal(shape.len(), 5);
        let values = kivi(3, 32, 4, KeyWindow::Fixed)
            .compress_values(&x, shape)
            .unwrap();
        assert_eq!(values.storage_bits(), 6 * 40 * 3 + 6 * 2 * 32 + 4 * 40 * 16);
    }

    #[test]
    fn streaming_window_follows_the_reference_code() {
        let k = kivi(2, 32, 128, KeyWindow::Streaming);
        assert_eq!(k.quantized_keys(300), 256);
        assert_eq!(k.quantized_keys(2048), 2048);
        assert_eq!(k.quantized_keys(100), 0);
        assert_eq!(k.quantized_values(300), 172);
        let fixed = kivi(2, 32, 128, KeyWindow::Fixed);
        assert_eq!(fixed.quantized_keys(2048), 1920);
        assert_eq!(fixed.quantized_keys(100), 0);
        // 128 tokens quantized in 4 groups, the last 44 exact
        let shape = Shape::new(1, 172, 16);
        let x = random_normal(shape.len(), 6);
        let keys = k.compress_keys(&x, shape).unwrap();
        assert_eq!(keys.full_precision_tokens(), 44);
        assert_eq!(
            keys.storage_bits(),
            128 * 16 * 2 + 4 * 16 * 32 + 44 * 16 * 16
        );
    }

    #[test]
    fn constant_groups_and_scores() {
        // a channel that is constant over a group is reproduced exactly (scale 0)
        let shape = Shape::new(1, 64, 8);
        let mut x = random_normal(shape.len(), 7);
        for t in 0..64 {
            x[t * 8 + 2] = 1.25;
        }
        let k = kivi(2, 32, 0, KeyWindow::Fixed);
        let keys = k.compress_keys(&x, shape).unwrap();
        let deq = keys.dequantize().unwrap();
        for t in 0..64 {
            assert_eq!(deq[t * 8 + 2], 1.25);
        }
        // scores are those of the reconstructed keys, with GQA
        let q_shape = Shape::new(2, 3, 8);
        let q = random_normal(q_shape.len(), 8);
        let scores = keys.attention_scores(&q, q_shape).unwrap();
        assert_eq!(
            scores,
            exact_attention_scores(&deq, shape, &q, q_shape).unwrap()
        );
        let probs = vec![1.0 / 64.0; 2 * 3 * 64];
        let out = keys.attention_output(&probs, 2).unwrap();
        assert_eq!(out.len(), 2 * 3 * 8);
    }

    #[test]
    fn bad_input_is_an_error() {
        let bad = |c: KiviConfig| Kivi::new(&c).is_err();
        let base = KiviConfig::default();
        assert!(bad(KiviConfig {
            key_bits: 0,
            ..base
        }));
        assert!(bad(KiviConfig {
            value_bits: 9,
            ..base
        }));
        assert!(bad(KiviConfig { group: 0, ..base }));
        assert!(bad(KiviConfig {
            residual: 100,
            key_window: KeyWindow::Streaming,
            ..base
        }));
        let k = Kivi::new(&base).unwrap();
        assert!(k.compress_keys(&[0.0; 10], Shape::new(1, 2, 4)).is_err());
        assert!(k
            .compress_keys(&[f32::NAN; 8], Shape::new(1, 2, 4))
            .is_err());
        assert!(k.compress_values(&[1e6; 8], Shape::new(1, 2, 4)).is_err());
        assert!(k.compress_keys(&[], Shape::new(0, 2, 4)).is_err());
        // an empty sequence is fine
        let empty = k.compress_keys(&[], Shape::new(2, 0, 4)).unwrap();
        assert_eq!(empty.bits_per_value(), 0.0);
        assert!(empty.dequantize().unwrap().is_empty());
    }
}
