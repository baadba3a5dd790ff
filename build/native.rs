//! Compiling the patched llama.cpp tree with its own CMake, and linking it into Rust.

use std::collections::BTreeSet;
use std::env;
use std::path::{Path, PathBuf};

/// What the CMake build produced.
pub struct NativeBuild {
    /// Folders that hold the libraries we link.
    lib_dirs: BTreeSet<PathBuf>,
    shared: bool,
}

fn on_off(flag: bool) -> &'static str {
    if flag {
        "ON"
    } else {
        "OFF"
    }
}

/// Configures and builds llama.cpp (libraries only, always optimised: a debug build of the
/// kernels would make every test that runs a model needlessly slow).
pub fn build(tree: &Path, out_dir: &Path) -> NativeBuild {
    let shared = cfg!(feature = "dynamic-link");
    let mut config = cmake::Config::new(tree);
    config
        .profile("Release")
        .define("BUILD_SHARED_LIBS", on_off(shared))
        .define("CMAKE_POSITION_INDEPENDENT_CODE", "ON")
        // tests/amx.rs recompiles one file exactly as the build did
        .define("CMAKE_EXPORT_COMPILE_COMMANDS", "ON")
        .define("LLAMA_BUILD_TESTS", "OFF")
        .define("LLAMA_BUILD_EXAMPLES", "OFF")
        .define("LLAMA_BUILD_TOOLS", "OFF")
        .define("LLAMA_BUILD_SERVER", "OFF")
        .define("LLAMA_BUILD_APP", "OFF")
        .define("LLAMA_BUILD_COMMON", on_off(cfg!(feature = "common")))
        .define("LLAMA_BUILD_MTMD", on_off(cfg!(feature = "mtmd")))
        .define("LLAMA_CURL", "OFF")
        .define("LLAMA_OPENSSL", "OFF")
        .define("GGML_OPENMP", on_off(cfg!(feature = "openmp")))
        .define("GGML_CUDA", on_off(cfg!(feature = "cuda")))
        .define("GGML_CUDA_NO_VMM", on_off(cfg!(feature = "cuda-no-vmm")))
        .define("GGML_VULKAN", on_off(cfg!(feature = "vulkan")))
        .define("GGML_METAL", on_off(cfg!(feature = "metal")))
        .define("GGML_HIP", on_off(cfg!(feature = "rocm")))
        .define("GGML_OPENCL", on_off(cfg!(feature = "opencl")))
        .define("GGML_WEBGPU", on_off(cfg!(feature = "webgpu")))
        .define(
            "LLAMA_USE_SYSTEM_GGML",
            on_off(cfg!(feature = "system-ggml")),
        );
    if cfg!(feature = "dynamic-backends") {
        config
            .define("GGML_BACKEND_DL", "ON")
            .define("GGML_CPU_ALL_VARIANTS", "ON");
    }
    if cfg!(feature = "mkl") {
        config
            .define("GGML_BLAS", "ON")
            .define("GGML_BLAS_VENDOR", "Intel10_64lp");
    }
    if cfg!(feature = "cuda") {
        // Without a stated architecture CMake asks nvcc for "native", which fails on a machine
        // with the toolkit but no GPU; CMAKE_CUDA_ARCHITECTURES in the environment wins.
        println!("cargo:rerun-if-env-changed=CMAKE_CUDA_ARCHITECTURES");
        if let Ok(archs) = env::var("CMAKE_CUDA_ARCHITECTURES") {
            config.define("CMAKE_CUDA_ARCHITECTURES", archs);
        }
    }
    // GGML_NATIVE=OFF builds for a generic CPU of the target (for binaries carried elsewhere).
    println!("cargo:rerun-if-env-changed=GGML_NATIVE");
    if let Ok(native) = env::var("GGML_NATIVE") {
        config.define("GGML_NATIVE", native);
    }
    let install = config.build();
    println!(
        "cargo:rustc-env=TURBOQUANT_COMPILE_COMMANDS={}",
        out_dir.join("build/compile_commands.json").display()
    );

    let wanted = libraries(shared);
    let mut lib_dirs = BTreeSet::new();
    for root in [
        install.join("lib"),
        install.join("lib64"),
        out_dir.join("build"),
    ] {
        collect_lib_dirs(&root, &wanted, shared, &mut lib_dirs);
    }
    NativeBuild { lib_dirs, shared }
}

/// The llama.cpp libraries we link, dependents before their dependencies.
fn libraries(shared: bool) -> Vec<&'static str> {
    let mut libs = vec!["llama"];
    if cfg!(feature = "common") {
        libs.extend(["llama-common", "llama-common-base"]);
    }
    libs.push("ggml");
    if !cfg!(feature = "dynamic-backends") {
        if cfg!(feature = "cuda") && !shared {
            libs.push("ggml-cuda");
        }
        libs.push("ggml-cpu");
    }
    libs.push("ggml-base");
    libs
}

fn collect_lib_dirs(dir: &Path, wanted: &[&str], shared: bool, found: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_lib_dirs(&path, wanted, shared, found);
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let matches = wanted.iter().any(|lib| {
            if shared {
                name == format!("lib{lib}.so") || name == format!("lib{lib}.dylib")
            } else {
                name == format!("lib{lib}.a")
            }
        });
        if matches {
            found.insert(dir.to_path_buf());
        }
    }
}

/// Compiles the upstream crate's `wrapper_common.cpp` (the `llama_rs_*` helpers that
/// llama-cpp-2's `common` feature calls) against the patched tree.
pub fn build_common_wrapper(pristine: &Path, tree: &Path, out_dir: &Path) {
    // The wrapper includes "llama.cpp/common/common.h" relative to itself; compiled from its copy
    // beside the patched tree (made by bindings::generate) it sees the patched headers.
    let _ = pristine;
    cc::Build::new()
        .cpp(true)
        .file(out_dir.join("wrapper_common.cpp"))
        .include(out_dir)
        .include(tree.join("common"))
        .include(tree.join("include"))
        .include(tree.join("ggml/include"))
        .include(tree.join("vendor"))
        .flag_if_supported("-std=c++17")
        .pic(true)
        .compile("llama_cpp_sys_2_common_wrapper");
}

/// Tells rustc what to link.
pub fn link(build: &NativeBuild) {
    assert!(
        !build.lib_dirs.is_empty(),
        "the CMake build of llama.cpp produced none of the expected libraries"
    );
    for dir in &build.lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    let kind = if build.shared { "dylib" } else { "static" };
    for lib in libraries(build.shared) {
        println!("cargo:rustc-link-lib={kind}={lib}");
    }
    if build.shared {
        // Exported for the GPU workflow, which carries these libraries (or rebuilds them).
        let dirs: Vec<String> = build
            .lib_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        println!("cargo:rustc-env=TURBOQUANT_LIB_DIRS={}", dirs.join(":"));
        return;
    }
    if cfg!(feature = "cuda") {
        println!("cargo:rerun-if-env-changed=CUDA_PATH");
        let cuda = env::var("CUDA_PATH").unwrap_or_else(|_| "/usr/local/cuda".into());
        for sub in ["lib64", "lib", "lib64/stubs"] {
            println!("cargo:rustc-link-search=native={cuda}/{sub}");
        }
        for lib in ["cudart", "cublas", "cublasLt", "cuda"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if cfg!(feature = "openmp") && target_os != "macos" {
        println!("cargo:rustc-link-lib=gomp");
    }
    match target_os.as_str() {
        "macos" => {
            println!("cargo:rustc-link-lib=c++");
            println!("cargo:rustc-link-lib=framework=Foundation");
            println!("cargo:rustc-link-lib=framework=Accelerate");
            if cfg!(feature = "metal") {
                println!("cargo:rustc-link-lib=framework=Metal");
                println!("cargo:rustc-link-lib=framework=MetalKit");
            }
        }
        _ => {
            println!("cargo:rustc-link-lib=stdc++");
            println!("cargo:rustc-link-lib=m");
        }
    }
}
