//! One module per subcommand.

pub mod backend_check;
pub mod bench;
pub mod document;
pub mod fetch;
pub mod fidelity;
pub mod memory;
pub mod needle;
pub mod perplexity;
pub mod report;
pub mod run;
pub mod serve;
pub mod synth;
pub mod validate;
