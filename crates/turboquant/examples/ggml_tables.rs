//! Prints the C tables of the turbo2/turbo3/turbo4 ggml types (the overlay's
//! `ggml/src/ggml-turbo-tables.h`), generated from the Rust reference.

fn main() {
    print!("{}", turboquant::block::c_header());
}
