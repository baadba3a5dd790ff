//! `turboquant document`: prints the built-in long document (made-up towns, no two paragraphs
//! alike) that `fidelity` and `needle` read, for use as a prompt or a text to score anywhere.

use anyhow::{bail, Result};

use crate::document;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Approximate length in bytes
    #[arg(long, default_value_t = 100_000)]
    pub bytes: usize,
    /// Hide the passphrase sentence at this depth (0 = start, 1 = end)
    #[arg(long)]
    pub needle: Option<f64>,
    /// Seed of the generator (the same seed gives the same text)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    if args.needle.is_some_and(|d| !(0.0..=1.0).contains(&d)) {
        bail!("--needle is a depth between 0 and 1");
    }
    print!(
        "{}",
        document::build(args.seed, args.needle, |t| t.len() <= args.bytes)
    );
    Ok(())
}
