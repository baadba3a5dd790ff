//! Rust bindings for the patched llama.cpp, generated the way llama-cpp-2 expects them.

use std::fs;
use std::path::Path;

/// The upstream crate's wrapper headers, copied beside the patched tree so that their relative
/// includes (`llama.cpp/include/llama.h`) resolve to the patched headers.
const WRAPPER_FILES: [&str; 5] = [
    "wrapper.h",
    "wrapper_common.h",
    "wrapper_common.cpp",
    "wrapper_utils.h",
    "wrapper_mtmd.h",
];

/// Our own additions to the C API, declared in headers of the overlay.
const OWN_HEADERS: [&str; 2] = ["ggml/include/ggml-turbo.h", "include/llama-turbo-api.h"];

pub fn generate(pristine: &Path, tree: &Path, out_dir: &Path) {
    for file in WRAPPER_FILES {
        let from = pristine.join(file);
        if from.is_file() {
            fs::copy(&from, out_dir.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    }

    let mut builder = bindgen::Builder::default()
        .header(out_dir.join("wrapper.h").display().to_string())
        .clang_arg(format!("-I{}", tree.join("include").display()))
        .clang_arg(format!("-I{}", tree.join("ggml/include").display()))
        .derive_partialeq(true)
        .allowlist_item("ggml_.*")
        .allowlist_item("gguf_.*")
        .allowlist_item("llama_.*")
        .allowlist_recursively(false)
        // src/lib.rs wraps it, to offer the use_extra_bufts default that llama-cpp-2 cannot set
        .blocklist_function("llama_model_default_params")
        .raw_line("type FILE = ::std::os::raw::c_void;")
        .prepend_enum_name(false);
    for header in OWN_HEADERS {
        let path = tree.join(header);
        if path.is_file() {
            builder = builder.header(path.display().to_string());
        }
    }
    if cfg!(feature = "common") {
        builder = builder
            .clang_arg("-DLLAMA_RS_BUILD_COMMON")
            .allowlist_item("llama_rs_.*");
    }
    if cfg!(feature = "mtmd") {
        builder = builder
            .header(out_dir.join("wrapper_mtmd.h").display().to_string())
            .allowlist_item("mtmd_.*");
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!("bindgen failed on the patched llama.cpp headers (is libclang installed?): {e}")
    });
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs into OUT_DIR");
}
