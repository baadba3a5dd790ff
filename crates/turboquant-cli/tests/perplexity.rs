//! `turboquant perplexity` on SmolLM2 and WikiText-2.

mod common;

use common::{perplexity_report, smollm2, text, turboquant, wikitext};

#[test]
fn f16_is_its_own_reference_and_q4_0_is_worse_than_q8_0() {
    let (stdout, report) = perplexity_report(
        &smollm2(),
        &["--chunks", "3", "--kv-quant", "q4_0,q8_0,f16"],
    );
    assert!(
        stdout.contains("PPL ratio") && stdout.contains("q4_0"),
        "{stdout}"
    );

    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["cache"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["f16", "q4_0", "q8_0"],
        "f16 first, then the order given"
    );
    let field = |i: usize, key: &str| rows[i][key].as_f64().unwrap();
    let kld = |i: usize| rows[i]["kld"]["mean"].as_f64().unwrap();

    assert_eq!(kld(0), 0.0);
    assert_eq!(rows[0]["ppl_ratio"]["mean"].as_f64().unwrap(), 1.0);
    assert_eq!(field(0, "top1_pct"), 100.0);
    assert_eq!(field(0, "bits_per_value"), 16.0);
    assert_eq!(report["tokens_scored_per_type"].as_u64().unwrap(), 3 * 255);

    assert!(
        kld(1) > kld(2),
        "q4_0 KLD {} should exceed q8_0's {}",
        kld(1),
        kld(2)
    );
    assert!(kld(2) > 0.0);
    assert!(
        (field(1, "compression") - 16.0 / 4.5).abs() < 0.01,
        "q4_0 is 4.5 bits per value"
    );
    let ppl = rows[0]["ppl"]["mean"].as_f64().unwrap();
    let (_, is_wikitext) = text();
    // the built-in document (used where WikiText-2 is not beside the checkout) is easier text
    let expected = if is_wikitext { 10.0..40.0 } else { 1.5..40.0 };
    assert!(
        expected.contains(&ppl),
        "SmolLM2's perplexity should be in {expected:?} (about 20 on WikiText-2), got {ppl}"
    );
}

#[test]
fn long_contexts_report_the_divergence_by_position() {
    let (stdout, report) = perplexity_report(
        &smollm2(),
        &["-c", "2048", "--chunks", "1", "--kv-quant", "q8_0"],
    );
    assert!(stdout.contains("by position"), "{stdout}");
    let rows = report["rows"].as_array().unwrap();
    // perplexity still counts the second half only
    assert_eq!(report["tokens_scored_per_type"].as_u64().unwrap(), 1023);
    for row in rows {
        let ranges = row["by_position"].as_array().unwrap();
        let spans: Vec<(u64, u64, u64)> = ranges
            .iter()
            .map(|r| {
                (
                    r["from"].as_u64().unwrap(),
                    r["to"].as_u64().unwrap(),
                    r["tokens"].as_u64().unwrap(),
                )
            })
            .collect();
        // every position but the last, which has no next token
        assert_eq!(spans, [(0, 1024, 1024), (1024, 2048, 1023)]);
    }
    let kld = |row: usize, range: usize| rows[row]["by_position"][range]["kld"]["mean"].as_f64();
    assert_eq!(kld(0, 0), Some(0.0), "f16 against itself");
    assert!(kld(1, 0).unwrap() > 0.0 && kld(1, 1).unwrap() > 0.0);
    // the second range is the half perplexity scores
    assert_eq!(kld(1, 1), rows[1]["kld"]["mean"].as_f64());
}

#[test]
fn turbo_seeds_run_each_turbo_type_once_per_seed() {
    let (_, report) = perplexity_report(
        &smollm2(),
        &[
            "--chunks",
            "1",
            "--kv-quant",
            "q8_0,turbo3",
            "--turbo-seeds",
            "0,7",
        ],
    );
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["cache"].as_str().unwrap()).collect();
    assert_eq!(names, ["f16", "q8_0", "turbo3, seed 0", "turbo3, seed 7"]);
    assert!(
        rows[1].get("turbo_seed").is_none(),
        "q8_0 has no turbo seed"
    );
    let kld = |i: usize| rows[i]["kld"]["mean"].as_f64().unwrap();
    assert_ne!(kld(2), kld(3), "another seed turns the keys another way");
    let spread = &report["over_seeds"][0];
    assert_eq!(spread["cache"], "turbo3");
    assert_eq!(spread["seeds"], serde_json::json!([0, 7]));
    let mean = spread["kld"]["mean"].as_f64().unwrap();
    assert!((mean - (kld(2) + kld(3)) / 2.0).abs() < 1e-12);

    let out = turboquant()
        .args(["perplexity", "-m"])
        .arg(smollm2())
        .arg("-f")
        .arg(wikitext())
        .args(["--chunks", "1", "--turbo-seeds", "3,3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("twice"), "{stderr}");
}
