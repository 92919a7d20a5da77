//! `coba-dist`: a thin dispatcher; all logic lives in the library crates and `cli/`.

use std::process::ExitCode;

fn main() -> ExitCode {
    trainer::cli::main()
}
