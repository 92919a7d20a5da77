//! The command line: one subcommand per module, parsed by clap, run by [`main`].

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench_step;
mod compare;
mod data;
mod doctor;
mod eval;
mod eval_exec;
mod generate;
mod merge;
mod model_path;
mod parity;
mod plot;
mod replay;
pub mod train;

/// Multi-task fine-tuning with CoBa (Convergence Balancer), data parallel over MPI/NCCL.
#[derive(Debug, Parser)]
#[command(
    name = "coba-dist",
    version,
    about = "Multi-task LLM fine-tuning with CoBa (convergence-balanced task weights), data \
             parallel over MPI. Without a subcommand: train (`coba-dist --config F`; no \
             --config runs the embedded configs/demo.toml from the repository root).",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: train (same as `coba-dist train`).
    #[command(flatten)]
    train: train::TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train: `coba-dist train --config F` (the default command).
    Train(train::TrainArgs),
    /// Validate a configuration without training (missing data paths are warnings).
    Check(train::CheckArgs),
    /// Run the same job once per weighting method and compare per-task validation ratios.
    Compare(compare::CompareArgs),
    /// Replay logged validation-loss curves through a weighting method and print the weights.
    Replay(replay::ReplayArgs),
    /// Inspect training data: `data stats` prints per-task sample and token counts.
    Data(data::DataArgs),
    /// Check the data-parallel setup: ranks, collectives, all-reduce bandwidth (run it under
    /// the training launcher, e.g. `mpirun -n 4 coba-dist doctor`).
    Doctor(doctor::DoctorArgs),
    /// Per-task mean NLL, perplexity and token count of a model on a split, or with
    /// `--metrics pass@1,accuracy` Pass@1 by running the generated programs' unit tests and
    /// GSM8K accuracy (sharded under mpirun).
    Eval(Box<eval::EvalArgs>),
    /// Generate a completion for one prompt (chat template or --raw), printed on stdout.
    Generate(generate::GenerateArgs),
    /// Draw a run's metrics.jsonl as PNG charts (loss ratios, weights, DF, train loss).
    Plot(plot::PlotArgs),
    /// Merge LoRA adapters (a PEFT directory, e.g. a LoRA run's best/) into their base model
    /// and write a full HF model.
    Merge(merge::MergeArgs),
    /// Time one training step of a random Llama (forward, backward, AdamW) on a fixed batch:
    /// tokens/s, GFLOP/s, MFU, memory (`bench-step --help` lists the flags).
    BenchStep(bench_step::BenchStepArgs),
    /// Compare a model on a device (GPU) with the CPU: logits, gradients, bf16 NLL (JSON; the
    /// device check scripts/gpu-check.sh judges it).
    Parity(parity::ParityArgs),
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
    init_logging();
    let result = match cli.command {
        None => train::run(&cli.train),
        Some(command) => run_command(command),
    };
    finish(result)
}

fn run_command(command: Command) -> Result<(), ExitError> {
    match command {
        Command::Replay(args) => replay::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Check(args) => train::check(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Parity(args) => parity::run(&args),
        Command::BenchStep(args) => bench_step::run(&args),
    }
}

/// Human log lines on stderr (`RUST_LOG` filters; default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// An error already printed (by rank 0 for every rank): exit with its code, print nothing.
#[derive(Debug, thiserror::Error)]
#[error("error already reported")]
pub struct Reported;

/// Prints `coba-dist: error: <chain>` on stderr, flushed.
pub fn print_error(e: &anyhow::Error) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "coba-dist: error: {e:#}");
    let _ = err.flush();
}

fn finish(result: Result<(), ExitError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e.error) => ExitCode::SUCCESS,
        Err(e) => {
            if e.error.downcast_ref::<Reported>().is_none() {
                print_error(&e.error);
            }
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
