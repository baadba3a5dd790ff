//! Seeded, deterministic random numbers (ChaCha8 from `rand_chacha`) and the few distributions
//! the crate needs, written here so that no distribution crate is required.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// Independent random streams derived from one user seed, one per component, so that e.g. the
/// rotation of a quantizer does not change when the QJL matrix is drawn or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The rotation Π (dense Gaussian matrix or Hadamard signs).
    Rotation = 1,
    /// The QJL projection matrix S.
    Qjl = 2,
    /// Synthetic data in tests and [`crate::validate`].
    Data = 3,
}

/// A ChaCha8 generator with a Gaussian sampler (polar Box-Muller, one spare kept).
#[derive(Debug, Clone)]
pub(crate) struct SeededRng {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

impl SeededRng {
    /// The generator for `stream` of `seed`. The same pair always gives the same sequence.
    pub(crate) fn new(seed: u64, stream: Stream) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream as u64);
        Self { rng, spare: None }
    }

    /// The raw 64-bit output.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A fair coin: `true` or `false` with probability 1/2 each.
    pub(crate) fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// A standard normal N(0, 1) sample (Marsaglia's polar method).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let factor = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * factor);
                return u * factor;
            }
        }
    }

    /// A vector with iid N(0, 1) entries.
    pub(crate) fn normal_vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal() as f32).collect()
    }

    /// A point drawn uniformly from the unit sphere S^{len-1}.
    pub(crate) fn unit_vec(&mut self, len: usize) -> Vec<f32> {
        loop {
            let v: Vec<f64> = (0..len).map(|_| self.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                return v.iter().map(|x| (x / norm) as f32).collect();
            }
        }
    }
}

/// `count` unit vectors of dimension `dim`, uniform on the sphere, concatenated; deterministic
/// in `seed`. Used by [`crate::validate`] and the tests.
pub fn random_unit_vectors(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeededRng::new(seed, Stream::Data);
    let mut out = Vec::with_capacity(count * dim);
    for _ in 0..count {
        out.extend(rng.unit_vec(dim));
    }
    out
}

/// `len` iid N(0, 1) values, deterministic in `seed`.
pub fn random_normal(len: usize, seed: u64) -> Vec<f32> {
    SeededRng::new(seed, Stream::Data).normal_vec(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_streams_differ() {
        let a: Vec<u64> = {
            let mut r = SeededRng::new(7, Stream::Rotation);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SeededRng::new(7, Stream::Rotation);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SeededRng::new(7, Stream::Qjl);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normal_moments() {
        let mut r = SeededRng::new(1, Stream::Data);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
    }
}
