//! `turboquant synth`: a random-weight model of a named shape loads, generates and benchmarks
//! like any GGUF, and bad donors or output paths fail cleanly.

mod common;

use std::path::{Path, PathBuf};

use common::{smollm2, succeed, turboquant};

/// Writes the tiny shape with SmolLM2's tokenizer into `dir` and returns its path.
fn tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    let (stdout, _) = succeed(
        turboquant()
            .args(["synth", "--shape", "tiny", "--tokenizer-from"])
            .arg(smollm2())
            .arg("-o")
            .arg(&path),
    );
    assert!(stdout.contains("vocabulary of 49152 tokens"), "{stdout}");
    assert!(path.is_file());
    assert!(
        !dir.join("tiny.gguf.part").exists(),
        "the part file is renamed"
    );
    path
}

/// Runs `turboquant ARGS` that must succeed and returns its stdout and stderr.
fn succeeds(args: &[&std::ffi::OsStr]) -> (String, String) {
    succeed(turboquant().args(args))
}

#[test]
fn a_random_tiny_model_runs_benchmarks_and_keeps_its_logits_finite() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let m = model.as_os_str();

    let (_, stats) = succeeds(&[
        "run".as_ref(),
        "-m".as_ref(),
        m,
        "-p".as_ref(),
        "Hello".as_ref(),
        "-n".as_ref(),
        "4".as_ref(),
        "--temp".as_ref(),
        "0".as_ref(),
    ]);
    assert!(stats.contains("tok/s"), "{stats}");

    let (table, _) = succeeds(&[
        "bench".as_ref(),
        "-m".as_ref(),
        m,
        "-p".as_ref(),
        "16".as_ref(),
        "-n".as_ref(),
        "4".as_ref(),
        "-r".as_ref(),
        "1".as_ref(),
        "--kv-quant".as_ref(),
        "f16,turbo3".as_ref(),
    ]);
    assert!(table.contains("random tiny shape"), "{table}");
    assert!(table.contains("turbo3") && table.contains("tg4"), "{table}");

    // Random weights must still give finite logits: perplexity over them is a finite number
    // (about the vocabulary size; NaN or inf would mean the weights' scale blows up).
    let text = dir.path().join("text.txt");
    let (document, _) = succeeds(&["document".as_ref(), "--bytes".as_ref(), "4000".as_ref()]);
    std::fs::write(&text, document).unwrap();
    let json = dir.path().join("ppl.json");
    succeeds(&[
        "perplexity".as_ref(),
        "-m".as_ref(),
        m,
        "-f".as_ref(),
        text.as_os_str(),
        "-c".as_ref(),
        "64".as_ref(),
        "--chunks".as_ref(),
        "1".as_ref(),
        "--kv-quant".as_ref(),
        "f16".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ppl = report["rows"][0]["ppl"]["mean"]
        .as_f64()
        .unwrap_or_else(|| panic!("no finite perplexity in {report}"));
    assert!(ppl.is_finite() && ppl > 1.0, "perplexity {ppl}");
}

#[test]
fn the_same_seed_writes_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = std::fs::read(tiny(dir.path())).unwrap();
    let again = std::fs::read(tiny(dir.path())).unwrap();
    assert!(first == again, "seed 1 twice gave different files");
}

/// Runs synth with these arguments, expecting a clean failure; returns stderr.
fn synth_fails(args: &[&std::ffi::OsStr]) -> String {
    let out = turboquant()
        .args(["synth", "--shape", "tiny"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn bad_donors_and_outputs_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let o = out.as_os_str();

    let err = synth_fails(&[
        "--tokenizer-from".as_ref(),
        "/nonexistent/donor.gguf".as_ref(),
        "-o".as_ref(),
        o,
    ]);
    assert!(err.contains("not found"), "{err}");

    let text = dir.path().join("text.txt");
    std::fs::write(&text, "plain text, not a model").unwrap();
    let err = synth_fails(&[
        "--tokenizer-from".as_ref(),
        text.as_os_str(),
        "-o".as_ref(),
        o,
    ]);
    assert!(err.contains("not a GGUF file"), "{err}");

    // A GGUF with no metadata at all: version 3, no tensors, no keys.
    let bare = dir.path().join("bare.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    std::fs::write(&bare, bytes).unwrap();
    let err = synth_fails(&[
        "--tokenizer-from".as_ref(),
        bare.as_os_str(),
        "-o".as_ref(),
        o,
    ]);
    assert!(err.contains("has no tokenizer"), "{err}");

    let missing_dir = dir.path().join("no/such/folder/out.gguf");
    let err = synth_fails(&[
        "--tokenizer-from".as_ref(),
        smollm2().as_os_str(),
        "-o".as_ref(),
        missing_dir.as_os_str(),
    ]);
    assert!(err.contains("does not exist"), "{err}");

    assert!(!out.exists(), "a failed run leaves no output");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
