//! `coba-dist replay`: logged validation curves in, per-step task weights out (CSV on stdout).

use super::ExitError;
use crate::replay::{self, Curves};
use anyhow::{anyhow, Context};
use clap::Args;
use coba::{MethodKind, Variant, WeighterConfig};
use std::io::Write;
use std::path::PathBuf;

/// Replay logged validation-loss curves through a weighting method.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// CSV `step,<task>,...`: row 0 = initial validation losses, row c = losses after step c's
    /// update; an empty cell = task not measured in that probe.
    #[arg(long, value_name = "CSV")]
    losses: PathBuf,
    /// Weighting method.
    #[arg(long, default_value = "coba", value_parser = clap::value_parser!(MethodKindArg))]
    method: MethodKindArg,
    /// CoBa variant: `mftcoder` (MFTCoder's official code) or `paper` (Eq. 6, DF clamped to 1)
    /// [default: mftcoder].
    #[arg(long)]
    variant: Option<VariantArg>,
    /// W: steps before the first computation.
    #[arg(long, value_name = "W", default_value_t = 100)]
    warmup_steps: u64,
    /// H: probes in the slope window (CoBa only) [default: 200].
    #[arg(long, value_name = "H")]
    history_length: Option<usize>,
    /// τ: temperature of the divergence factor, 0 < τ <= 1e6 (CoBa only) [default: 5].
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    tau: Option<f64>,
    /// U: compute weights and probe every U steps.
    #[arg(long, value_name = "U", default_value_t = 1)]
    update_interval: u64,
    /// Append CoBa's intermediates: df, total_slope, rcs_*, acs_*, slope_* (CoBa only).
    #[arg(long)]
    explain: bool,
}

/// `MethodKind` for clap (parsed with its `FromStr`).
#[derive(Debug, Clone, Copy)]
struct MethodKindArg(MethodKind);

impl std::str::FromStr for MethodKindArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(MethodKindArg)
    }
}

/// `Variant` for clap.
#[derive(Debug, Clone, Copy)]
struct VariantArg(Variant);

impl std::str::FromStr for VariantArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(VariantArg)
    }
}

fn bad_input(error: anyhow::Error) -> ExitError {
    ExitError { code: 2, error }
}

/// Runs the replay; prints nothing on stdout unless the whole replay succeeds.
///
/// # Errors
/// Exit code 2 for an unreadable or malformed file and invalid settings; 1 for a failed write.
pub fn run(args: &ReplayArgs) -> Result<(), ExitError> {
    let method = args.method.0;
    if method == MethodKind::Gradnorm {
        return Err(bad_input(anyhow!(
            "--method gradnorm needs each task's head gradient norm per step, which a loss \
             file does not hold: train with coba.method = \"gradnorm\" (metrics.jsonl logs \
             head_grad_norm) instead"
        )));
    }
    let defaults = WeighterConfig::default();
    if method != MethodKind::Coba {
        let coba_only = [
            ("--variant", args.variant.is_some()),
            ("--history-length", args.history_length.is_some()),
            ("--tau", args.tau.is_some()),
            ("--explain", args.explain),
        ];
        if let Some((flag, _)) = coba_only.iter().find(|(_, set)| *set) {
            return Err(bad_input(anyhow!(
                "{flag} applies to --method coba only (got --method {method})"
            )));
        }
    }
    let config = WeighterConfig {
        method,
        variant: args.variant.map_or(defaults.variant, |v| v.0),
        warmup_steps: args.warmup_steps,
        history_length: args.history_length.unwrap_or(defaults.history_length),
        tau: args.tau.unwrap_or(defaults.tau),
        update_interval: args.update_interval,
        // The replayed curves are whatever the file holds.
        signal: defaults.signal,
    };
    let path = &args.losses;
    let located =
        |e: crate::replay::ReplayError| bad_input(anyhow!(e).context(path.display().to_string()));
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(bad_input)?;
    let curves = Curves::parse_bytes(&bytes).map_err(located)?;
    replay::check_output_columns(&curves.tasks, args.explain).map_err(located)?;
    // Rendered in memory: on error nothing reaches stdout.
    let k = curves.tasks.len();
    let mut csv = replay::csv_header(&curves.tasks, args.explain).join(",");
    csv.push('\n');
    replay::replay(&curves, &config, |s| {
        replay::write_csv_row(&mut csv, s, k, args.explain)
    })
    .map_err(located)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(csv.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(|error| ExitError { code: 1, error })
}
