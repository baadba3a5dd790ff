//! The evaluation commands: memory, fidelity, needle, validate.

mod common;

use common::{fetched, smollm2, succeed, turboquant};

fn gemma3() -> std::path::PathBuf {
    fetched("gemma3-270m")
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn memory_model_matches_llama_cpp_to_the_byte_on_both_models() {
    for (model, batch) in [(smollm2(), "1"), (smollm2(), "2"), (gemma3(), "1")] {
        let (stdout, _) = succeed(turboquant().args(["memory", "-m"]).arg(&model).args([
            "-c",
            "700,2048",
            "--batch",
            batch,
            "--verify",
            "--kv-quant",
            "f16,q8_0,q4_0,turbo4,turbo3,turbo2",
        ]));
        assert!(
            stdout.contains("matches the bytes llama.cpp allocated"),
            "{stdout}"
        );
    }
}

#[test]
fn memory_budget_fits_longer_contexts_with_smaller_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.json");
    let (stdout, _) = succeed(
        turboquant()
            .args(["memory", "-m"])
            .arg(gemma3())
            .args([
                "-c",
                "32768",
                "--budget",
                "32MiB",
                "--kv-quant",
                "f16,q8_0,q4_0,turbo4,turbo3,turbo2",
                "--json",
            ])
            .arg(&path),
    );
    let report = json(&path);
    let longest: Vec<u64> = report["fits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["max_ctx_size"].as_u64().unwrap())
        .collect();
    assert!(longest.windows(2).all(|w| w[0] < w[1]), "{longest:?}");
    // Gemma's 15 window layers keep 512 + 512 cells: at 32768 tokens only 3 layers grow
    let f16 = report["entries"][0]["total_bytes"].as_u64().unwrap();
    assert_eq!(f16, 2 * 2 * 256 * (3 * 32768 + 15 * 1024));
    assert!(
        stdout.contains("15 of them with a 512-token window"),
        "{stdout}"
    );
}

#[test]
fn fidelity_writes_one_json_per_method_and_finds_qjl_worse_at_equal_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = succeed(
        turboquant()
            .args(["fidelity", "-m"])
            .arg(smollm2())
            .args([
                "--contexts",
                "256,512",
                "--bits",
                "3",
                "--methods",
                "mse,prod,turbo,q8_0",
                "--queries",
                "4",
                "--json-dir",
            ])
            .arg(dir.path()),
    );
    assert!(stdout.contains("context 512:"), "{stdout}");

    let read = |name: &str| json(&dir.path().join(name));
    let mse = read("fidelity-smollm2-135m-mse-3bit.json");
    let prod = read("fidelity-smollm2-135m-prod-3bit.json");
    let turbo = read("fidelity-smollm2-135m-turbo-3bit.json");
    let q8 = read("fidelity-smollm2-135m-q8_0.json");
    let at = |r: &serde_json::Value, key: &str| r["by_context"]["512"][key].as_f64().unwrap();
    assert_eq!(mse["bits"].as_f64().unwrap(), 3.0);
    assert_eq!(at(&mse, "seq_len"), 512.0);
    assert_eq!(
        mse["by_context"]["512"]["per_layer"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    assert!(at(&q8, "cosine_similarity") > 0.999);
    assert!((at(&turbo, "compression_ratio") - 16.0 / 3.25).abs() < 1e-9);
    for r in [&mse, &prod, &turbo] {
        let c = at(r, "cosine_similarity");
        assert!((0.8..1.0).contains(&c), "{c}");
        let top5 = at(r, "top5_match_pct");
        assert!(top5 >= at(r, "top1_match_pct") && top5 <= 100.0);
    }
    // at equal bits, the 1-bit QJL stage costs more than the MSE bit it replaces
    assert!(at(&prod, "cosine_similarity") < at(&mse, "cosine_similarity"));
}

#[test]
fn needle_is_found_with_the_f16_cache_near_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needle.json");
    succeed(
        turboquant()
            .args(["needle", "-m"])
            .arg(smollm2())
            .args([
                "--contexts",
                "512",
                "--depths",
                "0.9",
                "--trials",
                "2",
                "--kv-quant",
                "f16,turbo4",
                "--json",
            ])
            .arg(&path),
    );
    let report = json(&path);
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    assert_eq!(trials[0]["cache"], "f16");
    assert!(
        trials[0]["exact_match"].as_bool().unwrap(),
        "{:?}",
        trials[0]
    );
    assert!(trials[0]["prompt_tokens"].as_u64().unwrap() <= 512);
    // the second trial asks for another passphrase
    assert_ne!(trials[0]["expected"], trials[1]["expected"]);
    // per cache: the depth's cell and the all-depths cell, each over 2 trials, with an interval
    // around its pass rate
    let summary = report["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 4);
    for cell in summary {
        assert_eq!(cell["trials"], 2);
        let rate = cell["pass_rate"].as_f64().unwrap();
        let (lo, hi) = (
            cell["ci95"][0].as_f64().unwrap(),
            cell["ci95"][1].as_f64().unwrap(),
        );
        assert!(
            0.0 <= lo && lo <= rate && rate <= hi && hi <= 1.0,
            "{cell:?}"
        );
    }
    assert!(summary[1]["depth"].is_null());
}

#[test]
fn validate_reproduces_the_papers_table() {
    let (stdout, _) = succeed(turboquant().args(["validate", "--vectors", "1000"]));
    // the 3-bit row: measured MSE near 0.034 next to the paper's 0.03
    let row = stdout
        .lines()
        .find(|l| l.contains("│    3 ┆"))
        .expect("a 3-bit row");
    let mse: f64 = row.split('┆').nth(1).unwrap().trim().parse().unwrap();
    assert!((0.031..0.037).contains(&mse), "{row}");
    assert!(stdout.contains("needle retrieval"));
}

#[test]
fn report_is_byte_stable_and_holds_every_chart() {
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        succeed(
            turboquant()
                .arg("report")
                .arg(&results)
                .arg("--out")
                .arg(dir.path()),
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in ["compression.svg", "compression.png", "index.html"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    for prefix in [
        "kld-",
        "ppl-ratio-",
        "fidelity-cosine-",
        "fidelity-top1-",
        "memory-",
        "speed-",
    ] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(prefix) && n.ends_with(".png")),
            "no {prefix} chart in {names:?}"
        );
    }
    for name in &names {
        let x = std::fs::read(a.path().join(name)).unwrap();
        let y = std::fs::read(b.path().join(name)).unwrap();
        assert!(x == y, "{name} differs between two runs on the same input");
        if name.ends_with(".png") {
            assert_eq!(&x[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
    let page = std::fs::read_to_string(a.path().join("index.html")).unwrap();
    for title in [
        "KL divergence from the f16 cache",
        "Needle in a haystack",
        "Attention-score fidelity",
        "<svg",
    ] {
        assert!(page.contains(title), "{title} missing from the page");
    }
}
