//! Lloyd-Max scalar quantizers ("codebooks"), computed by this crate.
//!
//! Three ways to get a [`Codebook`]:
//!
//! * [`Codebook::sphere`]: the optimal quantizer for one coordinate of a point drawn uniformly
//!   from the unit sphere S^{d-1}, whose density is
//!   f_d(t) = Γ(d/2) / (√π Γ((d-1)/2)) · (1 - t²)^((d-3)/2) on [-1, 1].
//!   This is what a coordinate of a randomly rotated unit vector follows, exactly.
//! * [`Codebook::gaussian`]: the optimal quantizer for N(0, σ²), the large-d limit of the above
//!   with σ = 1/√d.
//! * [`Codebook::fit`]: an empirical Lloyd-Max quantizer (1-D k-means) fitted to samples,
//!   optionally weighted, for data whose distribution is known only through examples.
//!
//! The density-based solvers integrate the density by composite Gauss-Legendre quadrature
//! (the sphere density after the substitution t = sin θ, which turns it into the smooth
//! cos^{d-2} θ dθ) and run Lloyd's fixed-point iteration (centroid = conditional mean of its
//! cell, boundary = midpoint of adjacent centroids), accelerated by Newton steps on the same
//! fixed-point equations. They converge to ~1e-12 relative precision in a few milliseconds
//! even at 8 bits, and results are memoized per process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::quadrature::GaussLegendre;

/// The smallest supported bit width (2 levels).
pub const MIN_BITS: u8 = 1;
/// The largest supported bit width (256 levels, so an index fits a `u8`).
pub const MAX_BITS: u8 = 8;

/// Where a codebook came from.
#[derive(Debug, Clone, PartialEq)]
pub enum CodebookSource {
    /// Lloyd-Max for a coordinate of a uniform point on the sphere S^{dim-1}.
    Sphere {
        /// The dimension d of the ambient space.
        dim: usize,
    },
    /// Lloyd-Max for N(0, sigma²).
    Gaussian {
        /// The standard deviation.
        sigma: f64,
    },
    /// Empirical Lloyd-Max fitted to samples.
    Empirical {
        /// How many samples (with positive weight) it was fitted to.
        samples: usize,
    },
    /// Built from explicitly given centroids.
    Explicit,
}

/// A scalar quantizer with 2^bits levels: sorted centroids and the decision boundaries between
/// them (the midpoints of adjacent centroids, which makes quantization nearest-centroid).
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    bits: u8,
    source: CodebookSource,
    centroids: Vec<f64>,
    centroids_f32: Vec<f32>,
    boundaries_f32: Vec<f32>,
    distortion: Option<f64>,
    iterations: usize,
    converged: bool,
}

/// Options for the empirical fit [`Codebook::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// The most Lloyd iterations to run.
    pub max_iterations: usize,
    /// Stop when no centroid moves by more than this times the samples' standard deviation.
    pub tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_iterations: 1000,
            tolerance: 1e-9,
        }
    }
}

/// The bit widths every quantizer of the crate supports, as an error otherwise.
pub(crate) fn check_bits(bits: u8) -> Result<()> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidBits {
            bits,
            min: MIN_BITS,
            max: MAX_BITS,
        })
    }
}

type CacheKey = (u8, u64, u8);

fn cache() -> &'static Mutex<HashMap<CacheKey, Codebook>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Codebook>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn memoized(key: CacheKey, compute: impl FnOnce() -> Codebook) -> Codebook {
    if let Some(found) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let codebook = compute();
    if let Ok(mut c) = cache().lock() {
        c.insert(key, codebook.clone());
    }
    codebook
}

impl Codebook {
    /// The Lloyd-Max codebook for one coordinate of a uniform point on S^{dim-1} (the exact
    /// distribution of a coordinate of a randomly rotated unit vector), with 2^bits levels.
    ///
    /// `dim` must be at least 2 (for d = 2 the density is the arcsine law, for d = 3 it is
    /// uniform on [-1, 1]); `bits` in 1..=8.
    pub fn sphere(dim: usize, bits: u8) -> Result<Self> {
        check_bits(bits)?;
        if dim < 2 {
            return Err(Error::InvalidDimension {
                dim,
                reason: "the sphere codebook needs dim >= 2",
            });
        }
        Ok(memoized((0, dim as u64, bits), || {
            let solution = solve_density(Model::Sphere { dim }, bits);
            Self::from_solution(bits, CodebookSource::Sphere { dim }, solution, 1.0)
        }))
    }

    /// The Lloyd-Max codebook for N(0, sigma²) with 2^bits levels. `sigma` must be positive and
    /// finite; `bits` in 1..=8.
    pub fn gaussian(sigma: f64, bits: u8) -> Result<Self> {
        check_bits(bits)?;
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::InvalidInput(format!(
                "sigma must be positive and finite, got {sigma}"
            )));
        }
        let standard = memoized((1, 0, bits), || {
            let solution = solve_density(Model::Gaussian, bits);
            Self::from_solution(bits, CodebookSource::Gaussian { sigma: 1.0 }, solution, 1.0)
        });
        if sigma == 1.0 {
            return Ok(standard);
        }
        let mut scaled = standard.scaled(sigma)?;
        scaled.source = CodebookSource::Gaussian { sigma };
        Ok(scaled)
    }

    /// Fits an empirical Lloyd-Max quantizer (1-D k-means with 2^bits clusters, seeded at the
    /// weighted quantiles (i + 1/2)/2^bits) to `samples`, optionally `weights`ed (one
    /// non-negative weight per sample). The reported distortion is the weighted mean squared
    /// error on the samples.
    pub fn fit(
        samples: &[f32],
        weights: Option<&[f32]>,
        bits: u8,
        options: &FitOptions,
    ) -> Result<Self> {
        check_bits(bits)?;
        if samples.is_empty() {
            return Err(Error::InvalidInput("no samples to fit a codebook".into()));
        }
        crate::error::check_finite("samples", samples)?;
        if let Some(w) = weights {
            crate::error::check_len("weights", samples.len(), w.len())?;
            if w.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(Error::InvalidInput(
                    "weights must be finite and non-negative".into(),
                ));
            }
        }
        if !(options.tolerance.is_finite() && options.tolerance >= 0.0) {
            return Err(Error::InvalidInput(
                "tolerance must be finite and non-negative".into(),
            ));
        }
        let mut points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .map(|(i, &x)| (x as f64, weights.map_or(1.0, |w| w[i] as f64)))
            .filter(|&(_, w)| w > 0.0)
            .collect();
        if points.is_empty() {
            return Err(Error::InvalidInput("all weights are zero".into()));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let solution = solve_empirical(&points, bits, options);
        Ok(Self::from_solution(
            bits,
            CodebookSource::Empirical {
                samples: points.len(),
            },
            solution,
            1.0,
        ))
    }

    /// A codebook from explicit centroids: 2, 4, ..., 256 finite values in strictly increasing
    /// order. Its distortion is unknown (`None`).
    pub fn from_centroids(centroids: &[f32]) -> Result<Self> {
        let levels = centroids.len();
        if !(2..=256).contains(&levels) || !levels.is_power_of_two() {
            return Err(Error::InvalidInput(format!(
                "a codebook needs 2^bits centroids with bits in 1..=8, got {levels}"
            )));
        }
        crate::error::check_finite("centroids", centroids)?;
        if centroids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidInput(
                "centroids must be strictly increasing".into(),
            ));
        }
        let bits = levels.trailing_zeros() as u8;
        let solution = Solution {
            centroids: centroids.iter().map(|&c| c as f64).collect(),
            distortion: None,
            iterations: 0,
            converged: true,
        };
        Ok(Self::from_solution(
            bits,
            CodebookSource::Explicit,
            solution,
            1.0,
        ))
    }

    fn from_solution(bits: u8, source: CodebookSource, solution: Solution, scale: f64) -> Self {
        let centroids: Vec<f64> = solution.centroids.iter().map(|c| c * scale).collect();
        debug_assert_eq!(centroids.len(), 1 << bits);
        debug_assert!(centroids.windows(2).all(|w| w[0] < w[1]));
        let centroids_f32 = centroids.iter().map(|&c| c as f32).collect();
        let boundaries_f32 = centroids
            .windows(2)
            .map(|w| (0.5 * (w[0] + w[1])) as f32)
            .collect();
        Self {
            bits,
            source,
            centroids,
            centroids_f32,
            boundaries_f32,
            distortion: solution.distortion.map(|d| d * scale * scale),
            iterations: solution.iterations,
            converged: solution.converged,
        }
    }

    /// This codebook with every centroid multiplied by `factor` (> 0); the distortion scales by
    /// factor². E.g. `Codebook::gaussian(1.0, b)?.scaled(1.0 / (d as f64).sqrt())`.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::InvalidInput(format!(
                "scale factor must be positive and finite, got {factor}"
            )));
        }
        // The f32 centroids must stay finite and strictly increasing.
        let as_f32: Vec<f32> = self.centroids.iter().map(|c| (c * factor) as f32).collect();
        let scaled_ok =
            as_f32.iter().all(|c| c.is_finite()) && as_f32.windows(2).all(|w| w[0] < w[1]);
        if !scaled_ok {
            return Err(Error::InvalidInput(format!(
                "scale factor {factor} makes the centroids collide or overflow"
            )));
        }
        let solution = Solution {
            centroids: self.centroids.clone(),
            distortion: self.distortion,
            iterations: self.iterations,
            converged: self.converged,
        };
        Ok(Self::from_solution(
            self.bits,
            self.source.clone(),
            solution,
            factor,
        ))
    }

    /// The bit width b (1..=8).
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The number of levels, 2^b.
    pub fn levels(&self) -> usize {
        self.centroids.len()
    }

    /// The centroids (reconstruction values), strictly increasing, as f32.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids_f32
    }

    /// The centroids in the f64 precision they were computed in.
    pub fn centroids_f64(&self) -> &[f64] {
        &self.centroids
    }

    /// The 2^b - 1 decision boundaries (midpoints of adjacent centroids), increasing.
    pub fn boundaries(&self) -> &[f32] {
        &self.boundaries_f32
    }

    /// The index of the nearest centroid (by binary search on the boundaries). A value exactly
    /// on a boundary goes to the lower cell; NaN maps to index 0.
    pub fn quantize(&self, value: f32) -> u8 {
        self.boundaries_f32.partition_point(|&b| b < value) as u8
    }

    /// The centroid for `index`. Only the low `bits` bits of `index` are used, as in packed
    /// codes, so this never panics.
    pub fn value(&self, index: u8) -> f32 {
        self.centroids_f32[index as usize & (self.centroids_f32.len() - 1)]
    }

    /// The expected squared error E[(X - Q(X))²] per scalar under the distribution the codebook
    /// was designed for (for [`Codebook::sphere`]: per coordinate, so a unit vector of
    /// dimension d has expected squared error d times this); for [`Codebook::fit`] the weighted
    /// mean squared error on the samples; `None` for [`Codebook::from_centroids`].
    pub fn distortion(&self) -> Option<f64> {
        self.distortion
    }

    /// Where the codebook came from.
    pub fn source(&self) -> &CodebookSource {
        &self.source
    }

    /// How many solver iterations were run.
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// Whether the solver met its convergence tolerance (always true for explicit centroids).
    pub fn converged(&self) -> bool {
        self.converged
    }
}

/// The output of a solver, before scaling.
struct Solution {
    centroids: Vec<f64>,
    distortion: Option<f64>,
    iterations: usize,
    converged: bool,
}

/// A symmetric source density, parametrized by a variable u in which it is smooth.
#[derive(Debug, Clone, Copy)]
enum Model {
    /// N(0, 1), with u = t.
    Gaussian,
    /// One coordinate of a uniform point on S^{dim-1}, with t = sin(u), density cos^{dim-2}(u) du.
    Sphere { dim: usize },
}

impl Model {
    /// The integration range is [-u_max, u_max]; the mass outside is below 1e-36.
    fn u_max(self) -> f64 {
        match self {
            Model::Gaussian => 13.0,
            Model::Sphere { dim } => {
                // (1 - t²)^k <= exp(-k t²): the tail beyond 13/sqrt(d-3) is below a Gaussian's.
                let t = if dim > 3 {
                    (13.0 / ((dim - 3) as f64).sqrt()).min(1.0)
                } else {
                    1.0
                };
                t.asin()
            }
        }
    }

    fn t(self, u: f64) -> f64 {
        match self {
            Model::Gaussian => u,
            Model::Sphere { .. } => u.sin(),
        }
    }

    fn u(self, t: f64) -> f64 {
        match self {
            Model::Gaussian => t,
            Model::Sphere { .. } => t.clamp(-1.0, 1.0).asin(),
        }
    }

    /// The (unnormalized) density of u.
    fn weight(self, u: f64) -> f64 {
        match self {
            Model::Gaussian => (-0.5 * u * u).exp(),
            Model::Sphere { dim } => powi_cos(u, (dim - 2) as f64),
        }
    }

    /// f(t(u))^(1/3) · t'(u): the Panter-Dite point density (asymptotically optimal centroid
    /// density), used to seed the iteration.
    fn companding(self, u: f64) -> f64 {
        match self {
            Model::Gaussian => (-u * u / 6.0).exp(),
            Model::Sphere { dim } => powi_cos(u, dim as f64 / 3.0),
        }
    }

    /// The density of t at t(u), unnormalized consistently with `weight`.
    fn density_t(self, u: f64) -> f64 {
        match self {
            Model::Gaussian => (-0.5 * u * u).exp(),
            Model::Sphere { dim } => powi_cos(u, dim as f64 - 3.0),
        }
    }

    /// The standard deviation of t, the natural scale of tolerances.
    fn scale(self) -> f64 {
        match self {
            Model::Gaussian => 1.0,
            Model::Sphere { dim } => 1.0 / (dim as f64).sqrt(),
        }
    }
}

/// cos(u)^e for |u| <= π/2, robust at the end points.
fn powi_cos(u: f64, e: f64) -> f64 {
    if e == 0.0 {
        return 1.0;
    }
    let c = u.cos().max(0.0);
    if c == 0.0 {
        return if e > 0.0 { 0.0 } else { f64::INFINITY };
    }
    (e * c.ln()).exp()
}

/// Iteration cap of the density solver (Newton needs about 5; plain Lloyd would need more).
const MAX_DENSITY_ITERATIONS: usize = 2000;
const PANELS: usize = 1024;
const GL_ORDER: usize = 8;

/// The density tabulated on a grid of panels in u, with per-panel moments, so that the moments
/// of any interval cost a few additions plus two partial panels.
struct Grid {
    model: Model,
    lo: f64,
    h: f64,
    rule: GaussLegendre,
    /// Per panel: ∫w, ∫t w, over the panel.
    panels: Vec<[f64; 2]>,
    total: f64,
}

impl Grid {
    fn new(model: Model) -> Self {
        let hi = model.u_max();
        let lo = -hi;
        let h = (hi - lo) / PANELS as f64;
        let rule = GaussLegendre::new(GL_ORDER);
        let mut grid = Self {
            model,
            lo,
            h,
            rule,
            panels: Vec::with_capacity(PANELS),
            total: 0.0,
        };
        for i in 0..PANELS {
            let (a, b) = grid.panel(i);
            let m = grid.partial(a, b);
            grid.panels.push(m);
        }
        grid.total = grid.panels.iter().map(|m| m[0]).sum();
        grid
    }

    fn hi(&self) -> f64 {
        self.lo + self.h * PANELS as f64
    }

    fn panel(&self, i: usize) -> (f64, f64) {
        let a = self.lo + self.h * i as f64;
        let b = if i + 1 == PANELS {
            self.hi()
        } else {
            self.lo + self.h * (i + 1) as f64
        };
        (a, b)
    }

    fn panel_of(&self, u: f64) -> usize {
        (((u - self.lo) / self.h).floor().max(0.0) as usize).min(PANELS - 1)
    }

    /// [∫w, ∫t w] over [a, b] by one Gauss-Legendre rule.
    fn partial(&self, a: f64, b: f64) -> [f64; 2] {
        let mut m = [0.0; 2];
        if b <= a {
            return m;
        }
        self.rule.for_each_node(a, b, |u, w| {
            let wt = self.model.weight(u) * w;
            m[0] += wt;
            m[1] += wt * self.model.t(u);
        });
        m
    }

    /// [∫w, ∫t w] over [a, b] ⊂ [lo, hi].
    fn moments(&self, a: f64, b: f64) -> [f64; 2] {
        let a = a.max(self.lo);
        let b = b.min(self.hi());
        if b <= a {
            return [0.0; 2];
        }
        let ia = self.panel_of(a);
        let ib = self.panel_of(b);
        if ia == ib {
            return self.partial(a, b);
        }
        let mut m = self.partial(a, self.panel(ia).1);
        for p in &self.panels[ia + 1..ib] {
            m[0] += p[0];
            m[1] += p[1];
        }
        let tail = self.partial(self.panel(ib).0, b);
        [m[0] + tail[0], m[1] + tail[1]]
    }

    /// ∫ (t - c)² w over [a, b], evaluated node by node (no cancellation).
    fn squared_error(&self, a: f64, b: f64, c: f64) -> f64 {
        let a = a.max(self.lo);
        let b = b.min(self.hi());
        if b <= a {
            return 0.0;
        }
        let ia = self.panel_of(a);
        let ib = self.panel_of(b);
        let mut sum = 0.0;
        for i in ia..=ib {
            let (pa, pb) = self.panel(i);
            self.rule.for_each_node(pa.max(a), pb.min(b), |u, w| {
                let e = self.model.t(u) - c;
                sum += self.model.weight(u) * w * e * e;
            });
        }
        sum
    }

    /// The 2^bits Panter-Dite seeds: quantiles (i + 1/2)/n of the density f^(1/3).
    fn companding_seeds(&self, levels: usize) -> Vec<f64> {
        let mut cumulative = Vec::with_capacity(PANELS + 1);
        cumulative.push(0.0);
        let mut acc = 0.0;
        for i in 0..PANELS {
            let (a, b) = self.panel(i);
            acc += self.rule.integrate(a, b, |u| self.model.companding(u));
            cumulative.push(acc);
        }
        (0..levels)
            .map(|i| {
                let target = acc * (i as f64 + 0.5) / levels as f64;
                let k = cumulative.partition_point(|&c| c < target).clamp(1, PANELS);
                let (a, b) = self.panel(k - 1);
                let (c0, c1) = (cumulative[k - 1], cumulative[k]);
                let frac = if c1 > c0 {
                    (target - c0) / (c1 - c0)
                } else {
                    0.5
                };
                self.model.t(a + frac * (b - a))
            })
            .collect()
    }
}

/// Lloyd-Max for a symmetric density: Lloyd iterations, switching to Newton's method on the
/// fixed-point equations once the Lloyd map is close to converged, with a Lloyd fallback
/// whenever a Newton step would not improve.
fn solve_density(model: Model, bits: u8) -> Solution {
    let levels = 1usize << bits;
    let grid = Grid::new(model);
    let scale = model.scale();
    let tolerance = 1e-13 * scale;
    let mut c = grid.companding_seeds(levels);
    symmetrize(&mut c);

    // Invariant: (t, masses) = lloyd_step(c).
    let (mut t, mut masses) = lloyd_step(&grid, &c);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < MAX_DENSITY_ITERATIONS {
        iterations += 1;
        let step = max_abs_diff(&c, &t);
        if step <= tolerance {
            c = t;
            converged = true;
            break;
        }
        // Newton: solve (I - J) δ = T(c) - c, J the tridiagonal Jacobian of the Lloyd map T;
        // accept the result if its own Lloyd residual is smaller, else take the Lloyd step.
        let newton = newton_step(&grid, &c, &t, &masses)
            .filter(|n| n.windows(2).all(|w| w[0] < w[1]))
            .and_then(|mut n| {
                symmetrize(&mut n);
                let (tn, mn) = lloyd_step(&grid, &n);
                (max_abs_diff(&n, &tn) < step).then_some((n, tn, mn))
            });
        match newton {
            Some((n, tn, mn)) => {
                c = n;
                t = tn;
                masses = mn;
            }
            None => {
                c = t;
                symmetrize(&mut c);
                (t, masses) = lloyd_step(&grid, &c);
            }
        }
    }

    let distortion = total_distortion(&grid, &c);
    Solution {
        centroids: c,
        distortion: Some(distortion),
        iterations,
        converged,
    }
}

/// One Lloyd step: the conditional means of the cells bounded by the midpoints of `c`, and each
/// cell's probability mass (unnormalized).
fn lloyd_step(grid: &Grid, c: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = c.len();
    let mut next = Vec::with_capacity(n);
    let mut masses = Vec::with_capacity(n);
    let mut a = grid.lo;
    for i in 0..n {
        let b = if i + 1 < n {
            grid.model.u(0.5 * (c[i] + c[i + 1]))
        } else {
            grid.hi()
        };
        let m = grid.moments(a, b);
        masses.push(m[0]);
        next.push(if m[0] > 0.0 { m[1] / m[0] } else { c[i] });
        a = b;
    }
    (next, masses)
}

/// A Newton step for the fixed point c = T(c) of the Lloyd map, or `None` if the linear system
/// is singular. `t` is T(c) and `masses` the cell masses at c.
fn newton_step(grid: &Grid, c: &[f64], t: &[f64], masses: &[f64]) -> Option<Vec<f64>> {
    let n = c.len();
    // ∂T_i/∂b_i = f(b_i)(b_i - T_i)/M_i, ∂T_i/∂b_{i-1} = f(b_{i-1})(T_i - b_{i-1})/M_i, and
    // b_i = (c_i + c_{i+1})/2. Assemble A = I - J (tridiagonal) and the residual r = T(c) - c.
    let mut lower = vec![0.0; n];
    let mut diag = vec![1.0; n];
    let mut upper = vec![0.0; n];
    let boundary_density: Vec<f64> = (0..n - 1)
        .map(|i| {
            let b = 0.5 * (c[i] + c[i + 1]);
            grid.model.density_t(grid.model.u(b))
        })
        .collect();
    for i in 0..n {
        if masses[i] <= 0.0 {
            return None;
        }
        if i + 1 < n {
            let b = 0.5 * (c[i] + c[i + 1]);
            let d = boundary_density[i] * (b - t[i]) / masses[i] * 0.5;
            diag[i] -= d;
            upper[i] -= d;
        }
        if i > 0 {
            let b = 0.5 * (c[i - 1] + c[i]);
            let d = boundary_density[i - 1] * (t[i] - b) / masses[i] * 0.5;
            diag[i] -= d;
            lower[i] -= d;
        }
    }
    let rhs: Vec<f64> = t.iter().zip(c).map(|(ti, ci)| ti - ci).collect();
    let delta = solve_tridiagonal(&lower, &diag, &upper, &rhs)?;
    Some(c.iter().zip(&delta).map(|(ci, di)| ci + di).collect())
}

/// Thomas algorithm for a tridiagonal system; `None` on a zero pivot.
fn solve_tridiagonal(lower: &[f64], diag: &[f64], upper: &[f64], rhs: &[f64]) -> Option<Vec<f64>> {
    let n = diag.len();
    let mut c_prime = vec![0.0; n];
    let mut d_prime = vec![0.0; n];
    let mut pivot = diag[0];
    if pivot.abs() < 1e-300 {
        return None;
    }
    c_prime[0] = upper[0] / pivot;
    d_prime[0] = rhs[0] / pivot;
    for i in 1..n {
        pivot = diag[i] - lower[i] * c_prime[i - 1];
        if pivot.abs() < 1e-300 || !pivot.is_finite() {
            return None;
        }
        c_prime[i] = upper[i] / pivot;
        d_prime[i] = (rhs[i] - lower[i] * d_prime[i - 1]) / pivot;
    }
    let mut x = d_prime;
    for i in (0..n.saturating_sub(1)).rev() {
        x[i] -= c_prime[i] * x[i + 1];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Σ over cells of ∫(t - c_i)² f, normalized by the total mass.
fn total_distortion(grid: &Grid, c: &[f64]) -> f64 {
    let n = c.len();
    let mut a = grid.lo;
    let mut sum = 0.0;
    for i in 0..n {
        let b = if i + 1 < n {
            grid.model.u(0.5 * (c[i] + c[i + 1]))
        } else {
            grid.hi()
        };
        sum += grid.squared_error(a, b, c[i]);
        a = b;
    }
    sum / grid.total
}

/// Makes the centroids exactly antisymmetric (c_i = -c_{n-1-i}), as the optimum is for a
/// symmetric density.
fn symmetrize(c: &mut [f64]) {
    let n = c.len();
    for i in 0..n / 2 {
        let v = 0.5 * (c[n - 1 - i] - c[i]);
        c[i] = -v;
        c[n - 1 - i] = v;
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Empirical Lloyd-Max on sorted (value, weight) pairs with positive weights.
fn solve_empirical(points: &[(f64, f64)], bits: u8, options: &FitOptions) -> Solution {
    let levels = 1usize << bits;
    let n = points.len();
    // Prefix sums of w and w·x for O(log n) cell statistics.
    let mut p0 = Vec::with_capacity(n + 1);
    let mut p1 = Vec::with_capacity(n + 1);
    p0.push(0.0);
    p1.push(0.0);
    for &(x, w) in points {
        p0.push(p0.last().copied().unwrap_or(0.0) + w);
        p1.push(p1.last().copied().unwrap_or(0.0) + w * x);
    }
    let total = p0[n];
    let mean = p1[n] / total;
    let variance = points
        .iter()
        .map(|&(x, w)| w * (x - mean) * (x - mean))
        .sum::<f64>()
        / total;
    let spread = points[n - 1].0 - points[0].0;
    let scale = if variance > 0.0 {
        variance.sqrt()
    } else {
        mean.abs().max(1.0)
    };

    // Seeds at the weighted quantiles (i + 1/2)/levels, then made strictly increasing.
    let mut c: Vec<f64> = (0..levels)
        .map(|i| {
            let target = total * (i as f64 + 0.5) / levels as f64;
            let k = p0[1..].partition_point(|&s| s < target).min(n - 1);
            points[k].0
        })
        .collect();
    let nudge = if spread > 0.0 { spread } else { scale } * 1e-6;
    for i in 1..levels {
        if c[i] <= c[i - 1] {
            c[i] = c[i - 1] + nudge;
        }
    }

    let tolerance = options.tolerance * scale;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < options.max_iterations {
        iterations += 1;
        let mut next = Vec::with_capacity(levels);
        let mut start = 0;
        for i in 0..levels {
            // Cell i holds the points with b_{i-1} < x <= b_i.
            let end = if i + 1 < levels {
                let b = 0.5 * (c[i] + c[i + 1]);
                start + points[start..].partition_point(|p| p.0 <= b)
            } else {
                n
            };
            let w = p0[end] - p0[start];
            next.push(if end > start && w > 0.0 {
                ((p1[end] - p1[start]) / w).clamp(points[start].0, points[end - 1].0)
            } else {
                c[i]
            });
            start = end;
        }
        let step = max_abs_diff(&c, &next);
        c = next;
        if step <= tolerance {
            converged = true;
            break;
        }
    }
    debug_assert!(c.windows(2).all(|w| w[0] < w[1]));

    // The weighted MSE, directly (no cancellation).
    let mut sum = 0.0;
    let mut cell = 0;
    for &(x, w) in points {
        while cell + 1 < levels && x > 0.5 * (c[cell] + c[cell + 1]) {
            cell += 1;
        }
        sum += w * (x - c[cell]) * (x - c[cell]);
    }
    Solution {
        centroids: c,
        distortion: Some(sum / total),
        iterations,
        converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lloyd-Max distortions of N(0, 1) (Max 1960), to the digits usually quoted.
    const GAUSSIAN_DISTORTION: [f64; 4] = [0.3634, 0.1175, 0.03454, 0.009497];

    #[test]
    fn gaussian_known_values() {
        for (i, &known) in GAUSSIAN_DISTORTION.iter().enumerate() {
            let cb = Codebook::gaussian(1.0, i as u8 + 1).unwrap();
            let d = cb.distortion().unwrap();
            assert!(cb.converged());
            assert!((d - known).abs() < 0.01 * known, "{} bits: {d}", i + 1);
        }
        // 1 bit: ±sqrt(2/π), distortion 1 - 2/π.
        let cb = Codebook::gaussian(1.0, 1).unwrap();
        let c = (2.0 / std::f64::consts::PI).sqrt();
        assert!((cb.centroids_f64()[1] - c).abs() < 1e-10);
        assert!((cb.distortion().unwrap() - (1.0 - 2.0 / std::f64::consts::PI)).abs() < 1e-10);
        // High rate: the Panter-Dite approximation (√3·π/2)·4^-b is within ~1% at 8 bits.
        let pd = 3f64.sqrt() * std::f64::consts::PI / 2.0 / 4f64.powi(8);
        let d8 = Codebook::gaussian(1.0, 8).unwrap().distortion().unwrap();
        assert!((d8 / pd - 1.0).abs() < 0.015, "{d8} vs {pd}");
        // 2 bits: ±0.4528, ±1.510 (Max's table).
        let cb = Codebook::gaussian(1.0, 2).unwrap();
        assert!((cb.centroids_f64()[2] - 0.4528).abs() < 1e-3);
        assert!((cb.centroids_f64()[3] - 1.5104).abs() < 1e-3);
    }

    #[test]
    fn symmetric_sorted_converged_all_widths() {
        for bits in 1..=8 {
            for cb in [
                Codebook::gaussian(0.5, bits).unwrap(),
                Codebook::sphere(128, bits).unwrap(),
                Codebook::sphere(3, bits).unwrap(),
            ] {
                assert!(cb.converged(), "{:?} {bits}", cb.source());
                assert_eq!(cb.levels(), 1 << bits);
                let c = cb.centroids_f64();
                assert!(c.windows(2).all(|w| w[0] < w[1]));
                for i in 0..c.len() {
                    assert!((c[i] + c[c.len() - 1 - i]).abs() < 1e-12);
                }
                let b = cb.boundaries();
                assert_eq!(b.len(), c.len() - 1);
                assert!(b.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }

    #[test]
    fn fixed_point_conditions_hold() {
        // Re-derive the conditional means independently, with a fine plain Riemann sum in t.
        let dim = 16;
        let cb = Codebook::sphere(dim, 3).unwrap();
        let c = cb.centroids_f64();
        let f = |t: f64| (1.0 - t * t).powf((dim as f64 - 3.0) / 2.0);
        let steps = 400_000;
        let mut m0 = vec![0.0; c.len()];
        let mut m1 = vec![0.0; c.len()];
        for k in 0..steps {
            let t = -1.0 + 2.0 * (k as f64 + 0.5) / steps as f64;
            let i = cb.quantize(t as f32) as usize;
            m0[i] += f(t);
            m1[i] += f(t) * t;
        }
        for i in 0..c.len() {
            assert!((m1[i] / m0[i] - c[i]).abs() < 1e-5, "cell {i}");
        }
    }

    #[test]
    fn sphere_d3_is_uniform_quantizer() {
        // For d = 3 the density is uniform on [-1, 1]: Lloyd-Max is the uniform quantizer.
        for bits in 1..=4u8 {
            let cb = Codebook::sphere(3, bits).unwrap();
            let n = 1usize << bits;
            for (i, &c) in cb.centroids_f64().iter().enumerate() {
                let expected = -1.0 + (2 * i + 1) as f64 / n as f64;
                assert!((c - expected).abs() < 1e-9, "{bits} bits, {i}: {c}");
            }
            let width = 2.0 / n as f64;
            let d = cb.distortion().unwrap();
            assert!((d - width * width / 12.0).abs() < 1e-10);
        }
    }

    #[test]
    fn sphere_approaches_scaled_gaussian() {
        let dim = 128;
        for bits in 1..=4 {
            let s = Codebook::sphere(dim, bits).unwrap();
            let g = Codebook::gaussian(1.0 / (dim as f64).sqrt(), bits).unwrap();
            for (a, b) in s.centroids_f64().iter().zip(g.centroids_f64()) {
                assert!((a - b).abs() < 0.02 * b.abs(), "{bits} bits: {a} vs {b}");
            }
            let ratio = s.distortion().unwrap() / g.distortion().unwrap();
            assert!((ratio - 1.0).abs() < 0.02, "{bits} bits: ratio {ratio}");
        }
        // And the gap shrinks with d.
        let gap = |d: usize| {
            let s = Codebook::sphere(d, 2).unwrap();
            let g = Codebook::gaussian(1.0 / (d as f64).sqrt(), 2).unwrap();
            (s.centroids_f64()[3] / g.centroids_f64()[3] - 1.0).abs()
        };
        assert!(gap(1024) < gap(128) && gap(128) < gap(16));
    }

    #[test]
    fn quantize_is_nearest_centroid() {
        let cb = Codebook::gaussian(1.0, 3).unwrap();
        for k in -400..=400 {
            let x = k as f32 * 0.01;
            let q = cb.quantize(x) as usize;
            let best = cb
                .centroids()
                .iter()
                .map(|c| (c - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert!(((cb.centroids()[q] - x).abs() - best).abs() <= 1e-6);
        }
        assert_eq!(cb.quantize(f32::NAN), 0);
        assert_eq!(cb.quantize(f32::INFINITY), 7);
        assert_eq!(cb.value(7), cb.centroids()[7]);
        assert_eq!(cb.value(8 + 3), cb.centroids()[3]);
    }

    #[test]
    fn fit_recovers_gaussian_codebook() {
        let samples = crate::rng::random_normal(100_000, 11);
        for bits in 1..=3 {
            let fitted = Codebook::fit(&samples, None, bits, &FitOptions::default()).unwrap();
            let exact = Codebook::gaussian(1.0, bits).unwrap();
            assert!(fitted.converged());
            for (a, b) in fitted.centroids_f64().iter().zip(exact.centroids_f64()) {
                assert!((a - b).abs() < 0.03, "{bits} bits: {a} vs {b}");
            }
            let r = fitted.distortion().unwrap() / exact.distortion().unwrap();
            assert!((r - 1.0).abs() < 0.03, "{bits} bits: ratio {r}");
        }
    }

    #[test]
    fn fit_weights_and_degenerate_data() {
        // Weight 3 on 1.0 and weight 1 on 0.0, 1 bit: two clusters at the two values.
        let cb = Codebook::fit(&[0.0, 1.0], Some(&[1.0, 3.0]), 1, &FitOptions::default()).unwrap();
        assert_eq!(cb.centroids(), &[0.0, 1.0]);
        assert_eq!(cb.distortion(), Some(0.0));
        // Integer weights equal repetition.
        let a = Codebook::fit(
            &[0.0, 1.0, 5.0],
            Some(&[2.0, 1.0, 1.0]),
            1,
            &FitOptions::default(),
        )
        .unwrap();
        let b = Codebook::fit(&[0.0, 0.0, 1.0, 5.0], None, 1, &FitOptions::default()).unwrap();
        assert_eq!(a.centroids(), b.centroids());
        // Fewer distinct values than levels still gives a valid, sorted codebook.
        let cb = Codebook::fit(&[2.0; 10], None, 4, &FitOptions::default()).unwrap();
        assert!(cb.centroids().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(cb.centroids()[cb.quantize(2.0) as usize], 2.0);
        // Bad input is an error, not a panic.
        assert!(Codebook::fit(&[], None, 2, &FitOptions::default()).is_err());
        assert!(Codebook::fit(&[f32::NAN], None, 2, &FitOptions::default()).is_err());
        assert!(Codebook::fit(&[1.0], Some(&[-1.0]), 2, &FitOptions::default()).is_err());
        assert!(Codebook::fit(&[1.0], None, 9, &FitOptions::default()).is_err());
    }

    #[test]
    fn from_centroids_validates() {
        let cb = Codebook::from_centroids(&[-1.0, -0.25, 0.25, 1.0]).unwrap();
        assert_eq!(cb.bits(), 2);
        assert_eq!(cb.boundaries(), &[-0.625, 0.0, 0.625]);
        assert!(Codebook::from_centroids(&[0.0, 1.0, 2.0]).is_err());
        assert!(Codebook::from_centroids(&[1.0, 0.0]).is_err());
        assert!(Codebook::sphere(1, 2).is_err());
        assert!(Codebook::gaussian(-1.0, 2).is_err());
        assert!(Codebook::gaussian(1e-320, 8).is_err());
        assert!(Codebook::gaussian(1e300, 8).is_err());
        assert!(Codebook::gaussian(1.0, 0).is_err());
    }
}
