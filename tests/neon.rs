//! The NEON kernels, compiled for aarch64 and run under qemu: each gives the scalar path's result.
//! Needs aarch64-linux-gnu-gcc and qemu-aarch64 (scripts/setup installs them on Debian/Ubuntu).

use std::path::Path;
use std::process::Command;

#[test]
fn neon_paths_equal_the_scalar_path() {
    let tree = Path::new(llama_cpp_sys_2::PATCHED_TREE);
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/neon/harness.c");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("neon-harness");

    let compiled = Command::new("aarch64-linux-gnu-gcc")
        .args(["-O2", "-march=armv8.2-a+fp16", "-std=c11", "-static", "-o"])
        .arg(&binary)
        .arg(format!("-I{}", tree.join("ggml/include").display()))
        .arg(format!("-I{}", tree.join("ggml/src").display()))
        .arg(format!("-I{}", tree.join("ggml/src/ggml-cpu").display()))
        .arg(&harness)
        .arg(tree.join("ggml/src/ggml-turbo.c"))
        .arg(tree.join("ggml/src/ggml-cpu/turbo.c"))
        .arg("-lm")
        .output()
        .expect("aarch64-linux-gnu-gcc is needed for this test: run scripts/setup");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );

    let run = Command::new("qemu-aarch64")
        .arg(&binary)
        .output()
        .expect("qemu-aarch64 is needed for this test: run scripts/setup");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("PASS"),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
