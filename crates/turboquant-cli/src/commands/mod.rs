//! One module per subcommand.

pub mod bench;
pub mod fetch;
pub mod memory;
pub mod perplexity;
pub mod run;
