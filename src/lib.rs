//! llama.cpp with the TurboQuant KV-cache types, as raw bindings.
//!
//! This crate stands in for the crates.io `llama-cpp-sys-2` of the same version (the workspace's
//! `[patch.crates-io]` points there), so the safe API of `llama-cpp-2` builds on it unchanged.
//! It exposes the same bindings (bindgen over upstream's `wrapper.h`, same allow-lists) plus the
//! declarations of our own headers, and the paths of what the build script made.

#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(unpredictable_function_pointer_comparisons)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

use std::sync::atomic::{AtomicBool, Ordering};

static USE_EXTRA_BUFTS: AtomicBool = AtomicBool::new(true);

mod upstream {
    unsafe extern "C" {
        #[link_name = "llama_model_default_params"]
        pub fn llama_model_default_params() -> super::llama_model_params;
    }
}

/// llama.cpp's `llama_model_default_params()`, with `use_extra_bufts` as
/// [`set_default_use_extra_bufts`] last set it (llama.cpp's default: true).
///
/// `llama-cpp-2` starts its `LlamaModelParams` from this function and has no setter for that
/// field, which decides whether the CPU may keep weights in its repacked buffer types (AMX
/// tiles, AVX2/AVX-512 interleaved blocks) or only in plain buffers (llama.cpp's `--no-repack`).
pub unsafe fn llama_model_default_params() -> llama_model_params {
    // SAFETY: a plain C function returning a struct by value.
    let mut params = unsafe { upstream::llama_model_default_params() };
    params.use_extra_bufts = USE_EXTRA_BUFTS.load(Ordering::Relaxed);
    params
}

/// Sets the `use_extra_bufts` that [`llama_model_default_params`] returns from now on, for the
/// whole process; callers that load models with different settings serialise the loads.
pub fn set_default_use_extra_bufts(on: bool) {
    USE_EXTRA_BUFTS.store(on, Ordering::Relaxed);
}

/// The patched llama.cpp source tree this crate was built from (pristine upstream + overlay +
/// patches). The GPU workflow builds the CUDA backend from it.
pub const PATCHED_TREE: &str = env!("TURBOQUANT_PATCHED_TREE");

/// With the `dynamic-link` feature: the folders holding the shared libraries linked.
pub const LIB_DIRS: Option<&str> = option_env!("TURBOQUANT_LIB_DIRS");

/// Compile-time path to the built GGML backend modules (kept for API parity with upstream;
/// this crate does not set it).
pub const BACKENDS_DIR: Option<&str> = option_env!("GGML_BACKENDS_DIR");
