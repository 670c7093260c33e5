//! The `duropg-sim` command line.
#![forbid(unsafe_code)]

fn main() {}
