//! The C tables in the overlay are exactly what the Rust reference generates (one source of truth).

#[test]
fn overlay_tables_are_generated_from_the_rust_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/patches/overlay/ggml/src/ggml-turbo-tables.h"
    );
    let committed = std::fs::read_to_string(path).expect("the tables header is in the overlay");
    assert_eq!(
        committed,
        turboquant::block::c_header(),
        "regenerate: cargo run -p turboquant --example ggml_tables > patches/overlay/ggml/src/ggml-turbo-tables.h"
    );
}

#[test]
fn the_built_tree_carries_the_patches() {
    let tree = std::path::Path::new(llama_cpp_sys_2::PATCHED_TREE);
    let kv = std::fs::read_to_string(tree.join("src/llama-kv-cache.cpp")).unwrap();
    assert!(
        kv.contains("bytes: K (%s) = %zu"),
        "patch 0001 is in the built tree"
    );
    assert!(
        kv.contains("turbo_init();"),
        "patch 0004 is in the built tree"
    );
    assert!(
        tree.join("src/llama-turbo.cpp").is_file(),
        "the overlay is in the built tree"
    );
}
