//! Gauss-Legendre quadrature rules, computed (not tabulated) by Newton's method on the Legendre
//! polynomial P_n.

/// The nodes and weights of the n-point Gauss-Legendre rule on [-1, 1].
#[derive(Debug, Clone)]
pub(crate) struct GaussLegendre {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

impl GaussLegendre {
    /// The n-point rule (exact for polynomials of degree up to 2n - 1). `n` must be at least 1.
    pub(crate) fn new(n: usize) -> Self {
        debug_assert!(n >= 1);
        let mut nodes = vec![0.0; n];
        let mut weights = vec![0.0; n];
        let nf = n as f64;
        // The roots are symmetric: compute the upper half and mirror.
        for i in 0..n.div_ceil(2) {
            // A classical initial guess for the i-th largest root.
            let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
            let mut derivative = 1.0;
            for _ in 0..100 {
                let (p, dp) = legendre_with_derivative(n, x);
                derivative = dp;
                let step = p / dp;
                x -= step;
                if step.abs() <= 1e-16 * x.abs().max(1.0) {
                    let (_, dp) = legendre_with_derivative(n, x);
                    derivative = dp;
                    break;
                }
            }
            let w = 2.0 / ((1.0 - x * x) * derivative * derivative);
            nodes[i] = x;
            weights[i] = w;
            nodes[n - 1 - i] = -x;
            weights[n - 1 - i] = w;
        }
        Self { nodes, weights }
    }

    /// Integrates `f` over [a, b].
    pub(crate) fn integrate(&self, a: f64, b: f64, mut f: impl FnMut(f64) -> f64) -> f64 {
        let half = 0.5 * (b - a);
        let mid = 0.5 * (a + b);
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&x, &w)| w * f(mid + half * x))
            .sum::<f64>()
            * half
    }

    /// Calls `f(point, weight)` for every node mapped onto [a, b], with the weight scaled to the
    /// interval (so that the sum of `weight * g(point)` approximates the integral of g).
    pub(crate) fn for_each_node(&self, a: f64, b: f64, mut f: impl FnMut(f64, f64)) {
        let half = 0.5 * (b - a);
        let mid = 0.5 * (a + b);
        for (&x, &w) in self.nodes.iter().zip(&self.weights) {
            f(mid + half * x, w * half);
        }
    }
}

/// P_n(x) and P_n'(x) by the three-term recurrence.
fn legendre_with_derivative(n: usize, x: f64) -> (f64, f64) {
    let mut p0 = 1.0;
    let mut p1 = x;
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let kf = k as f64;
        let p2 = ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf;
        p0 = p1;
        p1 = p2;
    }
    let dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_polynomials_and_exp() {
        let rule = GaussLegendre::new(10);
        // Exact up to degree 19.
        let v = rule.integrate(-1.0, 2.0, |x| x.powi(19));
        let exact = (2f64.powi(20) - 1.0) / 20.0;
        assert!((v - exact).abs() < 1e-9 * exact, "{v} vs {exact}");
        let v = rule.integrate(0.0, 1.0, f64::exp);
        assert!((v - (std::f64::consts::E - 1.0)).abs() < 1e-14);
        let total: f64 = GaussLegendre::new(7).weights.iter().sum();
        assert!((total - 2.0).abs() < 1e-14);
    }
}
