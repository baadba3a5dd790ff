//! KV-cache types: names as llama.cpp spells them, their ggml ids and their storage cost.

use std::ffi::CStr;
use std::fmt;

use anyhow::{bail, Result};
use llama_cpp_2::context::params::KvCacheType;
use llama_cpp_sys_2 as sys;

/// The cache types llama.cpp's own tools accept (`common/arg.cpp`), then ours.
const ACCEPTED: [&str; 12] = [
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "turbo4", "turbo3",
    "turbo2",
];

/// One ggml type usable for the K or the V cache.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheType {
    ggml: sys::ggml_type,
}

impl CacheType {
    pub const F16: CacheType = CacheType {
        ggml: sys::GGML_TYPE_F16,
    };

    /// Every accepted type this build of llama.cpp knows, in the order of [`ACCEPTED`].
    pub fn all() -> Vec<CacheType> {
        ACCEPTED
            .iter()
            .filter_map(|name| Self::lookup(name))
            .collect()
    }

    fn lookup(name: &str) -> Option<CacheType> {
        (0..sys::GGML_TYPE_COUNT)
            .map(|ggml| CacheType { ggml })
            .find(|t| t.type_size() > 0 && t.name() == name)
    }

    /// Parses a type name (case-insensitive).
    pub fn parse(name: &str) -> Result<CacheType> {
        let lower = name.trim().to_ascii_lowercase();
        if ACCEPTED.contains(&lower.as_str()) {
            if let Some(t) = Self::lookup(&lower) {
                return Ok(t);
            }
        }
        let known: Vec<String> = Self::all().iter().map(|t| t.name().to_string()).collect();
        bail!(
            "unknown KV-cache type `{name}`; known types: {}",
            known.join(", ")
        )
    }

    pub fn name(self) -> &'static str {
        // SAFETY: ggml returns a pointer to a static string for every type id below the count.
        let ptr = unsafe { sys::ggml_type_name(self.ggml) };
        if ptr.is_null() {
            return "?";
        }
        unsafe { CStr::from_ptr(ptr) }.to_str().unwrap_or("?")
    }

    /// turbo2, turbo3 or turbo4.
    pub fn turbo(bits: u8) -> CacheType {
        Self::lookup(&format!("turbo{bits}")).expect("this build has the turbo types")
    }

    /// turbo2, turbo3 or turbo4: the types whose K cache has the calibrated transform.
    pub fn is_turbo(self) -> bool {
        self.name().starts_with("turbo")
    }

    pub fn ggml(self) -> sys::ggml_type {
        self.ggml
    }

    pub fn is_quantized(self) -> bool {
        unsafe { sys::ggml_is_quantized(self.ggml) }
    }

    /// Storage bits per value, scales included.
    pub fn bits_per_value(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        unsafe { sys::ggml_blck_size(self.ggml) as u64 }
    }

    /// Bytes per block.
    fn type_size(self) -> u64 {
        unsafe { sys::ggml_type_size(self.ggml) as u64 }
    }

    /// Bytes of one row of `n` values (`n` a multiple of the block size).
    pub fn row_bytes(self, n: u64) -> u64 {
        n / self.block_size() * self.type_size()
    }

    pub fn to_llama(self) -> KvCacheType {
        KvCacheType::from(self.ggml)
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The types of the K cache and the V cache.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KvTypes {
    pub k: CacheType,
    pub v: CacheType,
}

impl KvTypes {
    pub const F16: KvTypes = KvTypes {
        k: CacheType::F16,
        v: CacheType::F16,
    };

    /// `turbo3` (both caches) or `q8_0:turbo3` (K then V).
    pub fn parse(spec: &str) -> Result<KvTypes> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("empty KV-cache type");
        }
        match spec.split_once(':') {
            Some((k, v)) => Ok(KvTypes {
                k: CacheType::parse(k)?,
                v: CacheType::parse(v)?,
            }),
            None => {
                let t = CacheType::parse(spec)?;
                Ok(KvTypes { k: t, v: t })
            }
        }
    }

    /// A comma-separated list of specs: `f16,q8_0,turbo4:turbo2`.
    pub fn parse_list(list: &str) -> Result<Vec<KvTypes>> {
        let mut out = Vec::new();
        for spec in list.split(',').filter(|s| !s.trim().is_empty()) {
            let t = KvTypes::parse(spec)?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            bail!("no KV-cache type given");
        }
        Ok(out)
    }

    /// Storage bits per value over both caches, for K and V rows of the given widths.
    pub fn bits_per_value(self, k_width: u64, v_width: u64) -> f64 {
        let bits = (self.k.row_bytes(k_width) + self.v.row_bytes(v_width)) as f64 * 8.0;
        bits / (k_width + v_width) as f64
    }
}

impl fmt::Display for KvTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "{}:{}", self.k, self.v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_mixed_and_lists() {
        let t = KvTypes::parse("q8_0").unwrap();
        assert_eq!(t.k, t.v);
        assert_eq!(t.to_string(), "q8_0");
        let m = KvTypes::parse("Q8_0:q4_0").unwrap();
        assert_eq!(m.to_string(), "q8_0:q4_0");
        let list = KvTypes::parse_list("f16, q8_0,,q8_0,q4_0").unwrap();
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn rejects_unknown_and_non_cache_types() {
        let err = KvTypes::parse("q3_k").unwrap_err().to_string();
        assert!(err.contains("unknown KV-cache type `q3_k`"), "{err}");
        assert!(
            err.contains("q4_0"),
            "the message lists the known types: {err}"
        );
        assert!(KvTypes::parse("").is_err());
        assert!(KvTypes::parse_list(" , ").is_err());
    }

    #[test]
    fn bits_per_value_of_upstream_types() {
        let bpv = |t: &str| KvTypes::parse(t).unwrap().bits_per_value(64, 64);
        assert_eq!(bpv("f16"), 16.0);
        assert_eq!(bpv("q8_0"), 8.5);
        assert_eq!(bpv("q4_0"), 4.5);
        assert_eq!(bpv("turbo3"), 3.25);
        let mixed = KvTypes::parse("q8_0:q4_0").unwrap();
        assert_eq!(mixed.bits_per_value(64, 64), 6.5);
    }
}
