//! Flat, append-only storage of many codes of one quantizer (no per-vector allocations), shared
//! by the KV cache and the batch compressors.

use crate::mse::{MseCode, TurboQuantMse};
use crate::prod::{ProdCode, ProdQuery, TurboQuantProd};

/// Codes of a [`TurboQuantMse`]: norms and packed indices, `index_bytes` per vector.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MseStore {
    index_bytes: usize,
    norms: Vec<f32>,
    indices: Vec<u8>,
}

impl MseStore {
    pub(crate) fn new(quantizer: &TurboQuantMse) -> Self {
        Self {
            index_bytes: quantizer.index_bytes(),
            norms: Vec::new(),
            indices: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.norms.len()
    }

    pub(crate) fn push(&mut self, code: &MseCode) {
        debug_assert_eq!(code.indices.len(), self.index_bytes);
        self.norms.push(code.norm);
        self.indices.extend_from_slice(&code.indices);
    }

    pub(crate) fn get(&self, i: usize) -> (f32, &[u8]) {
        let start = i * self.index_bytes;
        (
            self.norms[i],
            &self.indices[start..start + self.index_bytes],
        )
    }

    pub(crate) fn code(&self, i: usize) -> MseCode {
        let (norm, indices) = self.get(i);
        MseCode {
            norm,
            indices: indices.to_vec(),
        }
    }

    /// Payload bytes: packed indices plus 4 per norm.
    pub(crate) fn bytes(&self) -> usize {
        self.indices.len() + 4 * self.norms.len()
    }

    pub(crate) fn clear(&mut self) {
        self.norms.clear();
        self.indices.clear();
    }

    /// Σ_j weights[j]·x̃_j in the rotated basis, added to `acc`.
    pub(crate) fn weighted_sum_rotated(
        &self,
        quantizer: &TurboQuantMse,
        weights: &[f32],
        scratch: &mut [u8],
        acc: &mut [f32],
    ) {
        for (j, &w) in weights.iter().enumerate() {
            if w != 0.0 {
                let (norm, packed) = self.get(j);
                quantizer.accumulate_rotated(w, norm, packed, scratch, acc);
            }
        }
    }
}

/// Codes of a [`TurboQuantProd`]: the MSE part (if b > 1), packed signs and residual norms.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ProdStore {
    mse: Option<MseStore>,
    sign_bytes: usize,
    signs: Vec<u8>,
    residual_norms: Vec<f32>,
}

impl ProdStore {
    pub(crate) fn new(quantizer: &TurboQuantProd) -> Self {
        Self {
            mse: quantizer.mse_stage().map(MseStore::new),
            sign_bytes: quantizer.sign_bytes(),
            signs: Vec::new(),
            residual_norms: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.residual_norms.len()
    }

    pub(crate) fn push(&mut self, code: &ProdCode) {
        debug_assert_eq!(code.signs.len(), self.sign_bytes);
        if let (Some(store), Some(mse)) = (&mut self.mse, &code.mse) {
            store.push(mse);
        }
        self.signs.extend_from_slice(&code.signs);
        self.residual_norms.push(code.residual_norm);
    }

    pub(crate) fn code(&self, i: usize) -> ProdCode {
        let start = i * self.sign_bytes;
        ProdCode {
            mse: self.mse.as_ref().map(|m| m.code(i)),
            signs: self.signs[start..start + self.sign_bytes].to_vec(),
            residual_norm: self.residual_norms[i],
        }
    }

    /// Payload bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.mse.as_ref().map_or(0, MseStore::bytes)
            + self.signs.len()
            + 4 * self.residual_norms.len()
    }

    pub(crate) fn clear(&mut self) {
        if let Some(m) = &mut self.mse {
            m.clear();
        }
        self.signs.clear();
        self.residual_norms.clear();
    }

    /// ⟨q, k̃_j⟩·scale for every stored key j, written to `out`.
    pub(crate) fn scores(
        &self,
        quantizer: &TurboQuantProd,
        query: &ProdQuery,
        scale: f32,
        scratch: &mut [u8],
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), self.len());
        for (j, o) in out.iter_mut().enumerate() {
            let mse = self.mse.as_ref().map(|m| m.get(j));
            let start = j * self.sign_bytes;
            let signs = &self.signs[start..start + self.sign_bytes];
            *o = scale * quantizer.score(query, mse, signs, self.residual_norms[j], scratch);
        }
    }
}

/// ⟨q, k̃_j⟩·scale for every key j of an MSE store.
pub(crate) fn mse_scores(
    store: &MseStore,
    quantizer: &TurboQuantMse,
    rotated_query: &[f32],
    scale: f32,
    scratch: &mut [u8],
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), store.len());
    for (j, o) in out.iter_mut().enumerate() {
        let (norm, packed) = store.get(j);
        *o = scale * quantizer.score(rotated_query, norm, packed, scratch);
    }
}
