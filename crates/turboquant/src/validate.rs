//! The synthetic distortion table of the paper, measured: MSE of TurboQuant_mse and
//! inner-product distortion of TurboQuant_prod on random unit vectors.

use std::f64::consts::PI;

use crate::codebook::Codebook;
use crate::error::{Error, Result};
use crate::linalg;
use crate::mse::{QuantizerOptions, TurboQuantMse};
use crate::prod::TurboQuantProd;
use crate::rng::random_unit_vectors;
use crate::rotation::RotationKind;

/// The paper's D_mse for unit vectors at b = 1..4 bits (as printed, rounded).
pub const PAPER_MSE: [f64; 4] = [0.36, 0.117, 0.03, 0.009];
/// The paper's d·D_prod (inner-product distortion times d) at b = 1..4 bits (as printed).
pub const PAPER_IP: [f64; 4] = [1.57, 0.56, 0.18, 0.047];

/// What [`validate`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationConfig {
    /// Vector dimension (default 128).
    pub dim: usize,
    /// Random unit vectors x (and as many independent unit queries y) (default 4000).
    pub vectors: usize,
    /// Bit widths, each in 1..=8 (default 1..=4).
    pub bits: Vec<u8>,
    /// Rotation of both quantizers (default dense).
    pub rotation: RotationKind,
    /// Seed of the quantizers and the data.
    pub seed: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            dim: 128,
            vectors: 4000,
            bits: vec![1, 2, 3, 4],
            rotation: RotationKind::Dense,
            seed: 0,
        }
    }
}

/// One row of the table, for one bit width b.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationRow {
    /// Bits per coordinate.
    pub bits: u8,
    /// Measured E‖x - x̃‖² of TurboQuant_mse at b bits, unit x.
    pub mse: f64,
    /// Predicted by the codebook: d × its per-coordinate distortion.
    pub mse_theory: f64,
    /// The paper's figure (b ≤ 4).
    pub mse_paper: Option<f64>,
    /// Measured d·E[(⟨y,x⟩ - ⟨y,x̃⟩)²] of TurboQuant_prod at b bits, unit x and y.
    pub ip_distortion: f64,
    /// Predicted: (π/2 - 1/d)·E‖r‖² with r the residual of the (b-1)-bit MSE stage.
    pub ip_theory: f64,
    /// The paper's figure (b ≤ 4).
    pub ip_paper: Option<f64>,
    /// Measured mean of ⟨y,x̃⟩ - ⟨y,x⟩ for TurboQuant_prod with y = x (0 in expectation).
    pub prod_bias: f64,
    /// Measured mean of ⟨x,x̃⟩ - 1 for TurboQuant_mse with y = x (negative: shrinkage).
    pub mse_bias: f64,
}

/// Measures the table on `config.vectors` random unit vectors. About a second in release
/// builds with the defaults.
pub fn validate(config: &ValidationConfig) -> Result<Vec<ValidationRow>> {
    if config.vectors == 0 {
        return Err(Error::InvalidInput(
            "validation needs at least one vector".into(),
        ));
    }
    let d = config.dim;
    let n = config.vectors;
    let xs = random_unit_vectors(n, d, config.seed);
    let ys = random_unit_vectors(n, d, config.seed.wrapping_add(1));
    let options = QuantizerOptions::with_rotation(config.rotation);
    let mut rows = Vec::with_capacity(config.bits.len());
    for &bits in &config.bits {
        let mse_q = TurboQuantMse::with_options(d, bits, config.seed, &options)?;
        let prod_q = TurboQuantProd::with_options(d, bits, config.seed, &options)?;
        let (mut mse_sum, mut ip_sum, mut prod_bias, mut mse_bias) = (0.0, 0.0, 0.0, 0.0);
        for (x, y) in xs.chunks_exact(d).zip(ys.chunks_exact(d)) {
            let x_hat = mse_q.dequantize(&mse_q.quantize(x)?)?;
            mse_sum += x
                .iter()
                .zip(&x_hat)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>();
            mse_bias += f64::from(linalg::dot(x, &x_hat)) - 1.0;
            let code = prod_q.quantize(x)?;
            let exact = f64::from(linalg::dot(y, x));
            let err = f64::from(prod_q.inner_product(y, &code)?) - exact;
            ip_sum += err * err;
            prod_bias += f64::from(prod_q.inner_product(x, &code)?) - 1.0;
        }
        let nf = n as f64;
        let mse_theory = Codebook::sphere(d, bits)?.distortion().unwrap_or(f64::NAN) * d as f64;
        let residual = if bits > 1 {
            Codebook::sphere(d, bits - 1)?
                .distortion()
                .unwrap_or(f64::NAN)
                * d as f64
        } else {
            1.0
        };
        let paper = |table: &[f64; 4]| table.get(usize::from(bits).wrapping_sub(1)).copied();
        rows.push(ValidationRow {
            bits,
            mse: mse_sum / nf,
            mse_theory,
            mse_paper: paper(&PAPER_MSE),
            ip_distortion: d as f64 * ip_sum / nf,
            ip_theory: (PI / 2.0 - 1.0 / d as f64) * residual,
            ip_paper: paper(&PAPER_IP),
            prod_bias: prod_bias / nf,
            mse_bias: mse_bias / nf,
        });
    }
    Ok(rows)
}

/// Needle retrieval on random unit vectors, one row per bit width: among `keys` random unit
/// keys, one is planted at cosine `cosine` with the query; how often is it still the top score
/// after compression?
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeedleRow {
    /// Bits per coordinate.
    pub bits: u8,
    /// Share of queries whose top score under TurboQuant_mse keys is the needle.
    pub mse_found: f64,
    /// The same under TurboQuant_prod keys.
    pub prod_found: f64,
}

/// Runs the needle test of [`NeedleRow`] with `queries` queries against `keys` keys in
/// dimension `config.dim`, for each of `config.bits`.
pub fn needle_retrieval(
    config: &ValidationConfig,
    keys: usize,
    queries: usize,
    cosine: f32,
) -> Result<Vec<NeedleRow>> {
    if keys == 0 || queries == 0 || !(0.0..1.0).contains(&cosine) {
        return Err(Error::InvalidInput(
            "needle retrieval needs keys, queries and a cosine in [0, 1)".into(),
        ));
    }
    let d = config.dim;
    let options = QuantizerOptions::with_rotation(config.rotation);
    let key_set = random_unit_vectors(keys, d, config.seed.wrapping_add(10));
    let qs = random_unit_vectors(queries, d, config.seed.wrapping_add(11));
    let fillers = random_unit_vectors(queries, d, config.seed.wrapping_add(12));
    let mut rows = Vec::new();
    for &bits in &config.bits {
        let mse_q = TurboQuantMse::with_options(d, bits, config.seed, &options)?;
        let prod_q = TurboQuantProd::with_options(d, bits, config.seed, &options)?;
        let mse_codes = key_set
            .chunks_exact(d)
            .map(|k| mse_q.quantize(k))
            .collect::<Result<Vec<_>>>()?;
        let prod_codes = key_set
            .chunks_exact(d)
            .map(|k| prod_q.quantize(k))
            .collect::<Result<Vec<_>>>()?;
        let (mut mse_found, mut prod_found) = (0usize, 0usize);
        for (q, f) in qs.chunks_exact(d).zip(fillers.chunks_exact(d)) {
            // needle = cosine·q + sqrt(1 - cosine²)·(f orthogonalised against q)
            let fq = linalg::dot(f, q);
            let mut perp: Vec<f32> = f.iter().zip(q).map(|(a, b)| a - fq * b).collect();
            let norm = linalg::dot(&perp, &perp).sqrt();
            perp.iter_mut().for_each(|v| *v /= norm);
            let side = (1.0 - cosine * cosine).sqrt();
            let needle: Vec<f32> = q
                .iter()
                .zip(&perp)
                .map(|(a, b)| cosine * a + side * b)
                .collect();

            let mse_needle = mse_q.inner_product(q, &mse_q.quantize(&needle)?)?;
            let mse_best = mse_codes
                .iter()
                .map(|c| mse_q.inner_product(q, c))
                .collect::<Result<Vec<_>>>()?;
            mse_found += usize::from(mse_best.iter().all(|&s| s < mse_needle));
            let prod_needle = prod_q.inner_product(q, &prod_q.quantize(&needle)?)?;
            let prod_best = prod_codes
                .iter()
                .map(|c| prod_q.inner_product(q, c))
                .collect::<Result<Vec<_>>>()?;
            prod_found += usize::from(prod_best.iter().all(|&s| s < prod_needle));
        }
        rows.push(NeedleRow {
            bits,
            mse_found: mse_found as f64 / queries as f64,
            prod_found: prod_found as f64 / queries as f64,
        });
    }
    Ok(rows)
}
