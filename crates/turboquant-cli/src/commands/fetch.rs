//! `turboquant fetch`: download model aliases into the cache and print their paths.

use anyhow::{bail, Result};

use crate::models;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Aliases to fetch (default: list them)
    pub aliases: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.aliases.is_empty() {
        for alias in &models::ALIASES {
            println!("{:14} {}", alias.name, alias.description);
        }
        println!("cache: {}", models::cache_dir()?.join("models").display());
        return Ok(());
    }
    for name in &args.aliases {
        if !models::ALIASES
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(name))
        {
            bail!(
                "unknown model alias `{name}`; known: {}",
                models::alias_help()
            );
        }
        println!("{}", models::resolve(name)?.display());
    }
    Ok(())
}
