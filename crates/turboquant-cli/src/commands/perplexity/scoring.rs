//! Scoring next-token distributions: each cache type against the f16 cache, token by token.
//!
//! The f16 distributions of one batch are kept (as log-probabilities) while every other cache
//! type runs the same batch, so nothing larger than one batch's distributions is ever held.

/// `log_softmax` of `logits` into `out`; returns the index of the largest logit.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) -> usize {
    let (argmax, max) = argmax(logits);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l - lse;
    }
    argmax
}

fn argmax(values: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in values.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}

/// The reference distribution at one scored position.
pub struct BaseToken<'a> {
    pub log_probs: &'a [f32],
    pub argmax: usize,
    pub target: usize,
}

/// What one position contributes to a cache type's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScore {
    /// -log p(target) under this cache.
    pub nll: f64,
    /// -log p(target) under the f16 cache.
    pub base_nll: f64,
    /// KL(p_f16 || p_this).
    pub kld: f64,
    pub same_top1: bool,
    /// p(target) under this cache minus under the f16 cache.
    pub delta_p: f64,
}

/// Scores `logits` (this cache) against the base distribution.
///
/// The log-probabilities are formed exactly as [`log_softmax`] forms the base's, so identical
/// logits score exactly zero divergence.
pub fn score(logits: &[f32], base: &BaseToken<'_>) -> TokenScore {
    let (argmax, max) = argmax(logits);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut kld = 0.0f64;
    for (&lb, &l) in base.log_probs.iter().zip(logits) {
        kld += f64::from(lb).exp() * f64::from(lb - (l - lse));
    }
    let nll = -f64::from(logits[base.target] - lse);
    let base_nll = -f64::from(base.log_probs[base.target]);
    TokenScore {
        nll,
        base_nll,
        kld: kld.max(0.0),
        same_top1: argmax == base.argmax,
        delta_p: (-nll).exp() - (-base_nll).exp(),
    }
}

/// Mean and standard error of a sample.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

fn estimate(values: impl Iterator<Item = f64> + Clone) -> Estimate {
    let n = values.clone().count() as f64;
    if n == 0.0 {
        return Estimate {
            mean: f64::NAN,
            stderr: f64::NAN,
        };
    }
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    Estimate {
        mean,
        stderr: (var / n).sqrt(),
    }
}

/// Everything scored for one cache type.
#[derive(Default)]
pub struct Scores {
    /// Each scored position: its place in the chunk, whether perplexity counts it (the second
    /// half of the chunk), and its score.
    tokens: Vec<(usize, bool, TokenScore)>,
}

/// The divergence over one range of positions in the chunk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PositionRange {
    pub from: usize,
    pub to: usize,
    pub tokens: usize,
    pub kld: Estimate,
    pub top1_pct: f64,
}

/// The summary a table row shows.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub tokens: usize,
    pub ppl: Estimate,
    /// PPL(this) / PPL(f16) = exp(mean of the per-token nll differences).
    pub ppl_ratio: Estimate,
    pub kld: Estimate,
    pub top1_pct: f64,
    pub rms_delta_p_pct: f64,
}

impl Scores {
    pub fn push(&mut self, position: usize, counts_for_ppl: bool, score: TokenScore) {
        self.tokens.push((position, counts_for_ppl, score));
    }

    /// KL divergence and top-1 agreement of the positions in each range.
    pub fn by_position(&self, ranges: &[std::ops::Range<usize>]) -> Vec<PositionRange> {
        ranges
            .iter()
            .map(|r| {
                let t: Vec<&TokenScore> = self
                    .tokens
                    .iter()
                    .filter(|(pos, _, _)| r.contains(pos))
                    .map(|(_, _, s)| s)
                    .collect();
                PositionRange {
                    from: r.start,
                    to: r.end,
                    tokens: t.len(),
                    kld: estimate(t.iter().map(|s| s.kld)),
                    top1_pct: 100.0 * t.iter().filter(|s| s.same_top1).count() as f64
                        / t.len().max(1) as f64,
                }
            })
            .collect()
    }

    /// The row's figures, over the positions perplexity counts.
    pub fn summary(&self) -> Summary {
        let t: Vec<TokenScore> = self
            .tokens
            .iter()
            .filter(|(_, counts, _)| *counts)
            .map(|(_, _, s)| *s)
            .collect();
        let nll = estimate(t.iter().map(|s| s.nll));
        let diff = estimate(t.iter().map(|s| s.nll - s.base_nll));
        let ppl = nll.mean.exp();
        let ratio = diff.mean.exp();
        let n = t.len().max(1) as f64;
        Summary {
            tokens: t.len(),
            // delta method: d exp(m) = exp(m) dm
            ppl: Estimate {
                mean: ppl,
                stderr: ppl * nll.stderr,
            },
            ppl_ratio: Estimate {
                mean: ratio,
                stderr: ratio * diff.stderr,
            },
            kld: estimate(t.iter().map(|s| s.kld)),
            top1_pct: 100.0 * t.iter().filter(|s| s.same_top1).count() as f64 / n,
            rms_delta_p_pct: 100.0
                * (t.iter().map(|s| s.delta_p * s.delta_p).sum::<f64>() / n).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_of(logits: &[f32], target: usize, buf: &mut Vec<f32>) -> usize {
        buf.resize(logits.len(), 0.0);
        let _ = target;
        log_softmax(logits, buf)
    }

    #[test]
    fn identical_logits_score_zero() {
        let logits = [1.0f32, 3.0, -2.0, 0.5];
        let mut lp = Vec::new();
        let argmax = base_of(&logits, 2, &mut lp);
        let base = BaseToken {
            log_probs: &lp,
            argmax,
            target: 2,
        };
        let s = score(&logits, &base);
        assert_eq!(s.kld, 0.0);
        assert!(s.same_top1);
        assert_eq!(s.nll, s.base_nll);
        assert_eq!(s.delta_p, 0.0);
    }

    #[test]
    fn kl_of_a_known_pair() {
        // p = (0.5, 0.5), q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
        let mut lp = Vec::new();
        let argmax = base_of(&[0.0, 0.0], 0, &mut lp);
        let base = BaseToken {
            log_probs: &lp,
            argmax,
            target: 0,
        };
        let q = [0.25f32.ln(), 0.75f32.ln()];
        let s = score(&q, &base);
        let expected = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((s.kld - expected).abs() < 1e-6, "{} vs {expected}", s.kld);
        assert!((s.nll - 4f64.ln()).abs() < 1e-6);
        assert!((s.delta_p - (0.25 - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn summary_of_scores() {
        let mut scores = Scores::default();
        for (pos, (nll, base_nll)) in [(1.0, 1.0), (3.0, 1.0)].into_iter().enumerate() {
            scores.push(
                pos + 10,
                true,
                TokenScore {
                    nll,
                    base_nll,
                    kld: nll - base_nll,
                    same_top1: nll == base_nll,
                    delta_p: 0.1,
                },
            );
        }
        // a position outside perplexity's half counts only by position
        scores.push(
            0,
            false,
            TokenScore {
                nll: 9.0,
                base_nll: 1.0,
                kld: 5.0,
                same_top1: false,
                delta_p: 0.5,
            },
        );
        let ranges = scores.by_position(&[0..10, 10..20]);
        assert_eq!(ranges[0].tokens, 1);
        assert_eq!(ranges[0].kld.mean, 5.0);
        assert_eq!(ranges[1].tokens, 2);
        assert!((ranges[1].kld.mean - 1.0).abs() < 1e-12);
        assert_eq!(ranges[1].top1_pct, 50.0);
        let s = scores.summary();
        assert!((s.ppl.mean - 2f64.exp()).abs() < 1e-9);
        assert!((s.ppl_ratio.mean - 1f64.exp()).abs() < 1e-9);
        assert!((s.kld.mean - 1.0).abs() < 1e-12);
        assert!((s.kld.stderr - 1.0).abs() < 1e-12);
        assert_eq!(s.top1_pct, 50.0);
        assert!((s.rms_delta_p_pct - 10.0).abs() < 1e-9);
    }
}
