//! The CUDA backend's switches for the turbo kernels, which pick one path or another for A/B runs
//! in one build. ggml reads them when it first needs them and stops the process with an abort on a
//! value it does not know; checked here first, a typo is a clear error before any work starts.

use std::ffi::OsStr;

use anyhow::{bail, Result};

/// Forces the turbo decode kernel: `simt`, `rows16` or `rows32` (unset: chosen by cache length).
pub const DECODE: &str = "GGML_CUDA_TURBO_DECODE";
/// Which turbo chains run fused, as bits: 1 K, 2 V, 4 Q, 8 one launch per layer, 16 their RoPE.
pub const FUSION: &str = "GGML_CUDA_TURBO_FUSION";

const DECODE_CHOICES: [&str; 3] = ["simt", "rows16", "rows32"];

/// Checks both switches in the environment, when set.
pub fn check_env() -> Result<()> {
    check(
        std::env::var_os(DECODE).as_deref(),
        std::env::var_os(FUSION).as_deref(),
    )
}

fn check(decode: Option<&OsStr>, fusion: Option<&OsStr>) -> Result<()> {
    if let Some(value) = decode {
        if !DECODE_CHOICES.iter().any(|choice| value == *choice) {
            bail!(
                "{DECODE}={}: expected simt, rows16 or rows32 (unset, the kernel is chosen by cache length)",
                value.to_string_lossy()
            );
        }
    }
    if let Some(value) = fusion {
        let bits = value.to_str().and_then(|s| s.parse::<u8>().ok());
        if !matches!(bits, Some(0..=31)) {
            bail!(
                "{FUSION}={}: expected a number from 0 to 31, the sum of 1 (K), 2 (V), 4 (Q), \
                 8 (one launch per layer) and 16 (their RoPE); unset, all of them",
                value.to_string_lossy()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn unset_and_known_values_pass() {
        check(None, None).unwrap();
        for choice in DECODE_CHOICES {
            check(os(choice), None).unwrap();
        }
        for bits in ["0", "7", "15", "31"] {
            check(None, os(bits)).unwrap();
        }
    }

    #[test]
    fn unknown_values_are_named_in_the_error() {
        let err = check(os("rows64"), None).unwrap_err().to_string();
        assert!(err.contains("GGML_CUDA_TURBO_DECODE=rows64"), "{err}");
        for bad in ["32", "-1", "all", "", "1.5"] {
            let err = check(None, os(bad)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("GGML_CUDA_TURBO_FUSION={bad}:")),
                "{err}"
            );
        }
    }
}
