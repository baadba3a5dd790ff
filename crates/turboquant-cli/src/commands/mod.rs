//! One module per subcommand.

pub mod fetch;
pub mod perplexity;
pub mod run;
