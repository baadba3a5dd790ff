//! `turboquant validate`: the paper's synthetic results, reproduced by the Rust core on random
//! unit vectors: distortion against bits, and needle retrieval from a compressed set of keys.

use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use turboquant::rotation::RotationKind;
use turboquant::{needle_retrieval, validate, ValidationConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Vector dimension
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Random unit vectors measured
    #[arg(long, default_value_t = 4000)]
    pub vectors: usize,
    /// Use the randomized Hadamard rotation instead of a dense random rotation
    #[arg(long)]
    pub hadamard: bool,
    /// Seed of the rotations and the data
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let config = ValidationConfig {
        dim: args.dim,
        vectors: args.vectors,
        bits: vec![1, 2, 3, 4],
        rotation: if args.hadamard {
            RotationKind::Hadamard
        } else {
            RotationKind::Dense
        },
        seed: args.seed,
    };
    let rows = validate(&config)?;
    println!(
        "TurboQuant on {} random unit vectors in dimension {} ({} rotation)",
        args.vectors,
        args.dim,
        if args.hadamard {
            "randomized Hadamard"
        } else {
            "dense random"
        }
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "bits",
        "MSE (mse)",
        "theory",
        "paper",
        "d·IP error (prod)",
        "theory",
        "paper",
        "bias (prod)",
        "bias (mse)",
    ]);
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}"));
    for r in &rows {
        table.add_row(vec![
            Cell::new(r.bits),
            Cell::new(format!("{:.4}", r.mse)),
            Cell::new(format!("{:.4}", r.mse_theory)),
            Cell::new(opt(r.mse_paper)),
            Cell::new(format!("{:.3}", r.ip_distortion)),
            Cell::new(format!("{:.3}", r.ip_theory)),
            Cell::new(opt(r.ip_paper)),
            Cell::new(format!("{:+.4}", r.prod_bias)),
            Cell::new(format!("{:+.4}", r.mse_bias)),
        ]);
    }
    right_align(&mut table);
    println!("{table}");

    let needles = needle_retrieval(&config, 2048, 64, 0.5)?;
    println!(
        "needle retrieval: one key at cosine 0.5 with the query among 2048 random keys, 64 queries"
    );
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["bits", "found (mse)", "found (prod)"]);
    for r in &needles {
        table.add_row(vec![
            Cell::new(r.bits),
            Cell::new(format!("{:.0}%", 100.0 * r.mse_found)),
            Cell::new(format!("{:.0}%", 100.0 * r.prod_found)),
        ]);
    }
    right_align(&mut table);
    println!("{table}");
    Ok(())
}

fn right_align(table: &mut Table) {
    for i in 0..table.column_count() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}
