//! `turboquant report`: charts (SVG and PNG) and one self-contained HTML page from the JSON that
//! `perplexity`, `bench`, `fidelity`, `needle` and `memory` write.
//!
//! Each input file is recognised by its fields. The output depends only on the inputs: files are
//! read in name order and every chart and table is drawn in a fixed order, so the same results
//! give the same bytes.

mod html;
mod plots;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use plots::{Chart, Legend, Series};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant report results/ --out report/\n  (then open report/index.html)"
)]
pub struct Args {
    /// JSON result files, or folders to search for them
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Folder for the charts (SVG and PNG) and index.html
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// The results, by kind, each with its model name.
#[derive(Default)]
pub struct Results {
    pub perplexity: Vec<Value>,
    pub bench: Vec<Value>,
    pub fidelity: Vec<Value>,
    pub needle: Vec<Value>,
    pub memory: Vec<Value>,
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?
                {
                    let path = entry?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "json") {
                        files.push(path);
                    }
                }
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        bail!("no JSON result files found");
    }
    Ok(files)
}

fn load(files: &[PathBuf]) -> Result<Results> {
    let mut r = Results::default();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
        if v.get("rows").is_some() && v.get("ctx_size").is_some() {
            r.perplexity.push(v);
        } else if v.get("samples").is_some() {
            r.bench.push(v);
        } else if v.get("by_context").is_some() && v.get("method").is_some() {
            r.fidelity.push(v);
        } else if v.get("trials").is_some() {
            r.needle.push(v);
        } else if v.get("entries").is_some() && v.get("shape").is_some() {
            r.memory.push(v);
        } else {
            eprintln!("skipping {}: not a turboquant result", f.display());
        }
    }
    Ok(r)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("?").to_string()
}

/// A short, file-safe name for a model.
pub fn slug(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("-")
}

/// Every chart the results allow, with a file stem each.
pub fn charts(r: &Results) -> Vec<(String, Chart)> {
    let mut out = Vec::new();

    // compression against bits per value: every cache type seen anywhere is a point
    let mut points: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for p in &r.perplexity {
        for row in p["rows"].as_array().into_iter().flatten() {
            points.insert(
                s(row, "cache"),
                (f(row, &["bits_per_value"]), f(row, &["compression"])),
            );
        }
    }
    for m in &r.memory {
        for e in m["entries"].as_array().into_iter().flatten() {
            points
                .entry(s(e, "cache"))
                .or_insert((f(e, &["bits_per_value"]), f(e, &["compression_vs_f16"])));
        }
    }
    if !points.is_empty() {
        out.push((
            "compression".to_string(),
            Chart {
                title: "Compression against f16 by bits per value".into(),
                x_label: "bits per cached value".into(),
                y_label: "compression (x)".into(),
                x_log: false,
                y_log: false,
                series: vec![
                    Series {
                        name: "16 / bits (ideal)".into(),
                        points: (2..=17).map(|b| (b as f64, 16.0 / b as f64)).collect(),
                        line: true,
                    },
                    Series {
                        name: "cache types (llama.cpp's allocation)".into(),
                        points: points.values().copied().collect(),
                        line: false,
                    },
                ],
                labels: points
                    .iter()
                    .map(|(k, (x, y))| (*x, *y, format!(" {k}")))
                    .collect(),
                front: vec![],
                legend: Legend::UpperRight,
            },
        ));
    }

    // quality against bits: KLD and PPL ratio, one chart each per model, Pareto front drawn
    for p in &r.perplexity {
        let model = s(p, "model");
        let rows: Vec<&Value> = p["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["cache"] != "f16")
            .collect();
        for (stem, title, key, log) in [
            (
                "kld",
                "KL divergence from the f16 cache",
                ["kld", "mean"],
                true,
            ),
            (
                "ppl-ratio",
                "Perplexity / perplexity with f16",
                ["ppl_ratio", "mean"],
                false,
            ),
        ] {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (f(r, &["bits_per_value"]), f(r, &key)))
                .collect();
            out.push((
                format!("{stem}-{}", slug(&model)),
                Chart {
                    title: format!("{title}: {model}"),
                    x_label: "bits per cached value".into(),
                    y_label: if log {
                        "KLD (log scale)".into()
                    } else {
                        "PPL ratio".into()
                    },
                    x_log: false,
                    y_log: log,
                    series: vec![Series {
                        name: "cache types".into(),
                        points: pts.clone(),
                        line: false,
                    }],
                    labels: rows
                        .iter()
                        .zip(&pts)
                        .map(|(r, p)| (p.0, p.1, format!(" {}", s(r, "cache"))))
                        .collect(),
                    front: plots::pareto_front(&pts),
                    legend: Legend::UpperRight,
                },
            ));
        }
    }

    // attention fidelity against bits, by context: one chart per model and metric
    let mut by_model: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for v in &r.fidelity {
        by_model.entry(s(v, "model")).or_default().push(v);
    }
    for (model, reports) in &by_model {
        for (stem, title, key) in [
            (
                "fidelity-cosine",
                "Attention-score cosine similarity",
                "cosine_similarity",
            ),
            ("fidelity-top1", "Top-1 key unchanged (%)", "top1_match_pct"),
        ] {
            let mut pts = Vec::new();
            for rep in reports {
                for (ctx, e) in rep["by_context"].as_object().into_iter().flatten() {
                    pts.push((
                        format!("{} @ {ctx}", s(rep, "method")),
                        f(e, &["bits_per_value"]),
                        f(e, &[key]),
                    ));
                }
            }
            out.push((
                format!("{stem}-{}", slug(model)),
                Chart {
                    title: format!("{title} by bits and context: {model}"),
                    x_label: "bits per key value".into(),
                    y_label: key.replace('_', " "),
                    x_log: false,
                    y_log: false,
                    series: plots::group(pts, true),
                    labels: vec![],
                    front: vec![],
                    legend: Legend::LowerRight,
                },
            ));
        }
    }

    // KV memory against context length per type
    for m in &r.memory {
        let model = s(m, "model");
        let pts = m["entries"].as_array().into_iter().flatten().map(|e| {
            (
                s(e, "cache"),
                f(e, &["ctx_size"]),
                f(e, &["total_bytes"]) / (1024.0 * 1024.0),
            )
        });
        out.push((
            format!("memory-{}", slug(&model)),
            Chart {
                title: format!("KV-cache memory by context length: {model}"),
                x_label: "context (tokens, log scale)".into(),
                y_label: "KV cache (MiB, log scale)".into(),
                x_log: true,
                y_log: true,
                series: plots::group(pts, true),
                labels: vec![],
                front: vec![],
                legend: Legend::UpperLeft,
            },
        ));
    }

    // tokens per second against depth per type
    for b in &r.bench {
        let model = s(b, "model");
        let pts = b["samples"].as_array().into_iter().flatten().map(|x| {
            (
                format!("{} {}", s(x, "cache"), s(x, "test")),
                f(x, &["depth"]),
                f(x, &["mean"]),
            )
        });
        out.push((
            format!("speed-{}-{}", slug(&model), slug(&s(b, "backend"))),
            Chart {
                title: format!("Tokens per second by depth: {model}"),
                x_label: "depth (tokens already in the cache)".into(),
                y_label: "tokens per second".into(),
                x_log: false,
                y_log: false,
                series: plots::group(pts, true),
                labels: vec![],
                front: vec![],
                legend: Legend::UpperRight,
            },
        ));
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    let files = collect(&args.results)?;
    let results = load(&files)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let charts = charts(&results);
    if charts.is_empty() {
        bail!("the results hold nothing to draw");
    }
    let mut drawn = Vec::new();
    for (stem, chart) in &charts {
        let svg = plots::svg(chart).with_context(|| format!("drawing {stem}"))?;
        write(&args.out.join(format!("{stem}.svg")), svg.as_bytes())?;
        write(&args.out.join(format!("{stem}.png")), &plots::png(&svg)?)?;
        drawn.push((stem.clone(), chart.title.clone(), svg));
    }
    let page = html::page(&results, &drawn);
    write(&args.out.join("index.html"), page.as_bytes())?;
    println!(
        "{} charts from {} result files: {}",
        drawn.len(),
        files.len(),
        args.out.join("index.html").display()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
