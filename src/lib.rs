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

/// The patched llama.cpp source tree this crate was built from (pristine upstream + overlay +
/// patches). The GPU workflow builds the CUDA backend from it.
pub const PATCHED_TREE: &str = env!("TURBOQUANT_PATCHED_TREE");

/// With the `dynamic-link` feature: the folders holding the shared libraries linked.
pub const LIB_DIRS: Option<&str> = option_env!("TURBOQUANT_LIB_DIRS");

/// Compile-time path to the built GGML backend modules (kept for API parity with upstream;
/// this crate does not set it).
pub const BACKENDS_DIR: Option<&str> = option_env!("GGML_BACKENDS_DIR");
