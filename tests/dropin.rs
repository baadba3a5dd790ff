//! The drop-in patch for llama.cpp users: `scripts/apply-to-llama-cpp` on a fresh copy of the
//! pinned upstream tree adds the turbo types everywhere llama.cpp's own tools look for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn fresh_upstream_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("llama.cpp");
    copy_tree(Path::new(env!("TURBOQUANT_PRISTINE_SOURCE")), &tree);
    (dir, tree)
}

fn apply(tree: &Path) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apply-to-llama-cpp"))
        .arg(tree)
        .output()
        .expect("run scripts/apply-to-llama-cpp")
}

#[test]
fn applies_to_the_pinned_tree_and_llama_cpp_accepts_the_types() {
    let (_dir, tree) = fresh_upstream_copy();
    let out = apply(&tree);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for patch in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("patches")).unwrap() {
        let name = patch.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".patch") {
            assert!(
                stdout.contains(&format!("applied {name}")),
                "{name} not applied: {stdout}"
            );
        }
    }

    // the types exist, and llama.cpp's own list of cache types (-ctk/-ctv) has them
    let ggml_h = fs::read_to_string(tree.join("ggml/include/ggml.h")).unwrap();
    assert!(ggml_h.contains("GGML_TYPE_TURBO3"));
    let arg = fs::read_to_string(tree.join("common/arg.cpp")).unwrap();
    for t in ["GGML_TYPE_TURBO4", "GGML_TYPE_TURBO3", "GGML_TYPE_TURBO2"] {
        assert!(
            arg.contains(&format!("    {t},")),
            "common/arg.cpp lacks {t}"
        );
    }
    assert!(tree.join("ggml/src/ggml-cpu/turbo.c").is_file());

    // common/arg.cpp still compiles against the patched headers
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(cxx)
        .current_dir(&tree)
        .args([
            "-std=c++17",
            "-fsyntax-only",
            "-Icommon",
            "-Iinclude",
            "-Iggml/include",
            "-Ivendor",
            "common/arg.cpp",
        ])
        .status()
        .expect("run the C++ compiler");
    assert!(
        status.success(),
        "common/arg.cpp does not compile after the patches"
    );

    // a second run sees the types and changes nothing
    let again = apply(&tree);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already has"));
}

#[test]
fn a_tree_it_does_not_fit_is_left_untouched() {
    let (_dir, tree) = fresh_upstream_copy();
    let kv = tree.join("src/llama-kv-cache.cpp");
    // a line that patch 0001 needs as context, as a different llama.cpp version might have it
    let original = fs::read_to_string(&kv).unwrap();
    let changed = original.replace(
        "ggml_type_name(type_v), (float)memory_size_v / (1024.0f * 1024.0f));",
        "ggml_type_name(type_v), (float)memory_size_v / 1048576.0f);",
    );
    assert_ne!(changed, original);
    fs::write(&kv, &changed).unwrap();
    let ggml_h_before = fs::read(tree.join("ggml/include/ggml.h")).unwrap();

    let out = apply(&tree);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not apply") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(tree.join("ggml/include/ggml.h")).unwrap(),
        ggml_h_before
    );
    assert!(!tree.join("ggml/src/ggml-cpu/turbo.c").exists());

    let not_llama = tempfile::tempdir().unwrap();
    let out = apply(not_llama.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not look like a llama.cpp source tree")
    );
}
