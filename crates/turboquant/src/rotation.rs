//! Random rotations Π of R^d.
//!
//! * [`DenseRotation`]: a Haar-distributed (uniformly random) orthogonal matrix, from the
//!   Householder QR factorization of a matrix of iid N(0, 1) entries with the signs of R's
//!   diagonal folded into Q. For any fixed unit x, Πx is then exactly uniform on the sphere,
//!   which is what the TurboQuant analysis assumes. O(d²) per vector, O(d³) to build.
//! * [`HadamardRotation`]: Π = H·D/√d with D a random ±1 diagonal and H the Walsh-Hadamard
//!   matrix, applied by the fast Walsh-Hadamard transform in O(d log d); d must be a power of
//!   two. It spreads every vector's energy over all coordinates but is not Haar: for a fixed
//!   sparse input (e.g. a basis vector) the coordinates are ±1/√d, not sphere-distributed. For
//!   inputs that are themselves random directions it behaves like the dense one.
//!
//! Both are deterministic functions of (dim, seed).

use crate::error::{check_len, Error, Result};
use crate::linalg;
use crate::rng::{SeededRng, Stream};

/// Which rotation a quantizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RotationKind {
    /// A dense Haar-random orthogonal matrix (any dimension).
    #[default]
    Dense,
    /// The randomized Hadamard transform (power-of-two dimensions only).
    Hadamard,
}

/// A random orthogonal transform of R^dim.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// See [`DenseRotation`].
    Dense(DenseRotation),
    /// See [`HadamardRotation`].
    Hadamard(HadamardRotation),
}

impl Rotation {
    /// The rotation of the given kind for `dim` and `seed`.
    pub fn new(kind: RotationKind, dim: usize, seed: u64) -> Result<Self> {
        Ok(match kind {
            RotationKind::Dense => Rotation::Dense(DenseRotation::new(dim, seed)?),
            RotationKind::Hadamard => Rotation::Hadamard(HadamardRotation::new(dim, seed)?),
        })
    }

    /// Which kind this is.
    pub fn kind(&self) -> RotationKind {
        match self {
            Rotation::Dense(_) => RotationKind::Dense,
            Rotation::Hadamard(_) => RotationKind::Hadamard,
        }
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        match self {
            Rotation::Dense(r) => r.dim,
            Rotation::Hadamard(r) => r.signs.len(),
        }
    }

    /// Πx as a new vector.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim()];
        self.apply_into(x, &mut out)?;
        Ok(out)
    }

    /// Πᵀx as a new vector (the inverse rotation).
    pub fn apply_transpose(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim()];
        self.apply_transpose_into(x, &mut out)?;
        Ok(out)
    }

    /// Writes Πx into `out`; both slices must have length d.
    pub fn apply_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        check_len("input", self.dim(), x.len())?;
        check_len("output", self.dim(), out.len())?;
        self.apply_unchecked(x, out);
        Ok(())
    }

    /// Writes Πᵀx into `out`; both slices must have length d.
    pub fn apply_transpose_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        check_len("input", self.dim(), x.len())?;
        check_len("output", self.dim(), out.len())?;
        self.apply_transpose_unchecked(x, out);
        Ok(())
    }

    pub(crate) fn apply_unchecked(&self, x: &[f32], out: &mut [f32]) {
        match self {
            Rotation::Dense(r) => linalg::matvec(&r.matrix, x, out),
            Rotation::Hadamard(r) => {
                let scale = 1.0 / (r.signs.len() as f32).sqrt();
                for ((o, &xi), &s) in out.iter_mut().zip(x).zip(&r.signs) {
                    *o = xi * s;
                }
                fwht_unchecked(out);
                out.iter_mut().for_each(|o| *o *= scale);
            }
        }
    }

    pub(crate) fn apply_transpose_unchecked(&self, x: &[f32], out: &mut [f32]) {
        match self {
            Rotation::Dense(r) => linalg::matvec_transpose(&r.matrix, x, out),
            Rotation::Hadamard(r) => {
                let scale = 1.0 / (r.signs.len() as f32).sqrt();
                out.copy_from_slice(x);
                fwht_unchecked(out);
                for (o, &s) in out.iter_mut().zip(&r.signs) {
                    *o *= s * scale;
                }
            }
        }
    }
}

/// A dense Haar-random orthogonal d×d matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseRotation {
    dim: usize,
    /// Row-major d×d.
    matrix: Vec<f32>,
}

impl DenseRotation {
    /// Draws the matrix for `dim` (≥ 1) and `seed`: Householder QR of a Gaussian matrix G = QR
    /// (in f64), then Π = Q·diag(sign(R_ii)), which is exactly Haar distributed.
    pub fn new(dim: usize, seed: u64) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidDimension {
                dim,
                reason: "a rotation needs dim >= 1",
            });
        }
        let mut rng = SeededRng::new(seed, Stream::Rotation);
        let n = dim;
        // Column-major: a[j * n + i] = G[i][j].
        let mut a: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        // Householder vectors (unit norm, stored in full length with leading zeros) and R's
        // diagonal signs.
        let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(n);
        let mut signs = vec![1.0f64; n];
        for k in 0..n {
            let column = &a[k * n + k..k * n + n];
            let norm = column.iter().map(|x| x * x).sum::<f64>().sqrt();
            let alpha = if column[0] >= 0.0 { -norm } else { norm };
            signs[k] = if alpha >= 0.0 { 1.0 } else { -1.0 };
            let mut v = column.to_vec();
            v[0] -= alpha;
            let v_norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if v_norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= v_norm);
                // Apply H = I - 2vvᵀ to the remaining columns k+1..n.
                for j in k + 1..n {
                    let col = &mut a[j * n + k..j * n + n];
                    let d = 2.0 * col.iter().zip(&v).map(|(c, vi)| c * vi).sum::<f64>();
                    col.iter_mut().zip(&v).for_each(|(c, vi)| *c -= d * vi);
                }
            } else {
                v.fill(0.0);
            }
            reflectors.push(v);
        }
        // Q = H_0 H_1 ... H_{n-1}: apply the reflectors to the identity in reverse order.
        // Row-major q[i * n + j].
        let mut q = vec![0.0f64; n * n];
        for i in 0..n {
            q[i * n + i] = 1.0;
        }
        let mut scratch = vec![0.0f64; n];
        for (k, v) in reflectors.iter().enumerate().rev() {
            // Rows k..n of Q: Q[k..] -= 2 v (vᵀ Q[k..]).
            scratch.fill(0.0);
            for (r, &vi) in v.iter().enumerate() {
                if vi != 0.0 {
                    let row = &q[(k + r) * n..(k + r + 1) * n];
                    scratch.iter_mut().zip(row).for_each(|(s, x)| *s += vi * x);
                }
            }
            for (r, &vi) in v.iter().enumerate() {
                if vi != 0.0 {
                    let row = &mut q[(k + r) * n..(k + r + 1) * n];
                    row.iter_mut()
                        .zip(&scratch)
                        .for_each(|(x, s)| *x -= 2.0 * vi * s);
                }
            }
        }
        // Fold the signs of R's diagonal into Q's columns (makes Q Haar distributed).
        let matrix = q
            .chunks_exact(n)
            .flat_map(|row| row.iter().zip(&signs).map(|(x, s)| (x * s) as f32))
            .collect();
        Ok(Self { dim, matrix })
    }

    /// The matrix Π, row-major d×d (Πx has entries Σ_j Π[i·d + j] x_j).
    pub fn matrix(&self) -> &[f32] {
        &self.matrix
    }
}

/// The randomized Hadamard transform Π = H·D/√d.
#[derive(Debug, Clone, PartialEq)]
pub struct HadamardRotation {
    signs: Vec<f32>,
}

impl HadamardRotation {
    /// Draws the random signs for `dim` (a power of two) and `seed`.
    pub fn new(dim: usize, seed: u64) -> Result<Self> {
        if dim == 0 || !dim.is_power_of_two() {
            return Err(Error::InvalidDimension {
                dim,
                reason: "the Hadamard rotation needs a power-of-two dimension",
            });
        }
        let mut rng = SeededRng::new(seed, Stream::Rotation);
        let signs = (0..dim)
            .map(|_| if rng.coin() { 1.0 } else { -1.0 })
            .collect();
        Ok(Self { signs })
    }

    /// The diagonal D (entries ±1), applied before the transform.
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }
}

/// The unnormalized fast Walsh-Hadamard transform in place (x ← Hx, with H² = d·I), for a
/// power-of-two length.
pub fn fwht(x: &mut [f32]) -> Result<()> {
    if x.is_empty() || !x.len().is_power_of_two() {
        return Err(Error::InvalidDimension {
            dim: x.len(),
            reason: "the Walsh-Hadamard transform needs a power-of-two length",
        });
    }
    fwht_unchecked(x);
    Ok(())
}

/// The orthonormal Walsh-Hadamard transform (scaled by 1/√n) of every group of `n` values of `x`
/// in place: llama.cpp's rotation of keys and queries for quantized caches, in its Sylvester
/// order. `n` a power of two (1 leaves `x` as it is) dividing the length.
pub fn fwht_orthonormal_groups(x: &mut [f32], n: usize) -> Result<()> {
    if n == 0 || !n.is_power_of_two() || x.len() % n != 0 {
        return Err(Error::InvalidDimension {
            dim: n,
            reason: "the groups need a power-of-two size that divides the length",
        });
    }
    let norm = 1.0 / (n as f32).sqrt();
    for group in x.chunks_exact_mut(n) {
        fwht_unchecked(group);
        group.iter_mut().for_each(|v| *v *= norm);
    }
    Ok(())
}

fn fwht_unchecked(x: &mut [f32]) {
    debug_assert!(x.len().is_power_of_two());
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::random_normal;

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn rotations_are_orthogonal() {
        for (kind, dim) in [
            (RotationKind::Dense, 1),
            (RotationKind::Dense, 7),
            (RotationKind::Dense, 128),
            (RotationKind::Hadamard, 1),
            (RotationKind::Hadamard, 64),
            (RotationKind::Hadamard, 256),
        ] {
            let r = Rotation::new(kind, dim, 42).unwrap();
            for s in 0..5 {
                let x = random_normal(dim, s);
                let y = r.apply(&x).unwrap();
                let nx = linalg::norm(&x);
                assert!(
                    (linalg::norm(&y) - nx).abs() < 1e-5 * nx.max(1.0),
                    "{kind:?} {dim}"
                );
                let back = r.apply_transpose(&y).unwrap();
                assert!(max_err(&back, &x) < 1e-5 * nx.max(1.0), "{kind:?} {dim}");
                // Πᵀ applied first is also inverted by Π.
                let z = r.apply(&r.apply_transpose(&x).unwrap()).unwrap();
                assert!(max_err(&z, &x) < 1e-5 * nx.max(1.0));
            }
        }
    }

    #[test]
    fn dense_matrix_is_orthogonal_and_seeded() {
        let n = 32;
        let r = DenseRotation::new(n, 3).unwrap();
        let m = r.matrix();
        for i in 0..n {
            for j in 0..n {
                let d = linalg::dot(&m[i * n..(i + 1) * n], &m[j * n..(j + 1) * n]);
                let expect = if i == j { 1.0 } else { 0.0 };
                assert!((d - expect).abs() < 1e-5);
            }
        }
        assert_eq!(DenseRotation::new(n, 3).unwrap(), r);
        assert_ne!(DenseRotation::new(n, 4).unwrap(), r);
    }

    #[test]
    fn dense_is_haar_like() {
        // For Haar Π, each entry has mean 0 and variance 1/d, and diagonal entries are not
        // biased towards positive values (the sign correction matters for that).
        let n = 16;
        let trials = 400;
        let (mut diag_sum, mut sq) = (0.0f64, 0.0f64);
        for seed in 0..trials {
            let r = DenseRotation::new(n, seed).unwrap();
            for i in 0..n {
                let v = r.matrix()[i * n + i] as f64;
                diag_sum += v;
                sq += v * v;
            }
        }
        let count = (trials as usize * n) as f64;
        let mean = diag_sum / count;
        let var = sq / count;
        // Standard error of the mean is sqrt(1/16 / 6400) ≈ 0.003.
        assert!(mean.abs() < 0.015, "diagonal mean {mean}");
        assert!(
            (var - 1.0 / n as f64).abs() < 0.006,
            "diagonal variance {var}"
        );
    }

    #[test]
    fn orthonormal_groups_are_their_own_inverse_and_reject_bad_sizes() {
        let x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut y = x.clone();
        fwht_orthonormal_groups(&mut y, 64).unwrap();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y) - norm(&x)).abs() < 1e-3);
        let mut first = x[..64].to_vec();
        fwht(&mut first).unwrap();
        assert_eq!(y[0], first[0] / 8.0);
        fwht_orthonormal_groups(&mut y, 64).unwrap();
        for (a, b) in y.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5);
        }
        let mut same = x.clone();
        fwht_orthonormal_groups(&mut same, 1).unwrap();
        assert_eq!(same, x);
        assert!(fwht_orthonormal_groups(&mut y, 0).is_err());
        assert!(fwht_orthonormal_groups(&mut y, 48).is_err());
        assert!(fwht_orthonormal_groups(&mut y[..100], 64).is_err());
    }

    #[test]
    fn fwht_matches_definition_and_rejects_bad_sizes() {
        let x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut y = x.clone();
        fwht(&mut y).unwrap();
        for (k, &yk) in y.iter().enumerate() {
            let expect: f32 = x
                .iter()
                .enumerate()
                .map(|(j, &xj)| {
                    if (j & k).count_ones() % 2 == 0 {
                        xj
                    } else {
                        -xj
                    }
                })
                .sum();
            assert_eq!(yk, expect);
        }
        assert!(fwht(&mut [0.0; 6]).is_err());
        assert!(matches!(
            Rotation::new(RotationKind::Hadamard, 96, 0),
            Err(Error::InvalidDimension { dim: 96, .. })
        ));
        assert!(Rotation::new(RotationKind::Dense, 0, 0).is_err());
        let r = Rotation::new(RotationKind::Dense, 4, 0).unwrap();
        assert!(r.apply(&[1.0; 3]).is_err());
    }
}
