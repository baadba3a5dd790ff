//! Small dense kernels on f32 slices, written so that the compiler vectorizes them.

const LANES: usize = 8;

/// The dot product of two equally long slices (eight partial sums, so it vectorizes).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for k in 0..LANES {
            acc[k] += ca[k] * cb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The Euclidean norm, accumulated in f64 for accuracy.
pub(crate) fn norm(a: &[f32]) -> f32 {
    a.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}

/// y += alpha · x.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// out = M x for a row-major `out.len()` × `x.len()` matrix.
pub(crate) fn matvec(matrix: &[f32], x: &[f32], out: &mut [f32]) {
    debug_assert_eq!(matrix.len(), x.len() * out.len());
    for (o, row) in out.iter_mut().zip(matrix.chunks_exact(x.len())) {
        *o = dot(row, x);
    }
}

/// out = Mᵀ x for a row-major `x.len()` × `out.len()` matrix.
pub(crate) fn matvec_transpose(matrix: &[f32], x: &[f32], out: &mut [f32]) {
    debug_assert_eq!(matrix.len(), x.len() * out.len());
    out.fill(0.0);
    for (&xi, row) in x.iter().zip(matrix.chunks_exact(out.len())) {
        axpy(xi, row, out);
    }
}
