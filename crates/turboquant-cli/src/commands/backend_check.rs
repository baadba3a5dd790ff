//! `turboquant backend-check`: the turbo operations of a GPU backend against the CPU backend.
//!
//! Each check builds the same small ggml graph twice, once on the CPU backend (whose turbo code is
//! tested against the Rust reference by the kernel tests) and once on the GPU, with the same input
//! bytes, and compares the results:
//!
//! - set-rows (the cache write: quantize on the device): share of 64-value blocks whose bytes are
//!   identical, and the reconstruction error of both against the input. ggml-cuda builds with
//!   fast math, so a value on a level boundary, or two scale candidates of equal gain, may go the
//!   other way: a few blocks may differ, the error may not grow.
//! - a layer's cache writes and query rotation as llama.cpp builds them for turbo caches (the
//!   calibrated transform, upstream's Hadamard rotation, set-rows), which the CUDA backend runs as
//!   one kernel launch for the three chains (turbo-fuse.cu): the cache bytes as for set-rows, the
//!   rotated query to rounding, and on a GPU the log must say the three chains were fused into
//!   one launch. Then again with K and Q coming out of a RoPE, which the CUDA chains take up,
//!   against the device's own results with the RoPE run apart; the log must say that the K and
//!   Q chains started with it.
//! - get-rows (dequantize): the same floats, to rounding.
//! - flash attention, decode (1 or 2 queries) and prefill (64 queries), for every K/V pair the
//!   CUDA backend reads directly and every head size, and for decoding with every grouping of
//!   query heads over KV heads the turbo decode kernel treats apart (1 to 8 query heads per KV
//!   head): the outputs agree to the precision of the GPU kernels (f16 levels and products in
//!   llama.cpp's vector and tensor-core kernels and in the turbo decode kernel on tensor cores,
//!   f32 in its SIMT version; with K in q8_0 the CPU also rounds the query to 8 bits), and
//!   decoding must not fall back to converting the cache to f16 (llama.cpp logs that when it
//!   happens).

use std::ffi::CStr;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use llama_cpp_sys_2 as sys;
use serde::Serialize;

use crate::llama::{self, cache_type::CacheType, logs};
use crate::rng::SplitMix64;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example (on a machine with a CUDA build):\n  \
    turboquant backend-check --json results/gpu/backend-check.json")]
pub struct Args {
    /// Head sizes to check
    #[arg(long, default_value = "64,128,256", value_delimiter = ',')]
    pub head_sizes: Vec<i64>,
    /// Cached tokens in the attention checks (a multiple of 256, as llama.cpp pads the cache)
    #[arg(long, default_value_t = 512)]
    pub n_kv: i64,
    /// Seed of the random inputs
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Device to check: the first GPU by default; `cpu` compares the CPU with itself (a dry run
    /// of the checks on a machine without a GPU)
    #[arg(long)]
    pub device: Option<String>,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// K/V pairs the CUDA flash-attention decode kernels read without converting (patch 0007).
const ATTENTION_PAIRS: [(&str, &str); 11] = [
    ("turbo4", "turbo4"),
    ("turbo3", "turbo3"),
    ("turbo2", "turbo2"),
    ("f16", "turbo4"),
    ("f16", "turbo3"),
    ("f16", "turbo2"),
    ("q8_0", "turbo4"),
    ("q8_0", "turbo3"),
    ("q8_0", "turbo2"),
    ("turbo4", "turbo3"),
    ("turbo4", "turbo2"),
];

/// Attention shapes: (queries, query heads, KV heads). Decoding with 4 query heads per KV head
/// (Llama-3), 3 (SmolLM2), 8 (two blocks of heads per KV head), 2 and 1; two queries; a prompt.
const ATTENTION_SHAPES: [(i64, i64, i64); 7] = [
    (1, 8, 2),
    (1, 9, 3),
    (1, 16, 2),
    (1, 4, 2),
    (1, 2, 2),
    (2, 8, 2),
    (64, 8, 2),
];

/// Tolerances, stated once (see the module comment for why each is what it is).
const SET_ROWS_MIN_IDENTICAL_BLOCKS: f64 = 0.99;
const SET_ROWS_MAX_ERROR_GROWTH: f64 = 1.001;
const GET_ROWS_MAX_REL_DIFF: f64 = 1e-6;
/// The CPU's own cache against what it should hold: turbo2's error on Gaussian values is about
/// 0.12 of the signal (turbo3 0.03, turbo4 0.01); a wrong reference would be near 2.
const CACHE_MAX_RELATIVE_ERROR: f64 = 0.2;
/// The rotated query: the same transform in f32, its butterflies summed in another order.
const ROTATED_QUERY_MAX_REL_DIFF: f64 = 1e-5;
const ATTENTION_MAX_REL_RMS: f64 = 5e-3;
/// With K in q8_0 the CPU rounds the query to 8 bits too (q8_0's dot product is q8_0 by q8_0),
/// and the GPU's prefill kernel does not: their difference is that rounding, about 5e-3.
const ATTENTION_MAX_REL_RMS_Q8_K: f64 = 1e-2;

#[derive(Serialize, Debug)]
pub struct Check {
    pub op: String,
    pub types: String,
    pub head_size: i64,
    pub queries: i64,
    /// query heads / KV heads, for attention
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<String>,
    /// what was measured, in words
    pub metric: String,
    pub value: f64,
    pub limit: String,
    pub pass: bool,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub device: String,
    pub n_kv: i64,
    pub seed: u64,
    pub checks: Vec<Check>,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.n_kv > 0 && args.n_kv % 256 == 0,
        "--n-kv must be a positive multiple of 256, got {}",
        args.n_kv
    );
    for &d in &args.head_sizes {
        ensure!(
            [64, 128, 256].contains(&d),
            "head size {d} is not one the turbo kernels serve (64, 128 or 256)"
        );
    }
    llama::backend();
    let cpu = Backend::cpu()?;
    let device = match args.device.as_deref() {
        None | Some("gpu") => Backend::gpu()?,
        Some("cpu") => Backend::cpu()?,
        Some(other) => bail!("unknown --device `{other}`: use gpu or cpu"),
    };
    eprintln!("checking {} against the CPU", device.name);

    let mut rng = SplitMix64(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut checks = Vec::new();
    for &d in &args.head_sizes {
        for bits in [4u8, 3, 2] {
            let ty = CacheType::turbo(bits);
            checks.extend(check_set_rows(&cpu, &device, ty, d, &mut rng)?);
            checks.push(check_get_rows(&cpu, &device, ty, d, &mut rng)?);
            checks.extend(check_fused_chains(&cpu, &device, ty, d, &mut rng)?);
        }
        for (k, v) in ATTENTION_PAIRS {
            let (k, v) = (CacheType::parse(k)?, CacheType::parse(v)?);
            for shape in ATTENTION_SHAPES {
                checks.push(check_attention(
                    &cpu, &device, k, v, d, shape, args.n_kv, &mut rng,
                )?);
            }
        }
    }

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "op", "K/V", "head", "queries", "heads", "measured", "value", "limit", "",
    ]);
    for c in &checks {
        table.add_row(vec![
            Cell::new(&c.op),
            Cell::new(&c.types),
            Cell::new(c.head_size).set_alignment(CellAlignment::Right),
            Cell::new(c.queries).set_alignment(CellAlignment::Right),
            Cell::new(c.heads.as_deref().unwrap_or("")).set_alignment(CellAlignment::Right),
            Cell::new(&c.metric),
            Cell::new(format!("{:.3e}", c.value)).set_alignment(CellAlignment::Right),
            Cell::new(&c.limit),
            Cell::new(if c.pass { "ok" } else { "FAIL" }),
        ]);
    }
    println!("{} against the CPU backend\n{table}", device.name);
    let failed = checks.iter().filter(|c| !c.pass).count();
    if let Some(path) = &args.json {
        let report = Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            device: device.name.clone(),
            n_kv: args.n_kv,
            seed: args.seed,
            checks,
        };
        crate::output::write_json(path, &report)?;
    }
    if failed > 0 {
        bail!("{failed} check(s) outside their tolerance");
    }
    println!("every check within its tolerance");
    Ok(())
}

fn check_set_rows(
    cpu: &Backend,
    device: &Backend,
    ty: CacheType,
    d: i64,
    rng: &mut SplitMix64,
) -> Result<Vec<Check>> {
    let rows = 256i64;
    let mut x = rng.normals(d * rows);
    // adversarial rows: zeros, a constant, one huge value, NaN and infinities
    let row = |r: i64| (r * d) as usize..((r + 1) * d) as usize;
    x[row(0)].fill(0.0);
    x[row(1)].fill(0.37);
    x[row(2)][5] = 1.0e4;
    x[row(3)][1] = f32::NAN;
    x[row(3)][2] = f32::INFINITY;
    x[row(3)][3] = f32::NEG_INFINITY;
    let order: Vec<i64> = (0..rows).rev().collect(); // written in reverse, as a cache may be

    let graph = |backend: &Backend| -> Result<Vec<u8>> {
        let g = Graph::new(backend, 8)?;
        let dst = g.tensor_2d(ty.ggml(), d, rows);
        let src = g.tensor_2d(sys::GGML_TYPE_F32, d, rows);
        let idx = g.tensor_1d(sys::GGML_TYPE_I64, rows);
        // SAFETY: tensors of this context, shapes as set_rows wants them.
        let out = unsafe { sys::ggml_set_rows(g.ctx, dst, src, idx) };
        let g = g.allocate(out)?;
        g.set(dst, &vec![0u8; g.nbytes(dst)])?;
        g.set(src, &x)?;
        g.set(idx, &order)?;
        g.compute()?;
        g.get::<u8>(dst)
    };
    let (a, b) = (graph(cpu)?, graph(device)?);

    // the rows in input order (row r was written to rows-1-r); what each should hold is its
    // input, and for the first four, whose input is not all finite or not typical, what the CPU
    // made of it (so any difference there counts as error)
    let row_bytes = ty.row_bytes(d as u64) as usize;
    let stored = || (0..rows).map(|r| (rows - 1 - r) as usize);
    let (a, b) = (
        cache_rows(&a, row_bytes, stored()),
        cache_rows(&b, row_bytes, stored()),
    );
    let mut reference = x.clone();
    let cpu_values = turbo_format(ty)?.dequantize_row(&a)?;
    reference[..row(4).start].copy_from_slice(&cpu_values[..row(4).start]);
    compare_cache_blocks("set-rows", "CPU", ty, d, rows, &a, &b, &reference)
}

/// The RoPE that a layer's K and Q chains start with in the check, one per head size so that the
/// three cover both of ggml's orders, YaRN and frequency factors.
struct RopeCase {
    neox: bool,
    freq_base: f32,
    freq_scale: f32,
    ext_factor: f32,
    freq_factors: bool,
}

impl RopeCase {
    const N_CTX_ORIG: i32 = 4096;
    const ATTN_FACTOR: f32 = 1.0;
    const BETA_FAST: f32 = 32.0;
    const BETA_SLOW: f32 = 1.0;

    fn for_head_size(d: i64) -> RopeCase {
        match d {
            // YaRN at a quarter of the frequencies
            64 => RopeCase {
                neox: false,
                freq_base: 10_000.0,
                freq_scale: 0.25,
                ext_factor: 1.0,
                freq_factors: false,
            },
            // Llama-3's base, with frequency factors
            128 => RopeCase {
                neox: true,
                freq_base: 500_000.0,
                freq_scale: 1.0,
                ext_factor: 0.0,
                freq_factors: true,
            },
            _ => RopeCase {
                neox: false,
                freq_base: 1_000_000.0,
                freq_scale: 1.0,
                ext_factor: 0.0,
                freq_factors: false,
            },
        }
    }

    /// ggml's mode (llama.h names the same values as ggml.h's GGML_ROPE_TYPE_*)
    fn mode(&self) -> i32 {
        if self.neox {
            sys::LLAMA_ROPE_TYPE_NEOX
        } else {
            sys::LLAMA_ROPE_TYPE_NORM
        }
    }

    fn describe(&self) -> &'static str {
        match (self.neox, self.ext_factor != 0.0, self.freq_factors) {
            (true, _, true) => "NeoX, freq. factors",
            (true, _, false) => "NeoX",
            (false, true, _) => "normal, YaRN",
            (false, false, _) => "normal",
        }
    }

    /// `ggml_rope_ext` of x ([d, heads, tokens]) in f64: pair c of each head turns by
    /// pos·base^(−2c/d), with YaRN's blend of interpolation and extrapolation.
    fn apply(&self, x: &[f32], d: i64, pos: &[i32], freq_factors: Option<&[f32]>) -> Vec<f32> {
        let mut corr = [0f32; 2];
        // SAFETY: plain arithmetic that writes the two floats it is given.
        unsafe {
            sys::ggml_rope_yarn_corr_dims(
                d as i32,
                Self::N_CTX_ORIG,
                self.freq_base,
                Self::BETA_FAST,
                Self::BETA_SLOW,
                corr.as_mut_ptr(),
            )
        };
        let (lo, hi) = (f64::from(corr[0]), f64::from(corr[1]));
        let d = d as usize;
        let heads_per_token = x.len() / d / pos.len();
        let mut out = x.to_vec();
        for (row, (xs, ys)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let p = f64::from(pos[row / heads_per_token]);
            for c in 0..d / 2 {
                let ff = freq_factors.map_or(1.0, |f| f64::from(f[c]));
                let extrap = p * f64::from(self.freq_base).powf(-2.0 * c as f64 / d as f64) / ff;
                let interp = f64::from(self.freq_scale) * extrap;
                let (theta, mscale) = if self.ext_factor != 0.0 {
                    let y = (c as f64 - lo) / (hi - lo).max(0.001);
                    let mix = (1.0 - y.clamp(0.0, 1.0)) * f64::from(self.ext_factor);
                    let m = 1.0 + 0.1 * (1.0 / f64::from(self.freq_scale)).ln();
                    (
                        interp * (1.0 - mix) + extrap * mix,
                        f64::from(Self::ATTN_FACTOR) * m,
                    )
                } else {
                    (interp, f64::from(Self::ATTN_FACTOR))
                };
                let (i0, i1) = if self.neox {
                    (c, c + d / 2)
                } else {
                    (2 * c, 2 * c + 1)
                };
                let (x0, x1) = (f64::from(xs[i0]), f64::from(xs[i1]));
                let (sin, cos) = theta.sin_cos();
                ys[i0] = ((x0 * cos - x1 * sin) * mscale) as f32;
                ys[i1] = ((x0 * sin + x1 * cos) * mscale) as f32;
            }
        }
        out
    }
}

/// One layer's new keys, values and queries as llama.cpp turns them into the cache and the
/// attention's query when the cache is turbo (patch 0004's transform, then upstream's Hadamard
/// rotation): K = H·((k − mu)·scale) and V = H·v written with set-rows, Q = H·(q·q_scale). On
/// CUDA the three chains run in one kernel launch (turbo-fuse.cu); the CPU runs the nodes.
///
/// Then the same with K and Q coming out of a RoPE, which the CUDA chains take up: the device's
/// results with the RoPE in the chains are compared with its results with the RoPE run apart
/// (upstream's kernel; the graph marks its output for reading, so that it cannot join). The CPU
/// is not the baseline there: ggml-cuda computes the angles with fast-math sines, so its RoPE
/// differs from the CPU's by more than the quantizer's decisions tolerate bit for bit.
fn check_fused_chains(
    cpu: &Backend,
    device: &Backend,
    ty: CacheType,
    d: i64,
    rng: &mut SplitMix64,
) -> Result<Vec<Check>> {
    // rotation sizes as llama.cpp picks them: the whole head for K and Q, 64 for V
    let (heads, kv_heads, tokens, rows, k_rot, v_rot) = (4i64, 2i64, 128i64, 256i64, d, 64i64);
    let k = rng.normals(d * kv_heads * tokens);
    let v = rng.normals(d * kv_heads * tokens);
    let q = rng.normals(d * heads * tokens);
    let mu: Vec<f32> = rng.normals(d * kv_heads).iter().map(|x| 0.3 * x).collect();
    let k_scale: Vec<f32> = (0..d * kv_heads)
        .map(|_| 0.5 + rng.uniform() as f32)
        .collect();
    let q_scale: Vec<f32> = (0..d * heads).map(|_| 0.5 + rng.uniform() as f32).collect();
    // distinct cache rows, out of order (37 is prime to 256)
    let written: Vec<i64> = (0..tokens).map(|t| (t * 37 + 11) % rows).collect();
    // positions up to 3688, where the angles' rounding shows
    let pos: Vec<i32> = (0..tokens as i32).map(|t| 5 + 29 * t).collect();
    let freq_factors: Vec<f32> = (0..d / 2).map(|c| 1.0 + (c % 8) as f32).collect();
    let rope = RopeCase::for_head_size(d);

    // the K and V cache bytes and the rotated query; `with_rope`: None, or whether the RoPE may join
    type Outputs = (Vec<u8>, Vec<u8>, Vec<f32>);
    let graph = |backend: &Backend, with_rope: Option<bool>| -> Result<Outputs> {
        let g = Graph::new(backend, 64)?;
        let tk = g.tensor_3d(sys::GGML_TYPE_F32, d, kv_heads, tokens);
        let tv = g.tensor_3d(sys::GGML_TYPE_F32, d, kv_heads, tokens);
        let tq = g.tensor_3d(sys::GGML_TYPE_F32, d, heads, tokens);
        let tmu = g.tensor_2d(sys::GGML_TYPE_F32, d, kv_heads);
        let tks = g.tensor_2d(sys::GGML_TYPE_F32, d, kv_heads);
        let tqs = g.tensor_2d(sys::GGML_TYPE_F32, d, heads);
        let hk = g.tensor_2d(sys::GGML_TYPE_F32, k_rot, k_rot);
        let hv = g.tensor_2d(sys::GGML_TYPE_F32, v_rot, v_rot);
        let k_cache = g.tensor_2d(ty.ggml(), d * kv_heads, rows);
        let v_cache = g.tensor_2d(ty.ggml(), d * kv_heads, rows);
        let idx = g.tensor_1d(sys::GGML_TYPE_I64, tokens);
        let tpos = g.tensor_1d(sys::GGML_TYPE_I32, tokens);
        let tff = g.tensor_1d(sys::GGML_TYPE_F32, d / 2);
        // SAFETY: tensors of this context, in the shapes llama-graph.cpp and cpy_k/cpy_v build.
        let (q_rot, v_rows, k_rows, v_write, k_write) = unsafe {
            let rotate = |x: *mut sys::ggml_tensor, h: *mut sys::ggml_tensor| {
                let n = (*h).ne[0];
                let flat = sys::ggml_reshape_2d(g.ctx, x, n, sys::ggml_nelements(x) / n);
                let r = sys::ggml_mul_mat(g.ctx, h, flat);
                sys::ggml_mul_mat_set_hint(r, sys::GGML_HINT_SRC0_IS_HADAMARD);
                sys::ggml_reshape_3d(g.ctx, r, (*x).ne[0], (*x).ne[1], (*x).ne[2])
            };
            let write = |cache, x: *mut sys::ggml_tensor| {
                let rows = sys::ggml_view_2d(g.ctx, x, d * (*x).ne[1], tokens, (*x).nb[2], 0);
                sys::ggml_set_rows(g.ctx, cache, rows, idx)
            };
            let turn = |x: *mut sys::ggml_tensor| match with_rope {
                None => x,
                Some(joins) => {
                    let ff = if rope.freq_factors {
                        tff
                    } else {
                        std::ptr::null_mut()
                    };
                    let r = sys::ggml_rope_ext(
                        g.ctx,
                        x,
                        tpos,
                        ff,
                        d as i32,
                        rope.mode(),
                        RopeCase::N_CTX_ORIG,
                        rope.freq_base,
                        rope.freq_scale,
                        rope.ext_factor,
                        RopeCase::ATTN_FACTOR,
                        RopeCase::BETA_FAST,
                        RopeCase::BETA_SLOW,
                    );
                    if !joins {
                        sys::ggml_set_output(r);
                    }
                    r
                }
            };
            let q_rot = rotate(sys::ggml_mul(g.ctx, turn(tq), tqs), hk);
            let v_rows = rotate(tv, hv);
            let k_rows = rotate(
                sys::ggml_mul(g.ctx, sys::ggml_sub(g.ctx, turn(tk), tmu), tks),
                hk,
            );
            (
                q_rot,
                v_rows,
                k_rows,
                write(v_cache, v_rows),
                write(k_cache, k_rows),
            )
        };
        // in llama.cpp's order: Q, V, K, then the two cache writes
        let g = g.allocate_all(&[q_rot, v_rows, k_rows, k_write, v_write])?;
        g.set(tk, &k)?;
        g.set(tv, &v)?;
        g.set(tq, &q)?;
        g.set(tmu, &mu)?;
        g.set(tks, &k_scale)?;
        g.set(tqs, &q_scale)?;
        g.set(hk, &hadamard(k_rot))?;
        g.set(hv, &hadamard(v_rot))?;
        g.set(k_cache, &vec![0u8; g.nbytes(k_cache)])?;
        g.set(v_cache, &vec![0u8; g.nbytes(v_cache)])?;
        g.set(idx, &written)?;
        g.set(tpos, &pos)?;
        g.set(tff, &freq_factors)?;
        g.compute()?;
        Ok((
            g.get::<u8>(k_cache)?,
            g.get::<u8>(v_cache)?,
            g.get::<f32>(q_rot)?,
        ))
    };
    // (chains fused, of them with their RoPE, launches), from the plan's log line "N TurboQuant
    // chains fused, R with their RoPE, in M launches" (turbo-fuse.cu): the most of one graph's runs
    type Fusion = (usize, usize, usize);
    let fused_on_device = |with_rope: Option<bool>| -> Result<(Outputs, Fusion)> {
        let mark = logs::mark();
        let out = graph(device, with_rope)?;
        let fusion = logs::lines_since(mark)
            .iter()
            .filter_map(|l| {
                let (before, after) = l.split_once(" TurboQuant chains fused, ")?;
                let chains = before.rsplit(' ').next()?.parse().ok()?;
                let (ropes, after) = after.split_once(" with their RoPE, in ")?;
                let launches = after.split(' ').next()?.parse().ok()?;
                Some((chains, ropes.parse().ok()?, launches))
            })
            .max()
            .unwrap_or((0, 0, 0));
        Ok((out, fusion))
    };

    let v_ref = rotate_reference(&v, v_rot)?;
    let row_bytes = ty.row_bytes((d * kv_heads) as u64) as usize;
    let written_rows =
        |cache: &[u8]| cache_rows(cache, row_bytes, written.iter().map(|&r| r as usize));
    let mut checks = Vec::new();
    let rope_label = format!("RoPE ({}) apart", rope.describe());
    for with_rope in [false, true] {
        // the baseline: the CPU, or the device with the RoPE run apart
        let (baseline, (b, fusion), k_in, prefix, label) = if with_rope {
            let baseline = graph(device, Some(false))?;
            let fused = fused_on_device(Some(true))?;
            (
                baseline,
                fused,
                rope.apply(&k, d, &pos, rope.freq_factors.then_some(&freq_factors[..])),
                "RoPE, ",
                rope_label.as_str(),
            )
        } else {
            (
                graph(cpu, None)?,
                fused_on_device(None)?,
                k.clone(),
                "",
                "CPU",
            )
        };
        // what the cache should hold: the transform and the rotation
        let k_ref = rotate_reference(
            &transform_reference(&k_in, &mu, &k_scale, d * kv_heads),
            k_rot,
        )?;
        let mut caches = vec![(
            format!("K: {prefix}transform, rotate, set-rows (fused)"),
            &baseline.0,
            &b.0,
            &k_ref,
        )];
        if !with_rope {
            // V has no RoPE: the first pass checks it
            caches.push((
                "V: rotate, set-rows (fused)".to_string(),
                &baseline.1,
                &b.1,
                &v_ref,
            ));
        }
        for (name, base_cache, device_cache, reference) in caches {
            checks.extend(compare_cache_blocks(
                &name,
                label,
                ty,
                d,
                tokens,
                &written_rows(base_cache),
                &written_rows(device_cache),
                reference,
            )?);
        }
        let diff = max_abs_diff(&baseline.2, &b.2) / max_abs(&baseline.2).max(f64::MIN_POSITIVE);
        checks.push(Check {
            op: format!("Q: {prefix}transform, rotate (fused)"),
            types: ty.name().into(),
            head_size: d,
            queries: tokens,
            heads: Some(format!("{heads}/{kv_heads}")),
            metric: format!("max |diff| / max |value|, against {label}"),
            value: diff,
            limit: format!("<= {ROTATED_QUERY_MAX_REL_DIFF:e}"),
            pass: diff <= ROTATED_QUERY_MAX_REL_DIFF,
        });
        if device.name != cpu.name {
            let (fused, ropes, launches) = fusion;
            for (metric, value, expected) in [
                ("chains the device ran fused", fused, 3),
                (
                    "of them, starting with their RoPE",
                    ropes,
                    if with_rope { 2 } else { 0 },
                ),
                ("kernel launches of the three chains", launches, 1),
            ] {
                checks.push(Check {
                    op: format!("fusion{}", if with_rope { " with RoPE" } else { "" }),
                    types: ty.name().into(),
                    head_size: d,
                    queries: tokens,
                    heads: None,
                    metric: metric.into(),
                    value: value as f64,
                    limit: format!("= {expected}"),
                    pass: value == expected,
                });
            }
        }
    }
    Ok(checks)
}

/// (x − mu)·scale per channel and head (`period` values).
fn transform_reference(x: &[f32], mu: &[f32], scale: &[f32], period: i64) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % period as usize;
            (v - mu[c]) * scale[c]
        })
        .collect()
}

/// The orthonormal Walsh-Hadamard transform of every group of `n` values (the core crate's).
fn rotate_reference(x: &[f32], n: i64) -> Result<Vec<f32>> {
    let mut out = x.to_vec();
    turboquant::rotation::fwht_orthonormal_groups(&mut out, n as usize)?;
    Ok(out)
}

/// The given rows of a cache (`row_bytes` each), one after the other.
fn cache_rows(cache: &[u8], row_bytes: usize, rows: impl Iterator<Item = usize>) -> Vec<u8> {
    rows.flat_map(|r| &cache[r * row_bytes..(r + 1) * row_bytes])
        .copied()
        .collect()
}

/// The orthonormal Hadamard matrix of size n in Sylvester order (as llama.cpp builds it).
fn hadamard(n: i64) -> Vec<f32> {
    let norm = 1.0 / (n as f32).sqrt();
    (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            if (i & j).count_ones() % 2 == 0 {
                norm
            } else {
                -norm
            }
        })
        .collect()
}

fn turbo_format(ty: CacheType) -> Result<&'static turboquant::block::TurboFormat> {
    Ok(turboquant::block::TurboType::ALL
        .into_iter()
        .find(|t| t.name() == ty.name())
        .context("not a turbo type")?
        .format())
}

/// Cache rows written by a baseline (the CPU, unless named otherwise) and by the device: share of
/// identical blocks, and the squared error of each against the values they should hold.
#[allow(clippy::too_many_arguments)]
fn compare_cache_blocks(
    op: &str,
    baseline: &str,
    ty: CacheType,
    d: i64,
    rows: i64,
    cpu: &[u8],
    device: &[u8],
    reference: &[f32],
) -> Result<Vec<Check>> {
    let format = turbo_format(ty)?;
    let block_bytes = format.ty().block_bytes();
    let blocks = cpu.len() / block_bytes;
    let identical = cpu
        .chunks_exact(block_bytes)
        .zip(device.chunks_exact(block_bytes))
        .filter(|(p, q)| p == q)
        .count();
    let error = |bytes: &[u8]| -> Result<f64> {
        let values = format.dequantize_row(bytes)?;
        Ok(values
            .iter()
            .zip(reference)
            .map(|(v, r)| f64::from(v - r).powi(2))
            .sum())
    };
    let cpu_error = error(cpu)?;
    let growth = error(device)? / cpu_error;
    let relative = cpu_error / reference.iter().map(|&r| f64::from(r).powi(2)).sum::<f64>();
    Ok(vec![
        Check {
            op: op.into(),
            types: ty.name().into(),
            head_size: d,
            queries: rows,
            heads: None,
            metric: format!("squared error / signal, {baseline}"),
            value: relative,
            limit: format!("<= {CACHE_MAX_RELATIVE_ERROR}"),
            pass: relative <= CACHE_MAX_RELATIVE_ERROR,
        },
        Check {
            op: op.into(),
            types: ty.name().into(),
            head_size: d,
            queries: rows,
            heads: None,
            metric: "blocks bit-identical".into(),
            value: identical as f64 / blocks as f64,
            limit: format!(">= {SET_ROWS_MIN_IDENTICAL_BLOCKS}"),
            pass: identical as f64 >= SET_ROWS_MIN_IDENTICAL_BLOCKS * blocks as f64,
        },
        Check {
            op: op.into(),
            types: ty.name().into(),
            head_size: d,
            queries: rows,
            heads: None,
            metric: format!("squared error, device / {baseline}"),
            value: growth,
            limit: format!("<= {SET_ROWS_MAX_ERROR_GROWTH}"),
            pass: growth <= SET_ROWS_MAX_ERROR_GROWTH,
        },
    ])
}

fn check_get_rows(
    cpu: &Backend,
    device: &Backend,
    ty: CacheType,
    d: i64,
    rng: &mut SplitMix64,
) -> Result<Check> {
    let rows = 64i64;
    let x = rng.normals(d * rows);
    let bytes = quantize(ty, &x, d)?;
    let picks: Vec<i32> = (0..16).map(|_| (rng.next() % rows as u64) as i32).collect();

    let graph = |backend: &Backend| -> Result<Vec<f32>> {
        let g = Graph::new(backend, 8)?;
        let src = g.tensor_2d(ty.ggml(), d, rows);
        let idx = g.tensor_1d(sys::GGML_TYPE_I32, picks.len() as i64);
        // SAFETY: tensors of this context.
        let out = unsafe { sys::ggml_get_rows(g.ctx, src, idx) };
        let g = g.allocate(out)?;
        g.set(src, &bytes)?;
        g.set(idx, &picks)?;
        g.compute()?;
        g.get::<f32>(out)
    };
    let (a, b) = (graph(cpu)?, graph(device)?);
    let diff = max_abs_diff(&a, &b) / max_abs(&a).max(f64::MIN_POSITIVE);
    Ok(Check {
        op: "get-rows".into(),
        types: ty.name().into(),
        head_size: d,
        queries: picks.len() as i64,
        heads: None,
        metric: "max |diff| / max |value|".into(),
        value: diff,
        limit: format!("<= {GET_ROWS_MAX_REL_DIFF:e}"),
        pass: diff <= GET_ROWS_MAX_REL_DIFF,
    })
}

#[allow(clippy::too_many_arguments)]
fn check_attention(
    cpu: &Backend,
    device: &Backend,
    k_type: CacheType,
    v_type: CacheType,
    d: i64,
    (queries, heads, kv_heads): (i64, i64, i64),
    n_kv: i64,
    rng: &mut SplitMix64,
) -> Result<Check> {
    let q = rng.normals(d * queries * heads);
    let k = quantize(k_type, &rng.normals(d * n_kv * kv_heads), d)?;
    let v = quantize(v_type, &rng.normals(d * n_kv * kv_heads), d)?;
    // causal over the last `queries` positions, as a prompt appended to a filled cache
    let mut mask = vec![half::f16::ZERO; (n_kv * queries) as usize];
    for i in 0..queries {
        for j in 0..n_kv {
            if j > n_kv - queries + i {
                mask[(i * n_kv + j) as usize] = half::f16::NEG_INFINITY;
            }
        }
    }
    let scale = 1.0 / (d as f32).sqrt();

    let graph = |backend: &Backend| -> Result<Vec<f32>> {
        let g = Graph::new(backend, 8)?;
        let tq = g.tensor_3d(sys::GGML_TYPE_F32, d, queries, heads);
        let tk = g.tensor_3d(k_type.ggml(), d, n_kv, kv_heads);
        let tv = g.tensor_3d(v_type.ggml(), d, n_kv, kv_heads);
        let tm = g.tensor_2d(sys::GGML_TYPE_F16, n_kv, queries);
        // SAFETY: tensors of this context in the shapes flash_attn_ext asserts.
        let out = unsafe { sys::ggml_flash_attn_ext(g.ctx, tq, tk, tv, tm, scale, 0.0, 0.0) };
        let g = g.allocate(out)?;
        g.set(tq, &q)?;
        g.set(tk, &k)?;
        g.set(tv, &v)?;
        g.set(tm, &mask)?;
        g.compute()?;
        g.get::<f32>(out)
    };
    let a = graph(cpu)?;
    let mark = logs::mark();
    let b = graph(device)?;
    let fell_back = logs::lines_since(mark)
        .iter()
        .any(|l| l.contains("converting K and V to f16"));
    let rel_rms = rms_diff(&a, &b) / rms(&a).max(f64::MIN_POSITIVE);
    let decode = queries <= 2;
    let limit = if k_type.name() == "q8_0" {
        ATTENTION_MAX_REL_RMS_Q8_K
    } else {
        ATTENTION_MAX_REL_RMS
    };
    Ok(Check {
        op: if decode {
            "attention decode".into()
        } else {
            "attention prefill".into()
        },
        types: format!("{}/{}", k_type.name(), v_type.name()),
        head_size: d,
        queries,
        heads: Some(format!("{heads}/{kv_heads}")),
        metric: if decode && fell_back {
            "rms diff / rms (fell back to f16!)".into()
        } else {
            "rms diff / rms".into()
        },
        value: rel_rms,
        limit: format!("<= {limit:e}"),
        pass: rel_rms <= limit && !(decode && fell_back),
    })
}

/// Row-wise ggml quantization (f16, q8_0 and the turbo types all go through ggml's own code).
fn quantize(ty: CacheType, x: &[f32], row: i64) -> Result<Vec<u8>> {
    let rows = x.len() as i64 / row;
    let mut out = vec![0u8; (ty.row_bytes(row as u64) * rows as u64) as usize];
    // SAFETY: `out` holds `rows` rows of `row` values of this type; no importance matrix.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.ggml(),
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            rows,
            row,
            std::ptr::null(),
        )
    };
    ensure!(
        written == out.len(),
        "ggml quantized {written} bytes, expected {}",
        out.len()
    );
    Ok(out)
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().map(|v| f64::from(v.abs())).fold(0.0, f64::max)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

fn rms(a: &[f32]) -> f64 {
    (a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

fn rms_diff(a: &[f32], b: &[f32]) -> f64 {
    (a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

/// A ggml backend, freed on drop.
struct Backend {
    ptr: sys::ggml_backend_t,
    name: String,
}

impl Backend {
    fn cpu() -> Result<Backend> {
        // SAFETY: plain constructor; checked for null.
        let ptr = unsafe { sys::ggml_backend_cpu_init() };
        ensure!(!ptr.is_null(), "the CPU backend did not start");
        Ok(Backend {
            ptr,
            name: "CPU".into(),
        })
    }

    fn gpu() -> Result<Backend> {
        // SAFETY: registry lookups; every pointer is checked for null before use.
        unsafe {
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
            if dev.is_null() {
                bail!(
                    "this build has no GPU backend (build with `--features cuda`, or see \
                     scripts/gpu/ for the GPU machine); `--device cpu` dry-runs the checks"
                );
            }
            let name = CStr::from_ptr(sys::ggml_backend_dev_description(dev))
                .to_string_lossy()
                .into_owned();
            let ptr = sys::ggml_backend_dev_init(dev, std::ptr::null());
            ensure!(!ptr.is_null(), "the GPU backend {name} did not start");
            Ok(Backend { ptr, name })
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: created by ggml and freed once.
        unsafe { sys::ggml_backend_free(self.ptr) };
    }
}

/// A ggml context of tensor descriptions on one backend, before allocation.
struct Graph<'b> {
    backend: &'b Backend,
    ctx: *mut sys::ggml_context,
}

/// The same, with its tensors allocated on the backend and one graph built.
struct Allocated<'b> {
    graph: Graph<'b>,
    buffer: sys::ggml_backend_buffer_t,
    cgraph: *mut sys::ggml_cgraph,
}

impl<'b> Graph<'b> {
    fn new(backend: &'b Backend, tensors: usize) -> Result<Graph<'b>> {
        // SAFETY: sizes from ggml's own overhead functions; no_alloc: data lives on the backend.
        let ctx = unsafe {
            sys::ggml_init(sys::ggml_init_params {
                mem_size: sys::ggml_tensor_overhead() * tensors + sys::ggml_graph_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            })
        };
        ensure!(!ctx.is_null(), "ggml_init failed");
        Ok(Graph { backend, ctx })
    }

    fn tensor_1d(&self, ty: sys::ggml_type, n0: i64) -> *mut sys::ggml_tensor {
        // SAFETY: a live context with room for the tensors it was sized for.
        unsafe { sys::ggml_new_tensor_1d(self.ctx, ty, n0) }
    }

    fn tensor_2d(&self, ty: sys::ggml_type, n0: i64, n1: i64) -> *mut sys::ggml_tensor {
        // SAFETY: as above.
        unsafe { sys::ggml_new_tensor_2d(self.ctx, ty, n0, n1) }
    }

    fn tensor_3d(&self, ty: sys::ggml_type, n0: i64, n1: i64, n2: i64) -> *mut sys::ggml_tensor {
        // SAFETY: as above.
        unsafe { sys::ggml_new_tensor_3d(self.ctx, ty, n0, n1, n2) }
    }

    fn allocate(self, out: *mut sys::ggml_tensor) -> Result<Allocated<'b>> {
        self.allocate_all(&[out])
    }

    /// A graph that computes `outs` in this order (and what they need), every tensor allocated.
    fn allocate_all(self, outs: &[*mut sys::ggml_tensor]) -> Result<Allocated<'b>> {
        ensure!(
            outs.iter().all(|t| !t.is_null()),
            "ggml could not build the operation"
        );
        // SAFETY: the context is live; the graph is built in its memory before allocation.
        unsafe {
            let cgraph = sys::ggml_new_graph(self.ctx);
            for &out in outs {
                sys::ggml_build_forward_expand(cgraph, out);
            }
            let buffer = sys::ggml_backend_alloc_ctx_tensors(self.ctx, self.backend.ptr);
            ensure!(
                !buffer.is_null(),
                "could not allocate the tensors on {}",
                self.backend.name
            );
            for i in 0..sys::ggml_graph_n_nodes(cgraph) {
                let node = sys::ggml_graph_node(cgraph, i);
                if !sys::ggml_backend_supports_op(self.backend.ptr, node) {
                    let op = CStr::from_ptr(sys::ggml_op_desc(node)).to_string_lossy();
                    sys::ggml_backend_buffer_free(buffer);
                    bail!(
                        "{} does not support {op} for these types",
                        self.backend.name
                    );
                }
            }
            Ok(Allocated {
                graph: self,
                buffer,
                cgraph,
            })
        }
    }
}

impl Drop for Graph<'_> {
    fn drop(&mut self) {
        // SAFETY: created by ggml_init and freed once.
        unsafe { sys::ggml_free(self.ctx) };
    }
}

impl Allocated<'_> {
    fn nbytes(&self, t: *mut sys::ggml_tensor) -> usize {
        // SAFETY: a tensor of this context.
        unsafe { sys::ggml_nbytes(t) }
    }

    fn set<T: Copy>(&self, t: *mut sys::ggml_tensor, data: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        ensure!(
            bytes == self.nbytes(t),
            "input of {bytes} bytes for a tensor of {}",
            self.nbytes(t)
        );
        // SAFETY: the tensor is allocated on the backend and `data` has exactly its size.
        unsafe { sys::ggml_backend_tensor_set(t, data.as_ptr().cast(), 0, bytes) };
        Ok(())
    }

    fn get<T: Copy + Default>(&self, t: *mut sys::ggml_tensor) -> Result<Vec<T>> {
        let bytes = self.nbytes(t);
        let mut out = vec![T::default(); bytes / std::mem::size_of::<T>()];
        // SAFETY: `out` has exactly the tensor's size.
        unsafe { sys::ggml_backend_tensor_get(t, out.as_mut_ptr().cast(), 0, bytes) };
        Ok(out)
    }

    fn compute(&self) -> Result<()> {
        // SAFETY: the graph's tensors are allocated on this backend.
        let status =
            unsafe { sys::ggml_backend_graph_compute(self.graph.backend.ptr, self.cgraph) };
        ensure!(
            status == sys::GGML_STATUS_SUCCESS,
            "{} failed to compute the graph (status {status})",
            self.graph.backend.name
        );
        Ok(())
    }
}

impl Drop for Allocated<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by ggml_backend_alloc_ctx_tensors and freed once, before the context.
        unsafe { sys::ggml_backend_buffer_free(self.buffer) };
    }
}
