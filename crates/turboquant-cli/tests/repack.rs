//! The CPU's repacked weight layouts against plain weights, on the host's own CPU features.
//!
//! llama.cpp moves weights into buffer types of its own where the CPU has kernels for them: `AMX`
//! tiles on Intel Xeons with AMX, `CPU_REPACK` interleaved blocks on AVX2/AVX-512 (and NEON)
//! hosts. Each reference model (and the Q4_0 weights of the `synth` shapes) runs 512-token prompt
//! batches through those layouts and through plain weights (`perplexity --check-repack`); the two
//! must agree to the rounding noise of re-quantizing activations. Where this host repacks none of a model's weights, the test says
//! so and checks only that the two runs are identical. On a CPU with AMX, the AMX buffer must be
//! the one used (tests/amx.rs checks its compiled code on every host).

mod common;

use std::path::Path;

use common::{gemma3, note, perplexity_report, smollm2, succeed, turboquant};

/// KL divergence of the repacked run against the plain one: what re-rounding the plain path's
/// matrix products by one part in 10^7 already moves SmolLM2 by.
const MAX_KLD: f64 = 0.01;
/// Perplexity of the repacked run against the plain one.
const MAX_PPL_CHANGE: f64 = 0.005;
const CHUNKS: &str = "10";

fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|flags| {
                    let flags: Vec<&str> = flags.split_whitespace().collect();
                    flags.contains(&"amx_int8") && flags.contains(&"amx_tile")
                })
        })
        .unwrap_or(false)
}

fn check(alias: &str, model: &Path) {
    let (_, report) = perplexity_report(
        model,
        &[
            "-c",
            "512",
            "--chunks",
            CHUNKS,
            "--kv-quant",
            "f16",
            "--check-repack",
        ],
    );
    let names = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    let offered: Vec<String> = report["cpu_repack_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let used: Vec<String> = names("weight_buffers")
        .into_iter()
        .filter(|b| offered.contains(b))
        .collect();
    let reference = names("reference_weight_buffers");
    assert!(
        reference.iter().all(|b| !offered.contains(b)),
        "the reference's weights must stay in plain buffers: {reference:?}"
    );

    if cpu_has_amx() && std::env::var("GGML_NATIVE").as_deref() != Ok("OFF") {
        assert!(
            offered.iter().any(|t| t == "AMX"),
            "this CPU has AMX but the build offers no AMX buffer (offered: {offered:?}); a \
             build with GGML_NATIVE=OFF has no AMX code, set it for the tests too to skip this"
        );
        assert!(
            used.iter().any(|t| t == "AMX"),
            "{alias}: this CPU has AMX but no weights went to the AMX buffer: {:?}",
            report["weight_buffers"]
        );
    }

    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows[0]["cache"], "f16, plain weights");
    assert_eq!(rows[1]["cache"], "f16");
    let kld = rows[1]["kld"]["mean"].as_f64().unwrap();
    let ratio = rows[1]["ppl_ratio"]["mean"].as_f64().unwrap();
    if used.is_empty() {
        assert_eq!(
            kld, 0.0,
            "{alias}: both runs use the same plain weights and must agree exactly"
        );
        note(
            "repack",
            &format!(
                "skipped {alias}: this host repacks none of its weights (repacked layouts \
                 offered: {offered:?}); its two plain runs agree exactly"
            ),
        );
        return;
    }
    assert!(
        kld < MAX_KLD && (ratio - 1.0).abs() < MAX_PPL_CHANGE,
        "{alias} through {used:?} against plain weights: KLD {kld} (at most {MAX_KLD}), PPL ratio \
         {ratio} (within {MAX_PPL_CHANGE})"
    );
    // the AMX buffer logs no layouts
    let layouts = report["repacked_layouts"].as_object().unwrap();
    let layouts = if layouts.is_empty() {
        String::new()
    } else {
        format!(" (layouts {})", report["repacked_layouts"])
    };
    note(
        "repack",
        &format!(
            "{alias}: 512-token batches through {used:?}{layouts} against plain weights: KLD \
             {kld:.2e}, PPL ratio {ratio:.4}"
        ),
    );
}

#[test]
fn smollm2_repacked_weights_match_plain_ones() {
    check("smollm2-135m", &smollm2());
}

#[test]
fn gemma3_repacked_weights_match_plain_ones() {
    check("gemma3-270m", &gemma3());
}

/// The Q4_0 weights of the shapes `bench` times (random values; `synth --shape tiny`).
#[test]
fn synth_q4_0_repacked_weights_match_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    succeed(
        turboquant()
            .args(["synth", "--shape", "tiny", "--tokenizer-from"])
            .arg(smollm2())
            .arg("-o")
            .arg(&path),
    );
    check("synth tiny (Q4_0)", &path);
}
