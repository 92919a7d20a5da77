//! `coba-dist bench-step`: the training-step benchmark of [`crate::bench_step`] in the shipped
//! binary, so that a GPU machine without Rust can run it (`scripts/bench-gpu.sh`).

use super::ExitError;
use clap::Args;

/// Flags of [`crate::bench_step::parse`] (`--help` lists them).
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchStepArgs {
    /// `--key value` pairs, e.g. `--device cuda --dtype bf16 --d 576 --layers 30`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    flags: Vec<String>,
}

/// Parses the flags, runs the benchmark and prints its line.
///
/// # Errors
/// Exit code 2 for a bad flag, 1 when the run fails (e.g. out of GPU memory).
pub fn run(args: &BenchStepArgs) -> Result<(), ExitError> {
    let parsed =
        crate::bench_step::parse(&args.flags).map_err(|error| ExitError { code: 2, error })?;
    let Some(bench) = parsed else {
        print!("{}", crate::bench_step::usage());
        return Ok(());
    };
    let (device, name) = crate::train::device::select(bench.device, 0)
        .map_err(|error| ExitError { code: 2, error })?;
    let line = crate::bench_step::run_on(&bench, &device, &name)
        .map_err(|error| ExitError { code: 1, error })?;
    println!("{line}");
    Ok(())
}
