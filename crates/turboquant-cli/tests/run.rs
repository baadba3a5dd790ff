//! `turboquant run`: generation on SmolLM2 through the patched binding.

mod common;

use common::{smollm2, succeed, turboquant};

fn generate(kv: &str) -> (String, String) {
    succeed(turboquant().args(["run", "-m"]).arg(smollm2()).args([
        "-p",
        "The capital of France is",
        "-n",
        "16",
        "--temp",
        "0",
        "--kv-quant",
        kv,
    ]))
}

#[test]
fn greedy_generation_is_deterministic_and_reports_the_cache() {
    let (first, stats) = generate("f16");
    let (second, _) = generate("f16");
    assert_eq!(first, second, "temperature 0 must give the same text twice");
    assert!(first.trim().len() > 10, "generated text: {first:?}");
    assert!(
        first.contains("Paris"),
        "SmolLM2 knows the capital of France: {first:?}"
    );
    assert!(stats.contains("16.00 bits per value"), "{stats}");
    assert!(stats.contains("tok/s"), "{stats}");
}

#[test]
fn a_quantized_cache_reports_its_compression() {
    let (text, stats) = generate("q8_0:q4_0");
    assert!(!text.trim().is_empty());
    assert!(stats.contains("KV cache q8_0:q4_0"), "{stats}");
    assert!(stats.contains("6.50 bits per value"), "{stats}");
    assert!(stats.contains("2.46x smaller than f16"), "{stats}");
}

#[test]
fn llama_cpp_spellings_of_the_cache_options_work() {
    let (_, stderr) = succeed(turboquant().args(["run", "-m"]).arg(smollm2()).args([
        "-p", "Hello", "-n", "4", "--temp", "0", "-ctk", "q8_0", "-ctv", "q8_0", "-ngl", "0",
    ]));
    assert!(stderr.contains("KV cache q8_0 "), "{stderr}");
}
