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

/// A piece of the scoring text far from the chunks scored, cut at character boundaries.
fn another_part_of_the_text() -> String {
    let text = std::fs::read_to_string(wikitext()).unwrap();
    let mut from = text.len() / 2;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let mut to = (from + 12_000).min(text.len());
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    text[from..to].to_string()
}

/// The built-in calibration paragraph, read from its C string literal in the overlay.
fn builtin_paragraph() -> String {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../patches/overlay/src/llama-turbo.cpp"),
    )
    .unwrap();
    let start = source
        .find("k_turbo_calibration_text =")
        .expect("the paragraph's declaration");
    let literal = &source[start..start + source[start..].find(';').unwrap()];
    let mut text = String::new();
    for line in literal.lines().skip(1) {
        let line = line.trim();
        assert!(line.starts_with('"') && line.ends_with('"'), "{line}");
        text.push_str(&line[1..line.len() - 1].replace("\\n", "\n"));
    }
    assert!(!text.contains('\\'), "an escape this reader does not know");
    assert!(text.len() > 1000, "{text}");
    text
}

#[test]
fn a_calibration_text_moves_the_turbo_rows_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--chunks", "1", "--kv-quant", "q4_0,turbo4,turbo3"];
    let (_, builtin) = perplexity_report(&smollm2(), &args);
    let with = |file: &std::path::Path| {
        let mut with_file = args.to_vec();
        with_file.extend(["--turbo-calibration", file.to_str().unwrap()]);
        perplexity_report(&smollm2(), &with_file)
    };
    let kld = |r: &serde_json::Value| r["kld"]["mean"].as_f64().unwrap();

    // the built-in paragraph given as a file: the same calibration, bit for bit
    let paragraph = dir.path().join("paragraph.txt");
    std::fs::write(&paragraph, builtin_paragraph()).unwrap();
    let (_, same) = with(&paragraph);
    for (a, b) in builtin["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(same["rows"].as_array().unwrap())
    {
        assert_eq!(kld(a), kld(b), "{}", a["cache"]);
    }

    let calibration = dir.path().join("calibration.txt");
    std::fs::write(&calibration, another_part_of_the_text()).unwrap();
    let path = calibration.to_str().unwrap();
    let (stdout, calibrated) = with(&calibration);
    assert!(stdout.contains("turbo types calibrated on"), "{stdout}");
    assert_eq!(calibrated["turbo_calibration"], path);
    assert!(
        builtin.get("turbo_calibration").is_none(),
        "no calibration file, no field: the default report is unchanged"
    );

    let rows = |r: &serde_json::Value| r["rows"].as_array().unwrap().clone();
    let (a, b) = (rows(&builtin), rows(&calibrated));
    let names: Vec<&str> = b.iter().map(|r| r["cache"].as_str().unwrap()).collect();
    assert_eq!(names, ["f16", "q4_0", "turbo4", "turbo3"]);
    for i in 0..4 {
        let ppl = |r: &serde_json::Value| r["ppl"]["mean"].as_f64().unwrap();
        let (ka, kb) = (kld(&a[i]), kld(&b[i]));
        if i < 2 {
            // f16 and q4_0 have no calibration: bit for bit the same run
            assert_eq!(ka, kb, "{} moved with the calibration text", names[i]);
            assert_eq!(ppl(&a[i]), ppl(&b[i]), "{}", names[i]);
        } else {
            assert_ne!(
                ka, kb,
                "{} should calibrate on the given text, not the built-in one",
                names[i]
            );
            // another English text: the turbo types stay in the range they have
            assert!(kb > 0.0 && kb < 3.0 * ka, "{}: {ka} -> {kb}", names[i]);
        }
    }
}

#[test]
fn a_missing_or_empty_calibration_text_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file.txt");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, " \n").unwrap();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [b'a', 0xff, b'b']).unwrap();
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, "some text\0more text").unwrap();
    let cases = [
        (&missing, "cannot read text file"),
        (&empty, "is empty"),
        (&binary, "not UTF-8"),
        (&nul, "NUL byte"),
    ];
    for (file, expected) in cases {
        for command in [
            vec!["perplexity", "-f", wikitext().to_str().unwrap()],
            vec!["run", "-p", "Hello"],
            vec!["needle"],
        ] {
            let out = turboquant()
                .arg(command[0])
                .arg("-m")
                .arg(smollm2())
                .args(&command[1..])
                .arg("--turbo-calibration")
                .arg(file)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
            assert!(
                stderr.contains("--turbo-calibration")
                    && stderr.contains(expected)
                    && stderr.contains(&*file.display().to_string()),
                "{command:?} with {}: {stderr}",
                file.display()
            );
        }
    }
}
