//! `turboquant perplexity` on SmolLM2 and WikiText-2.

mod common;

use common::{smollm2, succeed, text, turboquant, wikitext};

#[test]
fn f16_is_its_own_reference_and_q4_0_is_worse_than_q8_0() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ppl.json");
    let (stdout, _) = succeed(
        turboquant()
            .args(["perplexity", "-m"])
            .arg(smollm2())
            .arg("-f")
            .arg(wikitext())
            .args(["--chunks", "3", "--kv-quant", "q4_0,q8_0,f16", "--json"])
            .arg(&json),
    );
    assert!(
        stdout.contains("PPL ratio") && stdout.contains("q4_0"),
        "{stdout}"
    );

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
