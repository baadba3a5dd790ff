//! `turboquant backend-check`: the comparison machinery runs (CPU against itself, where every
//! check must hold exactly), its JSON has every operation, and a build without a GPU says so.

mod common;

use common::{succeed, turboquant};

#[test]
fn dry_run_on_the_cpu_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("check.json");
    let (stdout, _) = succeed(
        turboquant()
            .args([
                "backend-check",
                "--device",
                "cpu",
                "--head-sizes",
                "64,256",
                "--json",
            ])
            .arg(&json),
    );
    assert!(
        stdout.contains("every check within its tolerance"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    // per head size: 3 types x (3 set-rows + 1 get-rows + 3 for each fused cache write (K and V,
    // then K after a RoPE) + 1 rotated query, twice) + 11 pairs x 7 attention shapes (decoding
    // with 5 groupings of query heads over KV heads, 2 queries, a prompt); the checks that chains
    // ran fused are the GPU's alone
    assert_eq!(checks.len(), 2 * (3 * 15 + 11 * 7));
    for heads in ["8/2", "9/3", "16/2", "4/2", "2/2"] {
        assert!(
            checks
                .iter()
                .any(|c| c["op"] == "attention decode" && c["heads"] == heads),
            "decoding with {heads} query/KV heads missing"
        );
    }
    for op in [
        "set-rows",
        "get-rows",
        "K: transform, rotate, set-rows (fused)",
        "V: rotate, set-rows (fused)",
        "Q: transform, rotate (fused)",
        "K: RoPE, transform, rotate, set-rows (fused)",
        "Q: RoPE, transform, rotate (fused)",
        "attention decode",
        "attention prefill",
    ] {
        assert!(checks.iter().any(|c| c["op"] == op), "{op} missing");
    }
    // the same backend twice gives the same numbers
    for c in checks {
        if c["op"].as_str().unwrap().starts_with("attention")
            || c["op"].as_str().unwrap().starts_with("Q:")
        {
            assert_eq!(c["value"].as_f64().unwrap(), 0.0, "{c}");
        }
        let metric = c["metric"].as_str().unwrap();
        if metric == "blocks bit-identical" || metric.starts_with("squared error, device / ") {
            assert_eq!(c["value"].as_f64().unwrap(), 1.0, "{c}");
        }
    }
}

#[test]
fn no_gpu_is_a_clear_error() {
    let out = turboquant().arg("backend-check").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return; // this machine has a GPU build: nothing to check here
    }
    assert!(stderr.contains("no GPU backend"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn head_size_the_kernels_do_not_serve_is_refused() {
    let out = turboquant()
        .args(["backend-check", "--device", "cpu", "--head-sizes", "96"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("head size 96"));
}
