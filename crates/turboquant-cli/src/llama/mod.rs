//! The llama.cpp side of the tool: one backend, models loaded with clear errors, contexts made
//! with a chosen KV-cache type, and what llama.cpp reports about their caches.

pub mod cache_type;
pub mod cuda_switches;
pub mod gguf_file;
pub mod logs;
pub mod raw;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;

pub use cache_type::{CacheType, KvTypes};
pub use gguf_file::GgufFile;

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// Contexts are created one at a time: llama.cpp's context constructor is not safe to run
/// concurrently on one model, and we read its log lines right after.
pub(crate) static CONTEXT_CREATION: Mutex<()> = Mutex::new(());

/// The process-wide llama.cpp backend (initialised on first use, with the log captured).
pub fn backend() -> &'static LlamaBackend {
    BACKEND.get_or_init(|| {
        logs::install(std::env::var_os("TURBOQUANT_LLAMA_LOG").is_some());
        LlamaBackend::init().expect("llama.cpp backend is initialised once")
    })
}

/// The compute devices llama.cpp sees, e.g. `CPU (AMD EPYC), CUDA0 (NVIDIA H100 80GB HBM3)`.
pub fn backend_description() -> String {
    backend();
    llama_cpp_2::list_llama_ggml_backend_devices()
        .iter()
        .map(|d| format!("{} ({})", d.name, d.description.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Echo llama.cpp's log to stderr from now on.
pub fn echo_llama_log() {
    backend();
    logs::install(true);
}

/// What the tool needs to know of a model's attention layout, from its GGUF metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelShape {
    pub architecture: String,
    pub n_layer: u64,
    pub n_head: u64,
    /// KV heads of each layer.
    pub n_head_kv: Vec<u64>,
    pub head_dim_k: u64,
    pub head_dim_v: u64,
    pub n_ctx_train: u64,
    /// Sliding-window size in tokens (0: none).
    pub n_swa: u64,
    /// Which layers attend through the sliding window.
    pub swa_layers: Vec<bool>,
}

impl ModelShape {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelShape> {
        let architecture = file
            .architecture()
            .context("the GGUF names no general.architecture")?
            .to_string();
        let need = |suffix: &str| {
            file.arch_int(suffix).with_context(|| {
                format!("the GGUF metadata lacks {architecture}.{suffix}; not a language model?")
            })
        };
        let n_layer = need("block_count")? as u64;
        let n_embd = need("embedding_length")? as u64;
        let n_head = file
            .arch_per_layer("attention.head_count", n_layer as usize)
            .and_then(|v| v.into_iter().max())
            .with_context(|| {
                format!("the GGUF metadata lacks {architecture}.attention.head_count")
            })? as u64;
        let n_head_kv = file
            .arch_per_layer("attention.head_count_kv", n_layer as usize)
            .unwrap_or_else(|| vec![n_head as i64; n_layer as usize])
            .into_iter()
            .map(|h| h as u64)
            .collect();
        let head_dim_k = file
            .arch_int("attention.key_length")
            .map(|v| v as u64)
            .unwrap_or(n_embd / n_head.max(1));
        let head_dim_v = file
            .arch_int("attention.value_length")
            .map(|v| v as u64)
            .unwrap_or(head_dim_k);
        let n_ctx_train = need("context_length")? as u64;
        let n_swa = file
            .arch_int("attention.sliding_window")
            .unwrap_or(0)
            .max(0) as u64;
        let swa_layers = swa_layers(file, &architecture, n_layer as usize, n_swa);
        Ok(ModelShape {
            architecture,
            n_layer,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ctx_train,
            n_swa,
            swa_layers,
        })
    }

    /// The KV cache llama.cpp allocates for a context of `n_ctx` tokens in all, shared by `n_seq`
    /// sequences, decoded in micro-batches of `n_ubatch`, from the model's metadata alone. It
    /// follows llama.cpp's own sizing: the context is padded to 256 cells and split into one
    /// stream per sequence (each padded to 256 again); sliding-window layers hold only
    /// window + micro-batch cells (padded to 256) when that is smaller.
    pub fn kv_cache_size(
        &self,
        types: KvTypes,
        n_ctx: u64,
        n_seq: u64,
        n_ubatch: u64,
    ) -> KvCacheSize {
        let pad = |x: u64| x.div_ceil(256) * 256;
        let n_seq = n_seq.max(1);
        let cells = pad(pad(n_ctx) / n_seq);
        let cells_swa = pad(cells.min(self.n_swa + n_ubatch));
        let mut size = KvCacheSize::default();
        for (il, &h) in self.n_head_kv.iter().enumerate() {
            let swa = self.swa_layers.get(il).copied().unwrap_or(false);
            let layer_cells = if swa { cells_swa } else { cells };
            size.k_bytes += n_seq * layer_cells * types.k.row_bytes(h * self.head_dim_k);
            size.v_bytes += n_seq * layer_cells * types.v.row_bytes(h * self.head_dim_v);
        }
        size
    }

    /// Storage bits per value of a cache with these types.
    pub fn bits_per_value(&self, types: KvTypes) -> f64 {
        let kv = *self.n_head_kv.iter().max().unwrap_or(&1);
        types.bits_per_value(kv * self.head_dim_k, kv * self.head_dim_v)
    }

    /// An error unless both cache types can hold this model's heads.
    pub fn check_types(&self, types: KvTypes) -> Result<()> {
        for (which, t, dim) in [
            ("K", types.k, self.head_dim_k),
            ("V", types.v, self.head_dim_v),
        ] {
            if dim % t.block_size() != 0 {
                bail!(
                    "cache type {t} stores blocks of {} values, which cannot hold this model's {which} \
                     heads of {dim} values; pick another type for {which}",
                    t.block_size()
                );
            }
        }
        Ok(())
    }
}

/// Which layers use the sliding window: from `<arch>.attention.sliding_window_pattern` (one flag
/// per layer, or a period), else the period llama.cpp hard-codes for the architecture.
fn swa_layers(file: &GgufFile, architecture: &str, n_layer: usize, n_swa: u64) -> Vec<bool> {
    if n_swa == 0 {
        return vec![false; n_layer];
    }
    let key = format!("{architecture}.attention.sliding_window_pattern");
    if let Some(gguf_file::MetaValue::IntArray(flags)) = file.get(&key) {
        if flags.len() == n_layer {
            return flags.iter().map(|&f| f != 0).collect();
        }
    }
    let period = match (file.int(&key), architecture) {
        (Some(p), _) => p.max(0) as usize,
        (None, "gemma3") => 6,
        // an architecture whose window layout we do not know: size it as dense (an upper bound)
        _ => return vec![false; n_layer],
    };
    // as llama.cpp: with a period p, layer il uses the window unless il % p == p - 1
    (0..n_layer)
        .map(|il| period == 0 || il % period < period - 1)
        .collect()
}

/// The buffer types in which the CPU backend may keep weights rearranged for its own kernels
/// (`AMX` tiles, `CPU_REPACK` interleaved blocks for AVX2/AVX-512 or NEON, ...): what this build
/// offers on this CPU. llama.cpp uses them unless told not to (`--no-repack`).
pub fn cpu_repack_types() -> Vec<String> {
    backend();
    type GetExtraBufts =
        unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *mut sys::ggml_backend_buffer_type_t;
    // SAFETY: the CPU device and its registry live for the whole process; the proc address, where
    // the backend has it, has the type ggml-backend.h declares for this name; the list it returns
    // ends with a null entry.
    unsafe {
        let cpu = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if cpu.is_null() {
            return Vec::new();
        }
        let reg = sys::ggml_backend_dev_backend_reg(cpu);
        let address = sys::ggml_backend_reg_get_proc_address(
            reg,
            c"ggml_backend_dev_get_extra_bufts".as_ptr(),
        );
        if address.is_null() {
            return Vec::new();
        }
        let get: GetExtraBufts = std::mem::transmute(address);
        let mut names = Vec::new();
        let mut next = get(cpu);
        while !next.is_null() && !(*next).is_null() {
            names.push(
                std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(*next))
                    .to_string_lossy()
                    .into_owned(),
            );
            next = next.add(1);
        }
        names
    }
}

/// One buffer llama.cpp put weights in, as its load log reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WeightBuffer {
    /// The buffer type: `CPU_Mapped`, `CPU_REPACK`, `AMX`, `CUDA0`, ...
    pub name: String,
    pub mib: f64,
}

impl WeightBuffer {
    /// From `load_tensors:   CPU_REPACK model buffer size =    50.00 MiB` lines.
    fn from_log(lines: &[String]) -> Vec<WeightBuffer> {
        lines
            .iter()
            .filter_map(|line| {
                let (head, tail) = line.split_once(" model buffer size = ")?;
                let name = head.rsplit(':').next()?.trim().to_string();
                let mib = tail.split_whitespace().next()?.parse().ok()?;
                Some(WeightBuffer { name, mib })
            })
            .collect()
    }
}

/// How many tensors the CPU repacked into each layout, from `repack: repack tensor
/// blk.0.attn_output.weight with q4_K_8x8` lines (the AMX buffer logs none).
fn repacked_layouts(lines: &[String]) -> BTreeMap<String, usize> {
    let mut layouts = BTreeMap::new();
    for line in lines {
        if let Some((_, layout)) = line
            .strip_prefix("repack: repack tensor ")
            .and_then(|rest| rest.rsplit_once(" with "))
        {
            *layouts.entry(layout.trim().to_string()).or_insert(0) += 1;
        }
    }
    layouts
}

/// Serialises model loads that set a process-wide default (see [`Model::load_with_repack`]).
static MODEL_LOADING: Mutex<()> = Mutex::new(());

/// A loaded model with its GGUF facts.
pub struct Model {
    pub model: LlamaModel,
    pub shape: ModelShape,
    pub file: GgufFile,
    /// Where llama.cpp put the weights.
    pub weight_buffers: Vec<WeightBuffer>,
    /// Tensors per repacked layout (`q4_K_8x8`: 27), where the CPU's repack buffer took them.
    pub repacked_layouts: BTreeMap<String, usize>,
}

impl Model {
    /// Loads a GGUF model, offloading up to `n_gpu_layers` layers where a GPU back end exists,
    /// with the CPU's repacked weight layouts where it has them (llama.cpp's default).
    pub fn load(path: &Path, n_gpu_layers: u32) -> Result<Model> {
        Self::load_with_repack(path, n_gpu_layers, true)
    }

    /// As [`Model::load`]; with `repack` false the CPU keeps the weights in plain buffers, as
    /// they are in the file (llama.cpp's `--no-repack`): no AMX or AVX2/AVX-512 layouts.
    pub fn load_with_repack(path: &Path, n_gpu_layers: u32, repack: bool) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let shape = ModelShape::from_gguf(&file)?;
        let backend = backend();
        let params = {
            let _one_at_a_time = MODEL_LOADING.lock().unwrap_or_else(|e| e.into_inner());
            // llama-cpp-2 has no setter for use_extra_bufts; its params start from this default
            sys::set_default_use_extra_bufts(repack);
            let params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
            sys::set_default_use_extra_bufts(true);
            params
        };
        let mark = logs::mark();
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            anyhow!(
                "llama.cpp could not load {}: {e}{}",
                path.display(),
                quote_problems(logs::problems_since(mark))
            )
        })?;
        let lines = logs::lines_since(mark);
        Ok(Model {
            model,
            shape,
            file,
            weight_buffers: WeightBuffer::from_log(&lines),
            repacked_layouts: repacked_layouts(&lines),
        })
    }

    /// The weight buffers in one of the CPU's repacked layouts ([`cpu_repack_types`]).
    pub fn repacked_buffers(&self) -> Vec<&WeightBuffer> {
        let repack = cpu_repack_types();
        self.weight_buffers
            .iter()
            .filter(|b| repack.contains(&b.name))
            .collect()
    }

    pub fn name(&self) -> String {
        self.file
            .str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.file
                    .path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into()
            })
    }
}

/// How to make a context.
#[derive(Clone, Debug)]
pub struct ContextSettings {
    pub n_ctx: u32,
    pub n_batch: u32,
    /// Micro-batch size (llama.cpp's -ub).
    pub n_ubatch: u32,
    /// Sequences that share the context (llama.cpp's -np), each in its own cache stream.
    pub n_seq: u32,
    pub threads: i32,
    pub types: KvTypes,
    /// Seed of the turbo types' random signs (0: the built-in pattern); see `llama_turbo_set_seed`.
    pub turbo_seed: u32,
    /// The text the turbo types calibrate on, in place of the built-in English paragraph (None);
    /// see `llama_turbo_set_calibration_text` and [`read_calibration_text`].
    pub turbo_calibration: Option<String>,
}

impl ContextSettings {
    pub fn new(n_ctx: u32, types: KvTypes) -> ContextSettings {
        let n_batch = n_ctx.min(2048);
        ContextSettings {
            n_ctx,
            n_batch,
            n_ubatch: n_batch.min(512),
            n_seq: 1,
            threads: default_threads(),
            types,
            turbo_seed: 0,
            turbo_calibration: None,
        }
    }
}

/// The text of `--turbo-calibration FILE`: non-empty UTF-8 without NUL bytes (it goes to
/// llama.cpp as a C string).
pub fn read_calibration_text(path: &Path) -> Result<String> {
    let text = crate::input::read_text_file(path).context("--turbo-calibration")?;
    if let Some(at) = text.find('\0') {
        bail!(
            "--turbo-calibration: {} has a NUL byte at offset {at}; a calibration text is plain text",
            path.display()
        );
    }
    Ok(text)
}

pub fn default_threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(4)
}

/// The KV cache as llama.cpp reported it when the context was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvCacheSize {
    pub k_bytes: u64,
    pub v_bytes: u64,
}

impl KvCacheSize {
    pub fn total_bytes(&self) -> u64 {
        self.k_bytes + self.v_bytes
    }

    pub fn k_mib(&self) -> f64 {
        self.k_bytes as f64 / MIB
    }

    pub fn v_mib(&self) -> f64 {
        self.v_bytes as f64 / MIB
    }

    pub fn total_mib(&self) -> f64 {
        self.total_bytes() as f64 / MIB
    }

    /// Sums the `llama_kv_cache: bytes: K (f16) = a, V (f16) = b` lines (one per cache; models
    /// with sliding-window layers have two). That line comes from our patch 0001, beside
    /// upstream's rounded `size = ... MiB` line.
    pub fn from_log(lines: &[String]) -> Option<KvCacheSize> {
        let mut size = KvCacheSize::default();
        let mut found = false;
        for line in lines
            .iter()
            .filter(|l| l.contains("llama_kv_cache: bytes:"))
        {
            size.k_bytes += number_after(line, "K (")?;
            size.v_bytes += number_after(line, "V (")?;
            found = true;
        }
        found.then_some(size)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// In `... K (q8_0) = 1234, ...` the number after the label's closing `) =`.
fn number_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    let rest = &rest[rest.find(") =")? + 3..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Creates a context: checks the cache types against the model, the context against the
/// training length (a warning) and the memory (an error), then reads the KV size llama.cpp logs.
pub fn new_context<'m>(
    model: &'m Model,
    settings: &ContextSettings,
) -> Result<(LlamaContext<'m>, KvCacheSize)> {
    let shape = &model.shape;
    shape.check_types(settings.types)?;
    if settings.n_ctx == 0 {
        bail!("the context size must be at least 1 token");
    }
    if u64::from(settings.n_ctx) > shape.n_ctx_train {
        eprintln!(
            "warning: context of {} tokens is longer than the {} this model was trained on; \
             quality past that is not to be trusted",
            settings.n_ctx, shape.n_ctx_train
        );
    }
    let kv_bytes = shape
        .kv_cache_size(
            settings.types,
            u64::from(settings.n_ctx),
            u64::from(settings.n_seq),
            u64::from(settings.n_ubatch),
        )
        .total_bytes();
    if let Some(available) = available_memory_bytes() {
        if kv_bytes > available {
            bail!(
                "a context of {} tokens needs {:.1} GiB of KV cache as {}, more than the {:.1} GiB \
                 of memory available; lower -c or pick a smaller cache type",
                settings.n_ctx,
                kv_bytes as f64 / GIB,
                settings.types,
                available as f64 / GIB
            );
        }
    }

    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.n_ctx))
        .with_n_batch(settings.n_batch)
        .with_n_ubatch(settings.n_ubatch.min(settings.n_batch))
        .with_n_seq_max(settings.n_seq)
        // sliding-window layers keep only their window (llama-cli's default; the C API's is the
        // full context)
        .with_swa_full(false)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads)
        .with_type_k(settings.types.k.to_llama())
        .with_type_v(settings.types.v.to_llama())
        .with_flash_attention_policy(sys::LLAMA_FLASH_ATTN_TYPE_ENABLED);

    let calibration = settings
        .turbo_calibration
        .as_deref()
        .map(CString::new)
        .transpose()
        .map_err(|e| {
            anyhow!(
                "the turbo calibration text has a NUL byte at offset {}",
                e.nul_position()
            )
        })?;

    let _one_at_a_time = CONTEXT_CREATION.lock().unwrap_or_else(|e| e.into_inner());
    let mark = logs::mark();
    // the seed and the calibration text are read when the context calibrates its turbo cache,
    // inside new_context; both are set back to their defaults right after
    // SAFETY: sets process-wide values; contexts are created one at a time (the lock above).
    // llama.cpp copies the text, which outlives the call anyway.
    unsafe {
        sys::llama_turbo_set_seed(settings.turbo_seed);
        sys::llama_turbo_set_calibration_text(
            calibration
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr()),
        );
    }
    let context = model.model.new_context(backend(), params);
    unsafe {
        sys::llama_turbo_set_seed(0);
        sys::llama_turbo_set_calibration_text(std::ptr::null());
    }
    let context = context.map_err(|e| {
        anyhow!(
            "llama.cpp could not create a context of {} tokens with a {} cache: {e}{}",
            settings.n_ctx,
            settings.types,
            quote_problems(logs::problems_since(mark))
        )
    })?;
    let size = KvCacheSize::from_log(&logs::lines_since(mark)).unwrap_or_default();
    Ok((context, size))
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// `MemAvailable` from /proc/meminfo, where there is one.
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn quote_problems(problems: Vec<String>) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!("\nllama.cpp said:\n  {}", problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_weight_buffer_lines() {
        let lines = vec![
            "load_tensors:   CPU_REPACK model buffer size =    50.25 MiB".to_string(),
            "load_tensors: offloaded 0/31 layers to GPU".to_string(),
            "load_tensors:   CPU_Mapped model buffer size =   97.00 MiB".to_string(),
        ];
        assert_eq!(
            WeightBuffer::from_log(&lines),
            [
                WeightBuffer {
                    name: "CPU_REPACK".into(),
                    mib: 50.25
                },
                WeightBuffer {
                    name: "CPU_Mapped".into(),
                    mib: 97.0
                }
            ]
        );
    }

    #[test]
    fn counts_repacked_layouts() {
        let lines = vec![
            "repack: repack tensor blk.0.attn_output.weight with q4_K_8x8".to_string(),
            "repack: repack tensor blk.2.ffn_down.weight with q4_K_8x8".to_string(),
            "repack: repack tensor blk.2.ffn_up.weight with q4_0_8x8".to_string(),
            "load_tensors: done".to_string(),
        ];
        let layouts = repacked_layouts(&lines);
        assert_eq!(layouts.len(), 2);
        assert_eq!(layouts["q4_K_8x8"], 2);
        assert_eq!(layouts["q4_0_8x8"], 1);
    }

    #[test]
    fn reads_kv_size_lines() {
        let lines = vec![
            "llama_kv_cache: bytes: K (f16) = 5898240, V (f16) = 5898240".to_string(),
            "unrelated".to_string(),
            "llama_kv_cache: bytes: K (q8_0) = 100, V (q4_0) = 20".to_string(),
        ];
        let size = KvCacheSize::from_log(&lines).unwrap();
        assert_eq!(
            size,
            KvCacheSize {
                k_bytes: 5898340,
                v_bytes: 5898260
            }
        );
        assert!(KvCacheSize::from_log(&lines[1..2]).is_none());
    }
}
