//! The report page: every chart inline (SVG) and every result as a table, in one HTML file that
//! needs nothing else.

use std::fmt::Write as _;

use serde_json::Value;

use super::{f, s, Results};

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table(out: &mut String, caption: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

fn command(out: &mut String, v: &Value) {
    if let Some(c) = v["command"].as_str() {
        let _ = writeln!(out, "<p class=\"cmd\"><code>{}</code></p>", esc(c));
    }
}

pub fn page(r: &Results, charts: &[(String, String, String)]) -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>TurboQuant KV cache: results</title><style>\
         body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
         h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}\
         table{border-collapse:collapse;margin:1em 0;font-size:.9em}caption{text-align:left;font-weight:600;margin-bottom:.3em}\
         th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}\
         td:first-child,th:first-child{text-align:left}figure{margin:1em 0}figcaption{color:#555}\
         .cmd code{font-size:.8em;color:#555;word-break:break-all}svg{max-width:100%;height:auto}\
         </style></head><body>\n<h1>TurboQuant KV cache: results</h1>\n",
    );

    out.push_str("<h2>Charts</h2>\n");
    for (stem, title, svg) in charts {
        let _ = writeln!(
            out,
            "<figure id=\"{}\">{}<figcaption>{}</figcaption></figure>",
            esc(stem),
            svg,
            esc(title)
        );
    }

    if !r.perplexity.is_empty() {
        out.push_str("<h2>Perplexity and distance from the f16 cache</h2>\n");
    }
    for p in &r.perplexity {
        let rows: Vec<Vec<String>> = p["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                vec![
                    s(row, "cache"),
                    format!("{:.2}", f(row, &["bits_per_value"])),
                    format!("{:.2}", f(row, &["kv_mib"])),
                    format!("{:.2}x", f(row, &["compression"])),
                    format!(
                        "{:.3} ± {:.3}",
                        f(row, &["ppl", "mean"]),
                        f(row, &["ppl", "stderr"])
                    ),
                    format!("{:.4}", f(row, &["ppl_ratio", "mean"])),
                    format!(
                        "{:.4} ± {:.4}",
                        f(row, &["kld", "mean"]),
                        f(row, &["kld", "stderr"])
                    ),
                    format!("{:.1}", f(row, &["top1_pct"])),
                ]
            })
            .collect();
        let caption = format!(
            "{}: {} chunks of {} tokens",
            s(p, "model"),
            p["chunks"].as_u64().unwrap_or(0),
            p["ctx_size"].as_u64().unwrap_or(0)
        );
        table(
            &mut out,
            &caption,
            &[
                "cache",
                "bits/value",
                "KV MiB",
                "compression",
                "PPL",
                "PPL ratio",
                "KLD",
                "top-1 %",
            ],
            &rows,
        );
        command(&mut out, p);
    }

    if !r.bench.is_empty() {
        out.push_str("<h2>Speed</h2>\n");
    }
    for b in &r.bench {
        let rows: Vec<Vec<String>> = b["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    s(x, "cache"),
                    s(x, "test"),
                    format!("{}", x["depth"].as_u64().unwrap_or(0)),
                    format!("{:.1} ± {:.1}", f(x, &["mean"]), f(x, &["stdev"])),
                    x["ratio_vs_f16"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{r:.2}x")),
                ]
            })
            .collect();
        let caption = format!("{} on {}", s(b, "model"), s(b, "backend"));
        table(
            &mut out,
            &caption,
            &["cache", "test", "depth", "tokens/s", "vs f16"],
            &rows,
        );
        command(&mut out, b);
    }

    if !r.fidelity.is_empty() {
        out.push_str("<h2>Attention-score fidelity</h2>\n");
    }
    let mut models: Vec<String> = r.fidelity.iter().map(|v| s(v, "model")).collect();
    models.dedup();
    for model in models {
        let rows: Vec<Vec<String>> = r
            .fidelity
            .iter()
            .filter(|v| s(v, "model") == model)
            .flat_map(|v| {
                v["by_context"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(ctx, e)| {
                        vec![
                            s(v, "method"),
                            format!("{}", f(v, &["bits"])),
                            ctx.clone(),
                            format!("{:.2}x", f(e, &["compression_ratio"])),
                            format!("{:.4}", f(e, &["cosine_similarity"])),
                            format!("{:.1}", f(e, &["top1_match_pct"])),
                            format!("{:.1}", f(e, &["top5_match_pct"])),
                            format!("{:.1}", f(e, &["heads_at_risk_pct"])),
                        ]
                    })
            })
            .collect();
        table(
            &mut out,
            &model,
            &[
                "method",
                "bits",
                "context",
                "compression",
                "cosine",
                "top-1 %",
                "top-5 %",
                "heads at risk %",
            ],
            &rows,
        );
    }

    if !r.needle.is_empty() {
        out.push_str("<h2>Needle in a haystack</h2>\n");
    }
    for n in &r.needle {
        let title = format!("{}: \"{}\"", s(n, "model"), s(n, "needle"));
        match n["summary"].as_array() {
            // several trials per cell: pass rates with their intervals, not hundreds of rows
            Some(cells) => {
                let rows: Vec<Vec<String>> = cells
                    .iter()
                    .map(|c| {
                        vec![
                            s(c, "cache"),
                            format!("{}", c["context"].as_u64().unwrap_or(0)),
                            c["depth"]
                                .as_f64()
                                .map_or("all".to_string(), |d| format!("{d}")),
                            format!(
                                "{}/{}",
                                c["passed"].as_u64().unwrap_or(0),
                                c["trials"].as_u64().unwrap_or(0)
                            ),
                            format!(
                                "{:.0}-{:.0}%",
                                100.0 * c["ci95"][0].as_f64().unwrap_or(f64::NAN),
                                100.0 * c["ci95"][1].as_f64().unwrap_or(f64::NAN)
                            ),
                            format!("{:.0}%", 100.0 * f(c, &["partial_match"])),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &title,
                    &[
                        "cache",
                        "context",
                        "depth",
                        "passed",
                        "95% interval",
                        "partial",
                    ],
                    &rows,
                );
            }
            None => {
                let rows: Vec<Vec<String>> = n["trials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            s(t, "cache"),
                            format!("{}", t["context"].as_u64().unwrap_or(0)),
                            format!("{}", f(t, &["depth"])),
                            if t["exact_match"].as_bool().unwrap_or(false) {
                                "pass".into()
                            } else {
                                "fail".into()
                            },
                            format!("{:.0}%", 100.0 * f(t, &["partial_match"])),
                            s(t, "answer"),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &title,
                    &["cache", "context", "depth", "exact", "partial", "answer"],
                    &rows,
                );
            }
        }
        command(&mut out, n);
    }

    if !r.memory.is_empty() {
        out.push_str("<h2>KV-cache memory</h2>\n");
    }
    for m in &r.memory {
        let rows: Vec<Vec<String>> = m["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    s(e, "cache"),
                    format!("{}", e["ctx_size"].as_u64().unwrap_or(0)),
                    format!("{:.2}", f(e, &["total_bytes"]) / (1024.0 * 1024.0)),
                    format!("{:.2}x", f(e, &["compression_vs_f16"])),
                    if e["llama_cpp_bytes"].is_null() {
                        "-".into()
                    } else {
                        "matches".into()
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &s(m, "model"),
            &["cache", "context", "MiB", "compression", "llama.cpp"],
            &rows,
        );
        command(&mut out, m);
    }
    out.push_str("</body></html>\n");
    out
}
