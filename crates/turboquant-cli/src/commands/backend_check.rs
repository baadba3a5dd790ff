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
//! - get-rows (dequantize): the same floats, to rounding.
//! - flash attention, decode (1 or 2 queries) and prefill (64 queries), for every K/V pair the
//!   CUDA backend reads directly and every head size, and for decoding with every grouping of
//!   query heads over KV heads the turbo decode kernel treats apart (1 to 8 query heads per KV
//!   head): the outputs agree to the precision of the GPU kernels (f16 levels and products in
//!   llama.cpp's vector and tensor-core kernels, f32 in the turbo decode kernel; with K in q8_0
//!   the CPU also rounds the query to 8 bits), and decoding must not fall back to converting the
//!   cache to f16 (llama.cpp logs that when it happens).

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

    let format = turboquant::block::TurboType::ALL
        .into_iter()
        .find(|t| t.name() == ty.name())
        .context("not a turbo type")?
        .format();
    let block_bytes = format.ty().block_bytes();
    let blocks = a.len() / block_bytes;
    let identical = a
        .chunks_exact(block_bytes)
        .zip(b.chunks_exact(block_bytes))
        .filter(|(p, q)| p == q)
        .count();
    // error of each reconstruction against the input (finite rows; row r was written to rows-1-r)
    let error = |bytes: &[u8]| -> Result<f64> {
        let values = format.dequantize_row(bytes)?;
        let mut sum = 0.0f64;
        for r in 4..rows {
            let stored = (rows - 1 - r) as usize * d as usize;
            for (i, &v) in x[row(r)].iter().enumerate() {
                sum += f64::from(v - values[stored + i]).powi(2);
            }
        }
        Ok(sum)
    };
    let growth = error(&b)? / error(&a)?;
    let types = ty.name().to_string();
    Ok(vec![
        Check {
            op: "set-rows".into(),
            types: types.clone(),
            head_size: d,
            queries: rows,
            heads: None,
            metric: "blocks bit-identical".into(),
            value: identical as f64 / blocks as f64,
            limit: format!(">= {SET_ROWS_MIN_IDENTICAL_BLOCKS}"),
            pass: identical as f64 >= SET_ROWS_MIN_IDENTICAL_BLOCKS * blocks as f64,
        },
        Check {
            op: "set-rows".into(),
            types,
            head_size: d,
            queries: rows,
            heads: None,
            metric: "squared error, device / CPU".into(),
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
        ensure!(!out.is_null(), "ggml could not build the operation");
        // SAFETY: the context is live; the graph is built in its memory before allocation.
        unsafe {
            let cgraph = sys::ggml_new_graph(self.ctx);
            sys::ggml_build_forward_expand(cgraph, out);
            let buffer = sys::ggml_backend_alloc_ctx_tensors(self.ctx, self.backend.ptr);
            ensure!(
                !buffer.is_null(),
                "could not allocate the tensors on {}",
                self.backend.name
            );
            if !sys::ggml_backend_supports_op(self.backend.ptr, out) {
                let op = CStr::from_ptr(sys::ggml_op_desc(out)).to_string_lossy();
                sys::ggml_backend_buffer_free(buffer);
                bail!(
                    "{} does not support {op} for these types",
                    self.backend.name
                );
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
