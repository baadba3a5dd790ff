//! Attention-fidelity metrics between exact and estimated attention-score vectors.
//!
//! A "head" below is one (layer, head) pair observed on one or more query rows; its score
//! matrix is (rows, seq) row-major. Top-1 and top-5 matches compare the argmax of the exact
//! scores with the estimated ranking; a head is "at risk" when the top-1 key changes for any of
//! its rows.

use crate::error::{check_len, Error, Result};

/// Cosine similarity of two equally long vectors (f64 accumulation). 1 if both are zero, 0 if
/// exactly one is.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Result<f64> {
    check_len("second vector", a.len(), b.len())?;
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    Ok(match (aa > 0.0, bb > 0.0) {
        (true, true) => ab / (aa.sqrt() * bb.sqrt()),
        (false, false) => 1.0,
        _ => 0.0,
    })
}

/// The index of the largest value (the first one on ties; NaN never wins), `None` if empty.
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
        .or(if values.is_empty() { None } else { Some(0) })
}

/// The indices of the `k` largest values, largest first (ties by lower index; NaN last).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| {
        let v = values[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Whether the estimated scores have the same argmax as the exact ones.
pub fn top1_match(exact: &[f32], estimated: &[f32]) -> Result<bool> {
    check_len("estimated scores", exact.len(), estimated.len())?;
    Ok(argmax(exact) == argmax(estimated))
}

/// Whether the exact argmax is among the `k` largest estimated scores.
pub fn topk_match(exact: &[f32], estimated: &[f32], k: usize) -> Result<bool> {
    check_len("estimated scores", exact.len(), estimated.len())?;
    Ok(match argmax(exact) {
        Some(best) => top_k(estimated, k).contains(&best),
        None => true,
    })
}

/// [`topk_match`] with k = 5.
pub fn top5_match(exact: &[f32], estimated: &[f32]) -> Result<bool> {
    topk_match(exact, estimated, 5)
}

/// The softmax of `logits` (max-subtracted, so it never overflows). Empty in, empty out.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if logits.is_empty() || !max.is_finite() {
        return vec![1.0 / logits.len().max(1) as f32; logits.len()];
    }
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// KL(p ‖ q) = Σ p_i ln(p_i / q_i) in nats for two probability vectors; terms with p_i = 0
/// contribute 0 and q_i is floored at 1e-30 so the result stays finite.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> Result<f64> {
    check_len("second distribution", p.len(), q.len())?;
    if p.iter()
        .chain(q)
        .any(|&v| v.is_nan() || v < 0.0 || v.is_infinite())
    {
        return Err(Error::InvalidInput(
            "probabilities must be finite and non-negative".into(),
        ));
    }
    Ok(p.iter()
        .zip(q)
        .filter(|(&pi, _)| pi > 0.0)
        .map(|(&pi, &qi)| {
            let (pi, qi) = (f64::from(pi), f64::from(qi).max(1e-30));
            pi * (pi / qi).ln()
        })
        .sum::<f64>()
        .max(0.0))
}

/// Fidelity of one head's estimated scores, averaged over its query rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadFidelity {
    /// Query rows compared.
    pub rows: usize,
    /// Mean cosine similarity of the score rows.
    pub cosine: f64,
    /// Share of rows whose argmax is unchanged.
    pub top1: f64,
    /// Share of rows whose exact argmax is in the estimated top 5.
    pub top5: f64,
    /// Mean KL(softmax(exact) ‖ softmax(estimated)), in nats.
    pub kl: f64,
}

impl HeadFidelity {
    /// Compares (rows, seq) row-major score matrices; `seq` ≥ 1 and both of length rows·seq.
    pub fn from_scores(exact: &[f32], estimated: &[f32], seq: usize) -> Result<Self> {
        check_len("estimated scores", exact.len(), estimated.len())?;
        if seq == 0 || exact.is_empty() || exact.len() % seq != 0 {
            return Err(Error::InvalidInput(format!(
                "{} scores do not form rows of length {seq}",
                exact.len()
            )));
        }
        let rows = exact.len() / seq;
        let (mut cosine, mut top1, mut top5, mut kl) = (0.0, 0.0, 0.0, 0.0);
        for (e, s) in exact.chunks_exact(seq).zip(estimated.chunks_exact(seq)) {
            cosine += cosine_similarity(e, s)?;
            top1 += f64::from(u8::from(top1_match(e, s)?));
            top5 += f64::from(u8::from(top5_match(e, s)?));
            kl += kl_divergence(&softmax(e), &softmax(s))?;
        }
        let n = rows as f64;
        Ok(Self {
            rows,
            cosine: cosine / n,
            top1: top1 / n,
            top5: top5 / n,
            kl: kl / n,
        })
    }

    /// Whether the top-1 key changed for at least one row.
    pub fn at_risk(&self) -> bool {
        self.top1 < 1.0
    }
}

/// Means over many heads (and layers).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FidelitySummary {
    /// Heads aggregated.
    pub heads: usize,
    /// Mean over heads of the mean cosine similarity.
    pub mean_cosine: f64,
    /// The lowest per-head mean cosine similarity.
    pub min_cosine: f64,
    /// Mean top-1 match rate.
    pub top1: f64,
    /// Mean top-5 match rate.
    pub top5: f64,
    /// Mean KL divergence (nats).
    pub mean_kl: f64,
    /// Share of heads whose top-1 changed for some row.
    pub heads_at_risk: f64,
}

/// Accumulates [`HeadFidelity`] values into a [`FidelitySummary`].
#[derive(Debug, Clone, Default)]
pub struct FidelityAggregator {
    heads: Vec<HeadFidelity>,
}

impl FidelityAggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one head's fidelity.
    pub fn push(&mut self, head: HeadFidelity) {
        self.heads.push(head);
    }

    /// Compares one head's (rows, seq) score matrices and adds the result.
    pub fn add_scores(
        &mut self,
        exact: &[f32],
        estimated: &[f32],
        seq: usize,
    ) -> Result<HeadFidelity> {
        let head = HeadFidelity::from_scores(exact, estimated, seq)?;
        self.push(head);
        Ok(head)
    }

    /// Adds every head of (heads, rows, seq) score tensors, e.g. the outputs of
    /// [`crate::batch::CompressedKeys::attention_scores`] and
    /// [`crate::batch::exact_attention_scores`].
    pub fn add_tensor(
        &mut self,
        exact: &[f32],
        estimated: &[f32],
        heads: usize,
        seq: usize,
    ) -> Result<()> {
        check_len("estimated scores", exact.len(), estimated.len())?;
        if heads == 0 || exact.len() % heads != 0 {
            return Err(Error::InvalidInput(format!(
                "{} scores do not split into {heads} heads",
                exact.len()
            )));
        }
        let per_head = exact.len() / heads;
        for (e, s) in exact
            .chunks_exact(per_head)
            .zip(estimated.chunks_exact(per_head))
        {
            self.add_scores(e, s, seq)?;
        }
        Ok(())
    }

    /// The heads added so far.
    pub fn heads(&self) -> &[HeadFidelity] {
        &self.heads
    }

    /// Means over the heads added so far (all zero if none).
    pub fn summary(&self) -> FidelitySummary {
        let n = self.heads.len();
        if n == 0 {
            return FidelitySummary::default();
        }
        let mean = |f: fn(&HeadFidelity) -> f64| self.heads.iter().map(f).sum::<f64>() / n as f64;
        FidelitySummary {
            heads: n,
            mean_cosine: mean(|h| h.cosine),
            min_cosine: self
                .heads
                .iter()
                .map(|h| h.cosine)
                .fold(f64::INFINITY, f64::min),
            top1: mean(|h| h.top1),
            top5: mean(|h| h.top5),
            mean_kl: mean(|h| h.kl),
            heads_at_risk: mean(|h| f64::from(u8::from(h.at_risk()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_vectors() {
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 1.0]).unwrap(), 0.0);
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!(
            (cosine_similarity(&[1.0, 1.0], &[1.0, 0.0]).unwrap() - 0.5f64.sqrt()).abs() < 1e-12
        );
        assert!((cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(cosine_similarity(&[1.0], &[1.0, 2.0]).is_err());

        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN, -1.0]), Some(1));
        assert_eq!(top_k(&[0.1, 0.5, 0.3, 0.9], 2), vec![3, 1]);

        let exact = [0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0];
        // Estimated: index 1 dropped to rank 5 (values 9, 8, 7, 6 ahead of it).
        let est = [9.0, 5.0, 8.0, 7.0, 6.0, 0.0, -1.0];
        assert!(!top1_match(&exact, &est).unwrap());
        assert!(top5_match(&exact, &est).unwrap());
        assert!(!topk_match(&exact, &est, 4).unwrap());
        let est2 = [9.0, 4.0, 8.0, 7.0, 6.0, 5.0, -1.0];
        assert!(!top5_match(&exact, &est2).unwrap());
        assert!(top1_match(&exact, &exact).unwrap());
    }

    #[test]
    fn softmax_and_kl() {
        let p = softmax(&[0.0, 0.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        // Large logits do not overflow: softmax([1000, 1001]) = [1/(1+e), e/(1+e)].
        let p = softmax(&[1000.0, 1001.0]);
        let e = std::f32::consts::E;
        assert!((p[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (p[1] - e / (1.0 + e)).abs() < 1e-6);
        assert!(softmax(&[]).is_empty());
        // KL([1/2, 1/2] ‖ [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3).
        let kl = kl_divergence(&[0.5, 0.5], &[0.25, 0.75]).unwrap();
        let expect = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl - expect).abs() < 1e-7, "{kl} vs {expect}");
        assert_eq!(kl_divergence(&[0.0, 1.0], &[0.5, 0.5]).unwrap(), 2f64.ln());
        assert_eq!(kl_divergence(&[0.3, 0.7], &[0.3, 0.7]).unwrap(), 0.0);
        assert!(kl_divergence(&[-0.1, 1.1], &[0.5, 0.5]).is_err());
    }

    #[test]
    fn aggregator() {
        let mut agg = FidelityAggregator::new();
        // Head A: 2 rows, both exact.
        let exact_a = [1.0, 2.0, 3.0, 3.0, 2.0, 1.0];
        agg.add_scores(&exact_a, &exact_a, 3).unwrap();
        // Head B: 1 row, argmax moves from 0 to 1, still in top 5; cosine = 0 (orthogonal).
        let h = agg.add_scores(&[1.0, 0.0], &[0.0, 1.0], 2).unwrap();
        assert_eq!(h.cosine, 0.0);
        assert_eq!(h.top1, 0.0);
        assert_eq!(h.top5, 1.0);
        assert!(h.at_risk());
        let s = agg.summary();
        assert_eq!(s.heads, 2);
        assert!((s.mean_cosine - 0.5).abs() < 1e-12);
        assert_eq!(s.min_cosine, 0.0);
        assert_eq!(s.top1, 0.5);
        assert_eq!(s.top5, 1.0);
        assert_eq!(s.heads_at_risk, 0.5);
        assert!(s.mean_kl > 0.0);
        assert!(agg
            .add_scores(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2)
            .is_err());
        let mut t = FidelityAggregator::new();
        t.add_tensor(&[1.0, 2.0, 2.0, 1.0], &[1.0, 2.0, 1.0, 2.0], 2, 2)
            .unwrap();
        assert_eq!(t.summary().heads_at_risk, 0.5);
    }
}
