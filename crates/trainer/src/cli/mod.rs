//! The command line: one subcommand per module, parsed by clap, run by [`main`].

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod data;
mod doctor;
mod replay;

/// Multi-task fine-tuning with CoBa (Convergence Balancer), data parallel over MPI/NCCL.
#[derive(Debug, Parser)]
#[command(name = "coba-dist", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay logged validation-loss curves through a weighting method and print the weights.
    Replay(replay::ReplayArgs),
    /// Inspect training data: `data stats` prints per-task sample and token counts.
    Data(data::DataArgs),
    /// Check the data-parallel setup: ranks, collectives, all-reduce bandwidth (run it under
    /// the training launcher, e.g. `mpirun -n 4 coba-dist doctor`).
    Doctor(doctor::DoctorArgs),
}

/// An error that maps to a specific exit code (2 = bad input, as the CLI contract says).
#[derive(Debug)]
pub struct ExitError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong (printed with its chain).
    pub error: anyhow::Error,
}

/// Parses the arguments, runs the subcommand, prints any error chain to stderr and returns the
/// exit code: 0 on success, 2 for bad input, 1 otherwise. A closed stdout (`| head`) is success.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => replay::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Doctor(args) => doctor::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e.error) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coba-dist: error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
