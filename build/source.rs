//! Where upstream llama.cpp comes from, and how it becomes the patched tree that is built.
//!
//! No upstream code is committed. `vendor/` is a tiny cargo package whose only dependency is the
//! crates.io `llama-cpp-sys-2` at an exact version (its Cargo.lock is committed): that crate
//! carries llama.cpp's source, so `cargo metadata` on it names a pristine copy in cargo's
//! registry (downloading it on a fresh machine). We copy that tree, add our own new files from
//! `patches/overlay/` and apply `patches/*.patch` in name order.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of the pinned upstream crate (it holds `llama.cpp/`, `wrapper.h`, ...).
pub fn locate_pristine(manifest_dir: &Path) -> PathBuf {
    let vendor_manifest = manifest_dir.join("vendor/Cargo.toml");
    println!("cargo:rerun-if-changed={}", vendor_manifest.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("vendor/Cargo.lock").display()
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--manifest-path",
    ])
    .arg(&vendor_manifest);
    if std::env::var("CARGO_NET_OFFLINE").is_ok_and(|v| v == "true" || v == "1") {
        cmd.arg("--offline");
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `cargo metadata` for {}: {e}",
            vendor_manifest.display()
        )
    });
    if !output.status.success() {
        panic!(
            "`cargo metadata --manifest-path {}` failed; it fetches the pinned llama.cpp source \
             from the crates.io registry (use CARGO_NET_OFFLINE=true only once it is cached):\n{}",
            vendor_manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("`cargo metadata` printed invalid JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "llama-cpp-sys-2"))
        .expect("vendor/Cargo.toml must depend on llama-cpp-sys-2");
    let manifest_path = package["manifest_path"]
        .as_str()
        .expect("manifest_path is a string");
    let pristine = Path::new(manifest_path)
        .parent()
        .expect("a manifest has a folder")
        .to_path_buf();
    let cmakelists = pristine.join("llama.cpp/CMakeLists.txt");
    assert!(
        cmakelists.is_file(),
        "the pinned crate at {} carries no llama.cpp source ({} is missing)",
        pristine.display(),
        cmakelists.display()
    );
    pristine
}

/// Builds `OUT_DIR/llama.cpp`: pristine source + overlay + patches + generated tables.
///
/// The tree is assembled in a staging folder and then synchronised into place file by file,
/// writing only files whose bytes changed, so CMake rebuilds only what a change touched.
pub fn stage_patched_tree(manifest_dir: &Path, pristine: &Path, out_dir: &Path) -> PathBuf {
    let patches_dir = manifest_dir.join("patches");
    let overlay = patches_dir.join("overlay");
    println!("cargo:rerun-if-changed={}", patches_dir.display());

    let staging = out_dir.join("llama.cpp.staging");
    remove_dir_if_present(&staging);
    copy_tree(&pristine.join("llama.cpp"), &staging, Overwrite::Allowed);

    if overlay.is_dir() {
        copy_tree(&overlay, &staging, Overwrite::Forbidden);
    }

    for patch in patch_files(&patches_dir) {
        apply_patch(&patch, &staging);
    }

    let tree = out_dir.join("llama.cpp");
    sync_tree(&staging, &tree);
    remove_dir_if_present(&staging);
    tree
}

/// `patches/*.patch` in name order (0001-..., 0002-...).
fn patch_files(patches_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(patches_dir) else {
        return Vec::new();
    };
    let mut patches: Vec<PathBuf> = entries
        .map(|e| e.expect("readable patches folder").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "patch"))
        .collect();
    patches.sort();
    patches
}

fn apply_patch(patch: &Path, tree: &Path) {
    let name = patch.file_name().unwrap().to_string_lossy();
    let output = Command::new("patch")
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "--reject-file=-",
        ])
        .arg("--directory")
        .arg(tree)
        .arg("--input")
        .arg(patch)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `patch` (install it: apt-get install patch): {e}"));
    if !output.status.success() {
        panic!(
            "patches/{name} does not apply to the pinned llama.cpp source:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Overwrite {
    Allowed,
    Forbidden,
}

fn copy_tree(from: &Path, to: &Path, overwrite: Overwrite) {
    for rel in list_files(from) {
        let dest = to.join(&rel);
        if overwrite == Overwrite::Forbidden && dest.exists() {
            panic!(
                "patches/overlay/{} would replace an upstream file: change upstream files with a \
                 patch, keep the overlay for new files",
                rel.display()
            );
        }
        fs::create_dir_all(dest.parent().unwrap()).expect("create a folder in OUT_DIR");
        fs::copy(from.join(&rel), &dest)
            .unwrap_or_else(|e| panic!("copy {} into {}: {e}", rel.display(), to.display()));
    }
}

/// Makes `to` hold exactly the files of `from`, touching only files whose content differs.
fn sync_tree(from: &Path, to: &Path) {
    let wanted: BTreeSet<PathBuf> = list_files(from).into_iter().collect();
    for rel in &wanted {
        let src = from.join(rel);
        let dest = to.join(rel);
        let same = match (fs::read(&src), fs::read(&dest)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            fs::create_dir_all(dest.parent().unwrap()).expect("create a folder in OUT_DIR");
            fs::copy(&src, &dest).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
        }
    }
    if to.is_dir() {
        for rel in list_files(to) {
            if !wanted.contains(&rel) {
                fs::remove_file(to.join(&rel)).expect("remove a stale file from OUT_DIR");
            }
        }
    }
}

/// Every regular file under `root`, as paths relative to it.
fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("read folder {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("readable folder entry");
            let kind = entry.file_type().expect("file type");
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file() {
                files.push(child);
            }
        }
    }
    files
}

fn remove_dir_if_present(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", dir.display()),
    }
}
