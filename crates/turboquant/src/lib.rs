//! TurboQuant (Zandieh et al., "TurboQuant: online vector quantization with near-optimal
//! distortion rate", ICLR 2026) in pure Rust: the algorithm core of TurboQuant KV-cache
//! compression.
//!
//! # Modules
//!
//! * [`codebook`]: Lloyd-Max scalar quantizers computed here: for the exact density of one
//!   coordinate of a uniform point on S^{d-1}, for the Gaussian limit N(0, σ²), and fitted to
//!   (weighted) samples. 1 to 8 bits.
//! * [`rotation`]: random rotations Π: dense Haar-random orthogonal (Householder QR) or
//!   randomized Hadamard (O(d log d), power-of-two d).
//! * [`bitpack`]: packing of b-bit indices into bytes (the layout is documented there).
//! * [`TurboQuantMse`] ([`mse`]): rotate, quantize each coordinate with the codebook, store the
//!   norm. Minimizes E‖x - x̃‖².
//! * [`TurboQuantProd`] ([`prod`]): MSE stage at b-1 bits plus the 1-bit QJL sketch of the
//!   residual; unbiased inner products, computed against prepared queries without
//!   reconstructing vectors.
//! * [`kivi`]: KIVI (Liu et al., ICML 2024), a baseline: asymmetric min/max integers, keys per
//!   channel over groups of tokens, values per token, the most recent tokens in f16.
//! * [`polar`]: PolarQuant (Han et al., 2025), a baseline: rotation, then a recursive polar
//!   transform whose angles are quantized with codebooks for their exact densities.
//! * [`kv_cache`]: one head's KV cache: keys with TurboQuantProd, values with TurboQuantMse,
//!   full-precision queries.
//! * [`block`]: the ggml block formats turbo2/turbo3/turbo4 (64 values, fp16 scale, b-bit
//!   indices): the reference the C and CUDA kernels implement, and their tables.
//! * [`batch`]: (heads, seq, head_dim) tensors, grouped-query attention, threads.
//! * [`metrics`]: attention fidelity: cosine, top-1/top-5 match, KL, heads at risk.
//! * [`validate()`]: the paper's synthetic distortion table, measured.
//!
//! # Exact and approximate
//!
//! * Exact (up to floating point): the codebooks are the Lloyd-Max fixed points for their
//!   densities, solved to ~1e-13 relative precision with Gauss-Legendre quadrature; the sphere
//!   codebook uses the exact finite-d density, not its Gaussian approximation. The dense
//!   rotation is exactly Haar distributed, so for any fixed input the rotated coordinates
//!   follow the sphere density exactly. TurboQuantProd is exactly unbiased in expectation over
//!   its random matrix S.
//! * Approximate: the quantizer treats coordinates as independent (they are only
//!   uncorrelated), as the paper does; the Gaussian codebook approximates the sphere density
//!   (close for d ≳ 64); the randomized Hadamard rotation is not Haar (fine for generic inputs,
//!   not for adversarial sparse ones); the Lloyd-Max fit to samples is a local optimum of the
//!   empirical distortion; all arithmetic on vectors is f32.
//!
//! # Example
//!
//! ```
//! use turboquant::{TurboQuantKvCache, TurboQuantProd};
//!
//! let prod = TurboQuantProd::new(64, 4, 42)?;
//! let x: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
//! let code = prod.quantize(&x)?;
//! let estimate = prod.inner_product(&x, &code)?; // ≈ ‖x‖², unbiased
//! assert!((estimate - x.iter().map(|v| v * v).sum::<f32>()).abs() < 5.0);
//!
//! let mut cache = TurboQuantKvCache::new(64, 4, 4, 7)?;
//! cache.append(&x, &x)?;
//! assert_eq!(cache.attend(&x)?.len(), 64);
//! # Ok::<(), turboquant::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod bitpack;
pub mod block;
pub mod codebook;
mod error;
pub mod kivi;
pub mod kv_cache;
mod linalg;
pub mod metrics;
pub mod mse;
pub mod parallel;
pub mod polar;
pub mod prod;
mod quadrature;
mod rng;
pub mod rotation;
mod store;
mod validate;

pub use batch::{BatchCompressor, BatchConfig, CompressedKeys, CompressedValues, KeyMethod, Shape};
pub use codebook::{Codebook, CodebookSource, FitOptions};
pub use error::{Error, Result};
pub use kivi::{KeyWindow, Kivi, KiviConfig, KiviTensor};
pub use kv_cache::{KvCacheConfig, TurboQuantKvCache};
pub use metrics::{FidelityAggregator, FidelitySummary, HeadFidelity};
pub use mse::{CodebookKind, MseCode, MseQuery, QuantizerOptions, TurboQuantMse};
pub use polar::{PolarCode, PolarConfig, PolarQuant, PolarTensor};
pub use prod::{ProdCode, ProdQuery, TurboQuantProd};
pub use rng::{random_normal, random_unit_vectors};
pub use rotation::{Rotation, RotationKind};
pub use validate::{
    needle_retrieval, validate, NeedleRow, ValidationConfig, ValidationRow, PAPER_IP, PAPER_MSE,
};
