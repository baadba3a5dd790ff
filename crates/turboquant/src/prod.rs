//! TurboQuant_prod: unbiased inner products from TurboQuant_mse at b-1 bits plus a 1-bit
//! quantized Johnson-Lindenstrauss (QJL) sketch of the residual.
//!
//! Code: the (b-1)-bit MSE code of x (none when b = 1), γ = ‖r‖₂ for the residual
//! r = x - x̃_mse, and the d signs of S·r for a d×d matrix S of iid N(0, 1) entries.
//! Reconstruction: x̃ = x̃_mse + √(π/2)/d · γ · Sᵀ·signs, which satisfies E_S[x̃] = x, so
//! E[⟨y, x̃⟩] = ⟨y, x⟩ for every y.
//!
//! Implementation note: S acts on the residual expressed in the MSE stage's rotated basis,
//! i.e. the sketch is sign(S·Π·r). Since Π is orthogonal and independent of S, S·Π has iid
//! N(0, 1) entries too, so this is the paper's estimator exactly; it saves a rotation per
//! vector. With b = 1 there is no MSE stage and S acts on x directly.

use std::f32::consts::PI;

use crate::bitpack;
use crate::codebook::MAX_BITS;
use crate::error::{check_finite, check_len, Error, Result};
use crate::linalg;
use crate::mse::{MseCode, QuantizerOptions, TurboQuantMse};
use crate::rng::{SeededRng, Stream};

/// A compressed vector for unbiased inner products.
#[derive(Debug, Clone, PartialEq)]
pub struct ProdCode {
    /// The (b-1)-bit TurboQuant_mse code, `None` when b = 1.
    pub mse: Option<MseCode>,
    /// d sign bits of S·r (bit set = non-negative), packed as 1-bit indices.
    pub signs: Vec<u8>,
    /// γ = ‖r‖₂, the residual norm.
    pub residual_norm: f32,
}

/// A query prepared for many [`TurboQuantProd::inner_product_prepared`] calls: rotated once for
/// the MSE part and projected by S once for the QJL part (with a per-byte lookup table of
/// partial sums of S·q, so each code costs d/8 lookups for its signs).
#[derive(Debug, Clone, PartialEq)]
pub struct ProdQuery {
    pub(crate) rotated: Vec<f32>,
    /// For sign byte k and byte value v: Σ over the set bits t of v of (S·q)[8k + t].
    pub(crate) sign_table: Vec<f32>,
    pub(crate) projected_sum: f32,
}

/// The inner-product-unbiased TurboQuant quantizer for dimension `dim` at `bits` bits per
/// coordinate (b-1 for the MSE stage, 1 for the QJL signs).
#[derive(Debug, Clone, PartialEq)]
pub struct TurboQuantProd {
    dim: usize,
    bits: u8,
    mse: Option<TurboQuantMse>,
    /// Row-major d×d iid N(0, 1).
    qjl: Vec<f32>,
}

impl TurboQuantProd {
    /// A quantizer with the default options. `dim` ≥ 2, `bits` in 1..=8 (1 = QJL signs only).
    pub fn new(dim: usize, bits: u8, seed: u64) -> Result<Self> {
        Self::with_options(dim, bits, seed, &QuantizerOptions::default())
    }

    /// A quantizer with explicit options for its MSE stage (a custom codebook must have
    /// bits - 1 bits).
    pub fn with_options(
        dim: usize,
        bits: u8,
        seed: u64,
        options: &QuantizerOptions,
    ) -> Result<Self> {
        if !(1..=MAX_BITS).contains(&bits) {
            return Err(Error::InvalidBits {
                bits,
                min: 1,
                max: MAX_BITS,
            });
        }
        if dim < 2 {
            return Err(Error::InvalidDimension {
                dim,
                reason: "TurboQuant needs dim >= 2",
            });
        }
        let mse = if bits > 1 {
            Some(TurboQuantMse::with_options(dim, bits - 1, seed, options)?)
        } else {
            // Still validate the rotation kind for this dimension, for consistent errors.
            crate::rotation::Rotation::new(options.rotation, dim, seed)?;
            None
        };
        let qjl = SeededRng::new(seed, Stream::Qjl).normal_vec(dim * dim);
        Ok(Self {
            dim,
            bits,
            mse,
            qjl,
        })
    }

    /// The vector dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Total bits per coordinate b (the MSE stage uses b-1).
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The MSE stage, `None` when b = 1.
    pub fn mse_stage(&self) -> Option<&TurboQuantMse> {
        self.mse.as_ref()
    }

    /// The QJL matrix S, row-major d×d (acting in the MSE stage's rotated basis).
    pub fn qjl_matrix(&self) -> &[f32] {
        &self.qjl
    }

    /// Bytes of packed sign bits per vector.
    pub fn sign_bytes(&self) -> usize {
        bitpack::packed_len(self.dim, 1)
    }

    /// Storage per vector in bits: the MSE stage's (d·(b-1) + 32, if any), d sign bits and 32
    /// for γ.
    pub fn storage_bits(&self) -> usize {
        self.mse.as_ref().map_or(0, TurboQuantMse::storage_bits) + self.dim + 32
    }

    /// √(π/2)/d, the QJL reconstruction scale.
    fn qjl_scale(&self) -> f32 {
        (PI / 2.0).sqrt() / self.dim as f32
    }

    /// Compresses `x` (length d, finite values).
    pub fn quantize(&self, x: &[f32]) -> Result<ProdCode> {
        check_len("vector", self.dim, x.len())?;
        check_finite("vector", x)?;
        let d = self.dim;
        let mut residual = vec![0.0; d];
        let mse = match &self.mse {
            Some(stage) => {
                let mut indices = vec![0u8; d];
                let norm = stage.encode(x, &mut residual, &mut indices);
                let centroids = stage.codebook().centroids();
                for (r, &i) in residual.iter_mut().zip(&indices) {
                    *r -= norm * centroids[i as usize];
                }
                let mut packed = vec![0u8; stage.index_bytes()];
                bitpack::pack_unchecked(&indices, stage.bits(), &mut packed);
                Some(MseCode {
                    norm,
                    indices: packed,
                })
            }
            None => {
                residual.copy_from_slice(x);
                None
            }
        };
        let residual_norm = linalg::norm(&residual);
        let mut projected = vec![0.0; d];
        linalg::matvec(&self.qjl, &residual, &mut projected);
        let sign_bits: Vec<u8> = projected.iter().map(|&p| u8::from(p >= 0.0)).collect();
        let mut signs = vec![0u8; self.sign_bytes()];
        bitpack::pack_unchecked(&sign_bits, 1, &mut signs);
        Ok(ProdCode {
            mse,
            signs,
            residual_norm,
        })
    }

    /// Reconstructs x̃ = x̃_mse + √(π/2)/d · γ · Sᵀ·signs.
    pub fn dequantize(&self, code: &ProdCode) -> Result<Vec<f32>> {
        self.check_code(code)?;
        let d = self.dim;
        let mut sign_values = vec![0u8; d];
        bitpack::unpack_unchecked(&code.signs, 1, &mut sign_values);
        let signed: Vec<f32> = sign_values
            .iter()
            .map(|&s| if s == 1 { 1.0 } else { -1.0 })
            .collect();
        let mut y = vec![0.0; d];
        linalg::matvec_transpose(&self.qjl, &signed, &mut y);
        let scale = self.qjl_scale() * code.residual_norm;
        y.iter_mut().for_each(|v| *v *= scale);
        match (&self.mse, &code.mse) {
            (Some(stage), Some(mse_code)) => {
                let mut rotated = vec![0.0; d];
                let mut scratch = vec![0u8; d];
                stage.decode_rotated(mse_code.norm, &mse_code.indices, &mut scratch, &mut rotated);
                linalg::axpy(1.0, &rotated, &mut y);
                let mut out = vec![0.0; d];
                stage.rotation().apply_transpose_unchecked(&y, &mut out);
                Ok(out)
            }
            _ => Ok(y),
        }
    }

    /// Prepares `query` (length d) for repeated unbiased inner products: one rotation, one
    /// d×d projection and a (d/8)×256 lookup table.
    pub fn prepare_query(&self, query: &[f32]) -> Result<ProdQuery> {
        check_len("query", self.dim, query.len())?;
        let d = self.dim;
        let mut rotated = vec![0.0; d];
        match &self.mse {
            Some(stage) => stage.rotation().apply_unchecked(query, &mut rotated),
            None => rotated.copy_from_slice(query),
        }
        let mut projected = vec![0.0; d];
        linalg::matvec(&self.qjl, &rotated, &mut projected);
        let projected_sum = projected.iter().sum();
        let bytes = self.sign_bytes();
        let mut sign_table = vec![0.0f32; bytes * 256];
        for (k, table) in sign_table.chunks_exact_mut(256).enumerate() {
            let lanes = &projected[8 * k..(8 * k + 8).min(d)];
            // table[v] = table[v without its highest bit] + lane of that bit.
            for v in 1..256usize {
                let top = usize::BITS - 1 - v.leading_zeros();
                let lane = lanes.get(top as usize).copied().unwrap_or(0.0);
                table[v] = table[v & !(1 << top)] + lane;
            }
        }
        if self.mse.is_none() {
            rotated.clear();
        }
        Ok(ProdQuery {
            rotated,
            sign_table,
            projected_sum,
        })
    }

    /// The unbiased estimate ⟨query, x̃⟩ of ⟨query, x⟩. Prepares the query each call: use
    /// [`TurboQuantProd::prepare_query`] and [`TurboQuantProd::inner_product_prepared`] for
    /// many codes.
    pub fn inner_product(&self, query: &[f32], code: &ProdCode) -> Result<f32> {
        let prepared = self.prepare_query(query)?;
        self.inner_product_prepared(&prepared, code)
    }

    /// ⟨query, x̃⟩ for a prepared query, in O(d) without leaving the rotated basis.
    pub fn inner_product_prepared(&self, query: &ProdQuery, code: &ProdCode) -> Result<f32> {
        self.check_code(code)?;
        self.check_query(query)?;
        let mut scratch = vec![0u8; self.dim];
        let mse = code.mse.as_ref().map(|m| (m.norm, m.indices.as_slice()));
        Ok(self.score(query, mse, &code.signs, code.residual_norm, &mut scratch))
    }

    fn check_code(&self, code: &ProdCode) -> Result<()> {
        check_len("sign bytes", self.sign_bytes(), code.signs.len())?;
        match (&self.mse, &code.mse) {
            (Some(stage), Some(m)) => {
                check_len("packed indices", stage.index_bytes(), m.indices.len())
            }
            (None, None) => Ok(()),
            _ => Err(Error::InvalidInput(
                "code's MSE part does not match the quantizer's bit width".into(),
            )),
        }
    }

    fn check_query(&self, query: &ProdQuery) -> Result<()> {
        let rotated = if self.mse.is_some() { self.dim } else { 0 };
        check_len("prepared query", rotated, query.rotated.len())?;
        check_len(
            "prepared query table",
            self.sign_bytes() * 256,
            query.sign_table.len(),
        )
    }

    /// The estimate from raw parts (no validation).
    pub(crate) fn score(
        &self,
        query: &ProdQuery,
        mse: Option<(f32, &[u8])>,
        signs: &[u8],
        residual_norm: f32,
        scratch: &mut [u8],
    ) -> f32 {
        let mse_part = match (&self.mse, mse) {
            (Some(stage), Some((norm, packed))) => {
                stage.score(&query.rotated, norm, packed, scratch)
            }
            _ => 0.0,
        };
        let positive: f32 = signs
            .iter()
            .zip(query.sign_table.chunks_exact(256))
            .map(|(&byte, table)| table[byte as usize])
            .sum();
        let signed_dot = 2.0 * positive - query.projected_sum;
        mse_part + self.qjl_scale() * residual_norm * signed_dot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::random_normal;

    #[test]
    fn inner_product_matches_dequantized() {
        for bits in 1..=4u8 {
            for dim in [12usize, 64] {
                let q = TurboQuantProd::new(dim, bits, 5).unwrap();
                let x = random_normal(dim, 1);
                let y = random_normal(dim, 2);
                let code = q.quantize(&x).unwrap();
                let x_hat = q.dequantize(&code).unwrap();
                let direct = linalg::dot(&y, &x_hat);
                let fast = q.inner_product(&y, &code).unwrap();
                assert!(
                    (direct - fast).abs() < 1e-3 * (1.0 + direct.abs()),
                    "{bits} {dim}: {direct} vs {fast}"
                );
                assert_eq!(
                    q.storage_bits(),
                    dim * (bits as usize - 1) + if bits > 1 { 32 } else { 0 } + dim + 32
                );
                assert_eq!(code.mse.is_some(), bits > 1);
            }
        }
    }

    #[test]
    fn residual_norm_is_mse_error() {
        let q = TurboQuantProd::new(32, 3, 1).unwrap();
        let x = random_normal(32, 8);
        let code = q.quantize(&x).unwrap();
        let stage = q.mse_stage().unwrap();
        let x_mse = stage.dequantize(code.mse.as_ref().unwrap()).unwrap();
        let err: Vec<f32> = x.iter().zip(&x_mse).map(|(a, b)| a - b).collect();
        assert!((linalg::norm(&err) - code.residual_norm).abs() < 1e-4);
    }

    #[test]
    fn errors() {
        assert!(TurboQuantProd::new(8, 0, 0).is_err());
        assert!(TurboQuantProd::new(8, 9, 0).is_err());
        let q = TurboQuantProd::new(8, 2, 0).unwrap();
        let code = q.quantize(&[1.0; 8]).unwrap();
        let other = TurboQuantProd::new(8, 1, 0).unwrap();
        assert!(other.dequantize(&code).is_err());
        let pq = other.prepare_query(&[1.0; 8]).unwrap();
        assert!(q.inner_product_prepared(&pq, &code).is_err());
        assert!(q.inner_product(&[1.0; 7], &code).is_err());
    }
}
