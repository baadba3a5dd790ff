//! Reproduces the synthetic results of the TurboQuant paper on random unit vectors (d = 128),
//! for both rotations, plus unbiasedness and a needle-retrieval check.
//!
//! Measured (release build, seed 0, 4000 vectors; printed with `--nocapture`):
//!
//! | b | MSE dense | MSE Hadamard | exact-d theory | paper | d·IP err² dense | Hadamard | theory | paper |
//! |---|-----------|--------------|----------------|-------|-----------------|----------|--------|-------|
//! | 1 | 0.3610    | 0.3607       | 0.3609         | 0.36  | 1.596           | 1.596    | 1.563  | 1.57  |
//! | 2 | 0.1160    | 0.1162       | 0.1160         | 0.117 | 0.567           | 0.569    | 0.564  | 0.56  |
//! | 3 | 0.03395   | 0.03401      | 0.03397        | 0.03  | 0.187           | 0.182    | 0.181  | 0.18  |
//! | 4 | 0.00932   | 0.00931      | 0.00931        | 0.009 | 0.0549          | 0.0528   | 0.0531 | 0.047 |
//!
//! The paper prints 0.36, 0.117, 0.03, 0.009: the Gaussian Lloyd-Max distortions 0.3634,
//! 0.1175, 0.03454, 0.009497 rounded. At d = 128 the exact sphere-density codebook gives
//! 0.3609, 0.1160, 0.03397, 0.00931 (lighter tails than the Gaussian), which is what is
//! measured. For TurboQuant_prod, d·E[(⟨y,x⟩ - ⟨y,x̃⟩)²] = (π/2 - 1/d)·E‖r‖² with r the
//! (b-1)-bit residual: 1.563, 0.564, 0.181, 0.053 at d = 128. The paper's 0.047 for b = 4 is
//! π/2 × its rounded 0.03, hence the looser tolerance against the printed value.

use turboquant::{
    random_unit_vectors, validate, QuantizerOptions, RotationKind, TurboQuantMse, TurboQuantProd,
    ValidationConfig,
};

const GAUSSIAN_LLOYD_MAX: [f64; 4] = [0.3634, 0.1175, 0.03454, 0.009497];

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum()
}

#[test]
fn distortion_table_matches_paper_for_both_rotations() {
    for rotation in [RotationKind::Dense, RotationKind::Hadamard] {
        let rows = validate(&ValidationConfig {
            rotation,
            ..ValidationConfig::default()
        })
        .unwrap();
        assert_eq!(rows.len(), 4);
        for (i, row) in rows.iter().enumerate() {
            println!(
                "{rotation:?} b={}: mse {:.5} (theory {:.5}, paper {:?}), d*ip_err^2 {:.4} (theory {:.4}, paper {:?}), prod bias {:+.5}, mse bias {:+.5}",
                row.bits, row.mse, row.mse_theory, row.mse_paper, row.ip_distortion, row.ip_theory, row.ip_paper, row.prod_bias, row.mse_bias
            );
            // MSE: within 2% of the exact-d prediction, 3% of the Gaussian Lloyd-Max values and
            // 15% of the rounded figures printed in the paper.
            assert!(
                (row.mse / row.mse_theory - 1.0).abs() < 0.02,
                "{rotation:?} {row:?}"
            );
            assert!(
                (row.mse / GAUSSIAN_LLOYD_MAX[i] - 1.0).abs() < 0.03,
                "{rotation:?} {row:?}"
            );
            assert!(
                (row.mse / row.mse_paper.unwrap() - 1.0).abs() < 0.15,
                "{rotation:?} {row:?}"
            );
            // Inner products: within 8% of the prediction and of π/2 × the Gaussian Lloyd-Max
            // value at b-1 bits; within 15% of the printed values, except 20% for b = 4, whose
            // printed 0.047 is π/2 × the rounded 0.03 (π/2 × 0.03454 = 0.0543).
            assert!(
                (row.ip_distortion / row.ip_theory - 1.0).abs() < 0.08,
                "{rotation:?} {row:?}"
            );
            let gaussian = if i == 0 {
                1.0
            } else {
                GAUSSIAN_LLOYD_MAX[i - 1]
            };
            let limit = std::f64::consts::FRAC_PI_2 * gaussian;
            assert!(
                (row.ip_distortion / limit - 1.0).abs() < 0.08,
                "{rotation:?} {row:?}"
            );
            let tolerance = if row.bits == 4 { 0.20 } else { 0.15 };
            assert!(
                (row.ip_distortion / row.ip_paper.unwrap() - 1.0).abs() < tolerance,
                "{rotation:?} {row:?}"
            );
            // MSE-only inner products shrink: ⟨x, x̃⟩ ≈ 1 - D.
            assert!(
                (row.mse_bias + row.mse_theory).abs() < 0.1 * row.mse_theory,
                "{row:?}"
            );
        }
    }
}

/// Mean and standard error of the estimation error over independently seeded quantizers.
fn error_stats(errors: &[f64]) -> (f64, f64) {
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn prod_is_unbiased_and_mse_is_shrunk() {
    // Fixed x and y with ⟨x, y⟩ ≈ 0.7; the randomness is the quantizers' seeds.
    let d = 128;
    let x = random_unit_vectors(1, d, 100);
    let noise = random_unit_vectors(1, d, 101);
    let mut y: Vec<f32> = x.iter().zip(&noise).map(|(a, b)| a + b).collect();
    let norm = dot(&y, &y).sqrt() as f32;
    y.iter_mut().for_each(|v| *v /= norm);
    let exact = dot(&x, &y);
    assert!(exact > 0.6);

    let trials = 1000;
    let options = QuantizerOptions::with_rotation(RotationKind::Hadamard);
    for bits in 1..=4u8 {
        let prod_errors: Vec<f64> = (0..trials)
            .map(|seed| {
                let q = TurboQuantProd::with_options(d, bits, seed, &options).unwrap();
                f64::from(q.inner_product(&y, &q.quantize(&x).unwrap()).unwrap()) - exact
            })
            .collect();
        let mse_errors: Vec<f64> = (0..trials)
            .map(|seed| {
                let q = TurboQuantMse::with_options(d, bits, seed, &options).unwrap();
                f64::from(q.inner_product(&y, &q.quantize(&x).unwrap()).unwrap()) - exact
            })
            .collect();
        let (prod_mean, prod_se) = error_stats(&prod_errors);
        let (mse_mean, mse_se) = error_stats(&mse_errors);
        println!(
            "b={bits}: prod error {prod_mean:+.5} ± {prod_se:.5}, mse error {mse_mean:+.5} ± {mse_se:.5}"
        );
        assert!(
            prod_mean.abs() < 4.0 * prod_se,
            "b={bits}: prod biased: {prod_mean} ± {prod_se}"
        );
        // E⟨y, x̃_mse⟩ = (1 - D_b)⟨y, x⟩: measurably negative at every width here.
        assert!(
            mse_mean + 6.0 * mse_se < 0.0,
            "b={bits}: mse not shrunk: {mse_mean} ± {mse_se}"
        );
        let expected = -TurboQuantMse::new(d, bits, 0)
            .unwrap()
            .expected_mse()
            .unwrap()
            * exact;
        assert!(
            (mse_mean - expected).abs() < 0.2 * expected.abs() + 3.0 * mse_se,
            "b={bits}: {mse_mean} vs {expected}"
        );
    }
}

#[test]
fn prod_is_unbiased_with_dense_rotation() {
    // The same with the dense rotation at a smaller d (its QR is O(d³) per seed).
    let d = 32;
    let x = random_unit_vectors(1, d, 7);
    let exact = dot(&x, &x);
    let errors: Vec<f64> = (0..600)
        .map(|seed| {
            let q = TurboQuantProd::new(d, 2, seed).unwrap();
            f64::from(q.inner_product(&x, &q.quantize(&x).unwrap()).unwrap()) - exact
        })
        .collect();
    let (mean, se) = error_stats(&errors);
    assert!(mean.abs() < 4.0 * se, "{mean} ± {se}");
    // The 2-bit MSE quantizer at the same budget is shrunk by about D_2 ≈ 0.11.
    let shrink: f64 = (0..200)
        .map(|seed| {
            let q = TurboQuantMse::new(d, 2, seed).unwrap();
            f64::from(q.inner_product(&x, &q.quantize(&x).unwrap()).unwrap()) - exact
        })
        .sum::<f64>()
        / 200.0;
    assert!(shrink < -0.08, "{shrink}");
}

#[test]
fn needle_is_found_in_compressed_cache() {
    // 2048 random unit keys; for each of 16 queries one key is planted with cosine 0.5 to the
    // query (random keys have |cosine| ≲ 0.35 at d = 128). At 3 and 4 bits the argmax of the
    // compressed attention scores must still be the needle.
    let d = 128;
    let n = 2048;
    let keys = random_unit_vectors(n, d, 1);
    let queries = random_unit_vectors(16, d, 2);
    let fillers = random_unit_vectors(16, d, 3);
    for rotation in [RotationKind::Dense, RotationKind::Hadamard] {
        for bits in [3u8, 4] {
            let config = turboquant::KvCacheConfig {
                key_bits: bits,
                value_bits: 2,
                seed: 9,
                options: QuantizerOptions::with_rotation(rotation),
            };
            let mut cache = turboquant::TurboQuantKvCache::with_config(d, &config).unwrap();
            let value = vec![0.0f32; d];
            for k in keys.chunks_exact(d) {
                cache.append(k, &value).unwrap();
            }
            let mut found = 0;
            for (i, (q, f)) in queries
                .chunks_exact(d)
                .zip(fillers.chunks_exact(d))
                .enumerate()
            {
                // needle = 0.5 q + sqrt(0.75) (f orthogonalized against q).
                let fq = dot(f, q) as f32;
                let mut perp: Vec<f32> = f.iter().zip(q).map(|(a, b)| a - fq * b).collect();
                let pn = dot(&perp, &perp).sqrt() as f32;
                perp.iter_mut().for_each(|v| *v /= pn);
                let needle: Vec<f32> = q
                    .iter()
                    .zip(&perp)
                    .map(|(a, b)| 0.5 * a + 0.75f32.sqrt() * b)
                    .collect();
                let mut c = cache.clone();
                // Plant it at a query-dependent position by appending it last and remembering.
                c.append(&needle, &value).unwrap();
                let scores = c.attention_scores(q).unwrap();
                let best = turboquant::metrics::argmax(&scores).unwrap();
                if best == n {
                    found += 1;
                } else {
                    println!("{rotation:?} {bits} bits, query {i}: argmax {best}");
                }
            }
            assert_eq!(found, 16, "{rotation:?} {bits} bits");
        }
    }
}
