//! The `gatehouse` binary: a thin CLI over the library crates.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
