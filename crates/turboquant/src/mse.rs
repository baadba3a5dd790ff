//! TurboQuant_mse: random rotation, then an optimal scalar quantizer per coordinate.
//!
//! For x ∈ R^d the code is (‖x‖ as f32, the codebook index of every coordinate of Π·x/‖x‖),
//! the indices bit-packed at exactly `bits` bits each. Dequantization is ‖x‖·Πᵀ·c(idx).

use crate::bitpack;
use crate::codebook::{Codebook, MAX_BITS, MIN_BITS};
use crate::error::{check_finite, check_len, Error, Result};
use crate::linalg;
use crate::rotation::{Rotation, RotationKind};

/// Which scalar codebook a quantizer uses for the rotated coordinates.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CodebookKind {
    /// Lloyd-Max for the exact coordinate density of a uniform point on S^{d-1}
    /// ([`Codebook::sphere`]). The paper's choice.
    #[default]
    Sphere,
    /// Lloyd-Max for the Gaussian limit N(0, 1/d) ([`Codebook::gaussian`]).
    Gaussian,
    /// A given codebook (e.g. fitted with [`Codebook::fit`] to real rotated data, for unit
    /// vectors). Its bit width must equal the quantizer's.
    Custom(Codebook),
}

/// Construction options shared by [`TurboQuantMse`] and [`crate::TurboQuantProd`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantizerOptions {
    /// The random rotation (default: dense Haar).
    pub rotation: RotationKind,
    /// The scalar codebook (default: exact sphere density).
    pub codebook: CodebookKind,
}

impl QuantizerOptions {
    /// Options with the given rotation and the default codebook.
    pub fn with_rotation(rotation: RotationKind) -> Self {
        Self {
            rotation,
            ..Self::default()
        }
    }
}

/// A compressed vector: its norm and its bit-packed codebook indices.
#[derive(Debug, Clone, PartialEq)]
pub struct MseCode {
    /// ‖x‖₂.
    pub norm: f32,
    /// d indices of `bits` bits each, packed as described in [`crate::bitpack`].
    pub indices: Vec<u8>,
}

/// A query rotated into the quantizer's basis, for repeated inner products
/// ([`TurboQuantMse::inner_product_prepared`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MseQuery {
    pub(crate) rotated: Vec<f32>,
}

impl MseQuery {
    /// Πq, the query in the quantizer's rotated basis.
    pub fn rotated(&self) -> &[f32] {
        &self.rotated
    }
}

/// The MSE-optimal TurboQuant quantizer for vectors of dimension `dim` at `bits` bits per
/// coordinate.
#[derive(Debug, Clone, PartialEq)]
pub struct TurboQuantMse {
    dim: usize,
    bits: u8,
    rotation: Rotation,
    codebook: Codebook,
    /// The centroids padded to 256 entries, so that a `u8` index needs no bounds check.
    table: Box<[f32; 256]>,
}

pub(crate) fn resolve_codebook(kind: &CodebookKind, dim: usize, bits: u8) -> Result<Codebook> {
    match kind {
        CodebookKind::Sphere => Codebook::sphere(dim, bits),
        CodebookKind::Gaussian => Codebook::gaussian(1.0 / (dim as f64).sqrt(), bits),
        CodebookKind::Custom(cb) if cb.bits() == bits => Ok(cb.clone()),
        CodebookKind::Custom(cb) => Err(Error::InvalidInput(format!(
            "custom codebook has {} bits, quantizer needs {bits}",
            cb.bits()
        ))),
    }
}

impl TurboQuantMse {
    /// A quantizer with the default options (dense Haar rotation, exact sphere codebook).
    /// `dim` ≥ 2, `bits` in 1..=8.
    pub fn new(dim: usize, bits: u8, seed: u64) -> Result<Self> {
        Self::with_options(dim, bits, seed, &QuantizerOptions::default())
    }

    /// A quantizer with explicit options.
    pub fn with_options(
        dim: usize,
        bits: u8,
        seed: u64,
        options: &QuantizerOptions,
    ) -> Result<Self> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(Error::InvalidBits {
                bits,
                min: MIN_BITS,
                max: MAX_BITS,
            });
        }
        if dim < 2 {
            return Err(Error::InvalidDimension {
                dim,
                reason: "TurboQuant needs dim >= 2",
            });
        }
        let codebook = resolve_codebook(&options.codebook, dim, bits)?;
        let rotation = Rotation::new(options.rotation, dim, seed)?;
        let mut table = Box::new([0.0f32; 256]);
        for (i, t) in table.iter_mut().enumerate() {
            *t = codebook.value(i as u8);
        }
        Ok(Self {
            dim,
            bits,
            rotation,
            codebook,
            table,
        })
    }

    /// The vector dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bits per coordinate.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The rotation Π.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// The scalar codebook applied to the coordinates of Πx/‖x‖.
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }

    /// Bytes of packed indices per vector.
    pub fn index_bytes(&self) -> usize {
        bitpack::packed_len(self.dim, self.bits)
    }

    /// Storage per vector in bits: d·bits for the indices plus 32 for the f32 norm.
    pub fn storage_bits(&self) -> usize {
        self.dim * self.bits as usize + 32
    }

    /// The expected squared error E‖x - x̃‖² for a unit vector x, predicted by the codebook
    /// (d × its per-coordinate distortion), if known.
    pub fn expected_mse(&self) -> Option<f64> {
        self.codebook.distortion().map(|d| d * self.dim as f64)
    }

    /// Compresses `x` (length d, finite values).
    pub fn quantize(&self, x: &[f32]) -> Result<MseCode> {
        check_len("vector", self.dim, x.len())?;
        check_finite("vector", x)?;
        let mut rotated = vec![0.0; self.dim];
        let mut indices = vec![0u8; self.dim];
        let norm = self.encode(x, &mut rotated, &mut indices);
        let mut packed = vec![0u8; self.index_bytes()];
        bitpack::pack_unchecked(&indices, self.bits, &mut packed);
        Ok(MseCode {
            norm,
            indices: packed,
        })
    }

    /// Reconstructs x̃ = ‖x‖·Πᵀ·c(idx).
    pub fn dequantize(&self, code: &MseCode) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim];
        self.dequantize_into(code, &mut out)?;
        Ok(out)
    }

    /// Reconstructs into `out` (length d).
    pub fn dequantize_into(&self, code: &MseCode, out: &mut [f32]) -> Result<()> {
        self.check_code(code)?;
        check_len("output", self.dim, out.len())?;
        let mut rotated = vec![0.0; self.dim];
        let mut scratch = vec![0u8; self.dim];
        self.decode_rotated(code.norm, &code.indices, &mut scratch, &mut rotated);
        self.rotation.apply_transpose_unchecked(&rotated, out);
        Ok(())
    }

    /// Rotates a query once for many [`TurboQuantMse::inner_product_prepared`] calls.
    pub fn prepare_query(&self, query: &[f32]) -> Result<MseQuery> {
        check_len("query", self.dim, query.len())?;
        let mut rotated = vec![0.0; self.dim];
        self.rotation.apply_unchecked(query, &mut rotated);
        Ok(MseQuery { rotated })
    }

    /// ⟨query, x̃⟩ without reconstructing x̃ (computed in the rotated basis). Biased: it
    /// estimates ⟨query, x⟩ shrunk towards zero; use [`crate::TurboQuantProd`] for an
    /// unbiased estimate.
    pub fn inner_product(&self, query: &[f32], code: &MseCode) -> Result<f32> {
        let prepared = self.prepare_query(query)?;
        self.inner_product_prepared(&prepared, code)
    }

    /// ⟨query, x̃⟩ for a query prepared with [`TurboQuantMse::prepare_query`]; O(d).
    pub fn inner_product_prepared(&self, query: &MseQuery, code: &MseCode) -> Result<f32> {
        self.check_code(code)?;
        check_len("prepared query", self.dim, query.rotated.len())?;
        let mut scratch = vec![0u8; self.dim];
        Ok(self.score(&query.rotated, code.norm, &code.indices, &mut scratch))
    }

    fn check_code(&self, code: &MseCode) -> Result<()> {
        check_len("packed indices", self.index_bytes(), code.indices.len())
    }

    /// Writes Πx into `rotated` and the unpacked indices of Πx/‖x‖ into `indices`; returns ‖x‖.
    pub(crate) fn encode(&self, x: &[f32], rotated: &mut [f32], indices: &mut [u8]) -> f32 {
        let norm = linalg::norm(x);
        self.rotation.apply_unchecked(x, rotated);
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        for (i, &r) in indices.iter_mut().zip(rotated.iter()) {
            *i = self.codebook.quantize(r * inv);
        }
        norm
    }

    /// Writes norm·c(idx) (the reconstruction in the rotated basis) into `out`.
    pub(crate) fn decode_rotated(
        &self,
        norm: f32,
        packed: &[u8],
        scratch: &mut [u8],
        out: &mut [f32],
    ) {
        bitpack::unpack_unchecked(packed, self.bits, scratch);
        let table = &*self.table;
        for (o, &i) in out.iter_mut().zip(scratch.iter()) {
            *o = norm * table[i as usize];
        }
    }

    /// Adds weight·norm·c(idx) to `acc` (rotated basis).
    pub(crate) fn accumulate_rotated(
        &self,
        weight: f32,
        norm: f32,
        packed: &[u8],
        scratch: &mut [u8],
        acc: &mut [f32],
    ) {
        bitpack::unpack_unchecked(packed, self.bits, scratch);
        let table = &*self.table;
        let w = weight * norm;
        for (a, &i) in acc.iter_mut().zip(scratch.iter()) {
            *a += w * table[i as usize];
        }
    }

    /// ⟨q_rot, norm·c(idx)⟩.
    pub(crate) fn score(
        &self,
        rotated_query: &[f32],
        norm: f32,
        packed: &[u8],
        scratch: &mut [u8],
    ) -> f32 {
        bitpack::unpack_unchecked(packed, self.bits, scratch);
        let table = &*self.table;
        const LANES: usize = 8;
        let mut acc = [0.0f32; LANES];
        let split = rotated_query.len() / LANES * LANES;
        for (q, idx) in rotated_query[..split]
            .chunks_exact(LANES)
            .zip(scratch[..split].chunks_exact(LANES))
        {
            for k in 0..LANES {
                acc[k] += q[k] * table[idx[k] as usize];
            }
        }
        let tail: f32 = rotated_query[split..]
            .iter()
            .zip(&scratch[split..])
            .map(|(q, &i)| q * table[i as usize])
            .sum();
        norm * (acc.iter().sum::<f32>() + tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::random_normal;

    #[test]
    fn round_trip_shapes_and_errors() {
        let q = TurboQuantMse::new(10, 3, 1).unwrap();
        let x = random_normal(10, 2);
        let code = q.quantize(&x).unwrap();
        assert_eq!(code.indices.len(), 4); // 30 bits
        assert_eq!(q.storage_bits(), 62);
        let y = q.dequantize(&code).unwrap();
        assert_eq!(y.len(), 10);
        // The reconstruction keeps the direction roughly.
        let cos = linalg::dot(&x, &y) / (linalg::norm(&x) * linalg::norm(&y));
        assert!(cos > 0.9, "cos {cos}");
        // Inner product in the rotated basis equals the one with the reconstruction.
        let query = random_normal(10, 3);
        let ip = q.inner_product(&query, &code).unwrap();
        assert!((ip - linalg::dot(&query, &y)).abs() < 1e-4);
        // Zero vector.
        let z = q.dequantize(&q.quantize(&[0.0; 10]).unwrap()).unwrap();
        assert!(z.iter().all(|&v| v == 0.0));
        // Errors.
        assert!(q.quantize(&[0.0; 9]).is_err());
        assert!(q.quantize(&[f32::NAN; 10]).is_err());
        assert!(TurboQuantMse::new(10, 0, 0).is_err());
        assert!(TurboQuantMse::new(10, 9, 0).is_err());
        assert!(TurboQuantMse::new(1, 2, 0).is_err());
        let hadamard = QuantizerOptions::with_rotation(RotationKind::Hadamard);
        assert!(TurboQuantMse::with_options(10, 2, 0, &hadamard).is_err());
        let bad = MseCode {
            norm: 1.0,
            indices: vec![0; 3],
        };
        assert!(q.dequantize(&bad).is_err());
        let custom = QuantizerOptions {
            codebook: CodebookKind::Custom(Codebook::gaussian(0.3, 2).unwrap()),
            ..Default::default()
        };
        assert!(TurboQuantMse::with_options(10, 3, 0, &custom).is_err());
        assert!(TurboQuantMse::with_options(10, 2, 0, &custom).is_ok());
    }

    #[test]
    fn eight_bits_is_nearly_lossless() {
        let q = TurboQuantMse::new(64, 8, 9).unwrap();
        let x = random_normal(64, 4);
        let y = q.dequantize(&q.quantize(&x).unwrap()).unwrap();
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let rel = err / linalg::dot(&x, &x);
        assert!(rel < 1e-3, "relative error {rel}");
    }
}
