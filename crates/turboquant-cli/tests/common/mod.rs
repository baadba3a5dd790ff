//! Shared by the CLI tests: the binary, the reference model and the test text.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use assert_cmd::Command;

pub fn turboquant() -> Command {
    let mut cmd = Command::cargo_bin("turboquant").expect("the turboquant binary is built");
    cmd.env_remove("TURBOQUANT_LLAMA_LOG");
    cmd
}

/// Runs a command that must succeed (the test fails with its output otherwise) and returns its
/// stdout and stderr.
pub fn succeed(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run turboquant");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed\n{stdout}{stderr}");
    assert!(
        std::str::from_utf8(&out.stdout).is_ok() && std::str::from_utf8(&out.stderr).is_ok(),
        "{cmd:?} wrote output that is not UTF-8"
    );
    (stdout, stderr)
}

/// The path of a model alias, fetched through `turboquant fetch` (the same path users take).
pub fn fetched(alias: &str) -> PathBuf {
    PathBuf::from(succeed(turboquant().args(["fetch", alias])).0.trim())
}

/// SmolLM2-135M, fetched once.
pub fn smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("smollm2-135m")).clone()
}

/// Runs `turboquant perplexity -m MODEL -f <the test text> ARGS... --json FILE`, which must
/// succeed, and returns its stdout and its JSON report.
pub fn perplexity_report(model: &std::path::Path, args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("perplexity.json");
    let (stdout, _) = succeed(
        turboquant()
            .args(["perplexity", "-m"])
            .arg(model)
            .arg("-f")
            .arg(wikitext())
            .args(args)
            .arg("--json")
            .arg(&json),
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (stdout, report)
}

/// Gemma-3-270M, fetched once.
pub fn gemma3() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("gemma3-270m")).clone()
}

/// A line in the test output even when cargo captures it (a passing test's `eprintln!` is
/// hidden): what a test ran on this host, what it skipped and why.
pub fn note(test: &str, text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "note ({test}): {text}");
}

/// WikiText-2's test split from the shared data folder (or $TURBOQUANT_TEXT); where neither
/// exists, the built-in document (`turboquant document`) written to a temporary file.
pub fn wikitext() -> PathBuf {
    text().0
}

/// The scoring text and whether it is WikiText-2.
pub fn text() -> (PathBuf, bool) {
    static TEXT: OnceLock<(PathBuf, bool)> = OnceLock::new();
    TEXT.get_or_init(|| {
        if let Some(p) = std::env::var_os("TURBOQUANT_TEXT") {
            return (PathBuf::from(p), true);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let shared = root.join("../shared/data/wikitext-2-test.txt");
        if shared.is_file() {
            return (shared, true);
        }
        let (document, _) = succeed(turboquant().args(["document", "--bytes", "300000"]));
        let path =
            std::env::temp_dir().join(format!("turboquant-test-text-{}.txt", std::process::id()));
        std::fs::write(&path, document).unwrap();
        (path, false)
    })
    .clone()
}
