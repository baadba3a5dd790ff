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

/// SmolLM2-135M, fetched once through the alias (the same path users take).
pub fn smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = turboquant()
            .args(["fetch", "smollm2-135m"])
            .output()
            .expect("run fetch");
        assert!(
            out.status.success(),
            "fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PathBuf::from(path)
    })
    .clone()
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
        let out = turboquant()
            .args(["document", "--bytes", "300000"])
            .output()
            .expect("run document");
        assert!(out.status.success());
        let path =
            std::env::temp_dir().join(format!("turboquant-test-text-{}.txt", std::process::id()));
        std::fs::write(&path, out.stdout).unwrap();
        (path, false)
    })
    .clone()
}
