//! Builds llama.cpp with the TurboQuant KV-cache types and generates its Rust bindings.
//!
//! 1. `build/source.rs`: find the pristine llama.cpp source that the pinned crate in `vendor/`
//!    carries in cargo's registry, copy it into `OUT_DIR/llama.cpp`, add `patches/overlay/`,
//!    apply `patches/*.patch` in order, and write the codebook tables from `crates/turboquant`.
//! 2. `build/native.rs`: configure and build that tree with llama.cpp's own CMake and tell
//!    rustc what to link.
//! 3. `build/bindings.rs`: bindgen over the upstream crate's `wrapper.h`, with the same
//!    allow-lists, so `llama-cpp-2` finds the API it expects (plus our additions).
//!
//! The patched tree stays in `OUT_DIR/llama.cpp`; its path is exported to Rust as
//! `llama_cpp_sys_2::PATCHED_TREE` and to dependent build scripts as `DEP_LLAMA_TREE`, so the
//! GPU workflow and the drop-in patch script can use exactly what was built here.

#[path = "build/bindings.rs"]
mod bindings;
#[path = "build/native.rs"]
mod native;
#[path = "build/source.rs"]
mod source;

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    let pristine = source::locate_pristine(&manifest_dir);
    // for the drop-in test, which applies the patches to a fresh copy of this source
    println!(
        "cargo:rustc-env=TURBOQUANT_PRISTINE_SOURCE={}",
        pristine.join("llama.cpp").display()
    );
    let tree = source::stage_patched_tree(&manifest_dir, &pristine, &out_dir);
    println!("cargo:rustc-env=TURBOQUANT_PATCHED_TREE={}", tree.display());
    println!("cargo:tree={}", tree.display());

    let build = native::build(&tree, &out_dir);
    bindings::generate(&pristine, &tree, &out_dir);
    if cfg!(feature = "common") {
        native::build_common_wrapper(&pristine, &tree, &out_dir);
    }
    native::link(&build);
}
