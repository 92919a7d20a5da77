//! `coba-dist plot RUN_DIR`: PNG charts of a run's `metrics.jsonl` (validation-loss ratios, raw
//! and min-max normalized, task weights, DF, training losses); prints the paths it wrote.

use super::ExitError;
use crate::plot::draw::{self, PlotOptions};
use crate::plot::RunMetrics;
use anyhow::{anyhow, Context};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Draw a run's metrics as PNG charts.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The run directory: the one holding `metrics.jsonl`.
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// Where to write the PNGs (created if missing) [default: RUN_DIR/plots].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(200..=10_000))]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(150..=10_000))]
    height: u32,
}

fn bad_input(error: anyhow::Error) -> ExitError {
    ExitError { code: 2, error }
}

fn failed(error: anyhow::Error) -> ExitError {
    ExitError { code: 1, error }
}

/// Reads `RUN_DIR/metrics.jsonl`, writes the charts and prints their paths, one per line.
///
/// # Errors
/// Exit code 2 for a missing run directory or metrics file and a malformed line (the message
/// names the file and line); 1 when the output directory or a chart cannot be written.
pub fn run(args: &PlotArgs) -> Result<(), ExitError> {
    let dir = &args.run_dir;
    if !dir.is_dir() {
        let why = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(bad_input(anyhow!("run directory {} {why}", dir.display())));
    }
    let metrics_path = dir.join("metrics.jsonl");
    let metrics = RunMetrics::read(&metrics_path).map_err(bad_input)?;
    if let Some(line) = metrics.truncated_line {
        eprintln!(
            "coba-dist: warning: {}: line {line}: ignored a truncated last line (the run was \
             interrupted while writing it?)",
            metrics_path.display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| dir.join("plots"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create {}", out.display()))
        .map_err(failed)?;
    let label = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let opts = PlotOptions {
        width: args.width,
        height: args.height,
        label,
    };
    let written = draw::write_plots(&metrics, &out, &opts).map_err(failed)?;
    let mut stdout = std::io::stdout().lock();
    written
        .iter()
        .try_for_each(|p| writeln!(stdout, "{}", p.display()))
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(failed)
}
