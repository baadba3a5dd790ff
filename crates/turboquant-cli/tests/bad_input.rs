//! Bad input gets a clear message and a non-zero exit, never a panic or a crash.

mod common;

use std::io::Write;

use common::{smollm2, succeed, turboquant, wikitext};

/// Runs the command and returns stderr, asserting a clean failure (exit code 1, no panic).
fn fails(args: &[&std::ffi::OsStr]) -> String {
    let out = turboquant().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure, got {:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    stderr
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn missing_model_file() {
    let err = fails(&[
        os("run"),
        os("-m"),
        os("/nonexistent/model.gguf"),
        os("-p"),
        os("hi"),
    ]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_file_that_is_not_gguf() {
    let err = fails(&[
        os("run"),
        os("-m"),
        wikitext().as_os_str(),
        os("-p"),
        os("hi"),
    ]);
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn a_truncated_gguf() {
    let model = std::fs::read(smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, keep) in [("header.gguf", 2000), ("data.gguf", model.len() / 2)] {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&model[..keep])
            .unwrap();
        let err = fails(&[os("run"), os("-m"), path.as_os_str(), os("-p"), os("hi")]);
        assert!(
            err.contains("truncated") || err.contains("cut short"),
            "{name}: {err}"
        );
    }
}

#[test]
fn an_unknown_cache_type() {
    let m = smollm2();
    let err = fails(&[
        os("run"),
        os("-m"),
        m.as_os_str(),
        os("-p"),
        os("hi"),
        os("--kv-quant"),
        os("q3_k"),
    ]);
    assert!(err.contains("unknown KV-cache type `q3_k`"), "{err}");
    let err = fails(&[
        os("perplexity"),
        os("-m"),
        m.as_os_str(),
        os("-f"),
        wikitext().as_os_str(),
        os("--kv-quant"),
        os("f16,turbo9"),
    ]);
    assert!(err.contains("turbo9"), "{err}");
}

#[test]
fn empty_and_non_utf8_text() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [b'a', 0xc3, 0x28, b'b']).unwrap();
    let m = smollm2();
    for (file, expected) in [(&empty, "empty"), (&binary, "not UTF-8")] {
        let err = fails(&[
            os("perplexity"),
            os("-m"),
            m.as_os_str(),
            os("-f"),
            file.as_os_str(),
        ]);
        assert!(err.contains(expected), "{err}");
        let err = fails(&[
            os("run"),
            os("-m"),
            m.as_os_str(),
            os("-f"),
            file.as_os_str(),
        ]);
        assert!(err.contains(expected), "{err}");
    }
    let err = fails(&[os("run"), os("-m"), m.as_os_str(), os("-p"), os("")]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn a_context_longer_than_training_warns_and_one_beyond_memory_fails() {
    let m = smollm2();
    let (_, stderr) = succeed(
        turboquant()
            .args(["run", "-m"])
            .arg(&m)
            .args(["-p", "Hi", "-n", "2", "--temp", "0", "-c", "9000"]),
    );
    assert!(
        stderr.contains("warning: context of 9000 tokens is longer than the 8192"),
        "{stderr}"
    );

    let err = fails(&[
        os("run"),
        os("-m"),
        m.as_os_str(),
        os("-p"),
        os("hi"),
        os("-c"),
        os("4000000000"),
    ]);
    assert!(err.contains("memory available"), "{err}");
}

#[test]
fn a_text_shorter_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Just a few words.").unwrap();
    let m = smollm2();
    let err = fails(&[
        os("perplexity"),
        os("-m"),
        m.as_os_str(),
        os("-f"),
        short.as_os_str(),
    ]);
    assert!(err.contains("fewer than one chunk"), "{err}");
}

#[test]
fn an_unknown_value_of_a_cuda_switch() {
    for (var, value) in [
        ("GGML_CUDA_TURBO_DECODE", "rows64"),
        ("GGML_CUDA_TURBO_FUSION", "all"),
    ] {
        let out = turboquant()
            .arg("document")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {var}={value}: expected")),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "no work before the check");
    }
}

#[test]
fn a_reader_that_stops_early_is_no_crash() {
    // more than a pipe holds, so the command is still writing when the reader goes away
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("turboquant"))
        .args(["document", "--bytes", "1000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
