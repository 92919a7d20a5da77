//! `coba-dist replay`: logged validation curves in, per-step task weights out (CSV on stdout).

use super::ExitError;
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
    /// CoBa variant: `mftcoder` (MFTCoder's official code) or `paper` (Eq. 6, DF clamped to 1).
    #[arg(long)]
    variant: Option<VariantArg>,
    /// W: steps before the first computation.
    #[arg(long, value_name = "W", default_value_t = 100)]
    warmup_steps: u64,
    /// H: probes in the slope window (CoBa only).
    #[arg(long, value_name = "H")]
    history_length: Option<usize>,
    /// τ: temperature of the divergence factor (CoBa only).
    #[arg(long, value_name = "T")]
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
    };
    let path = &args.losses;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(bad_input)?;
    let curves = crate::replay::Curves::parse(&text)
        .with_context(|| format!("{}", path.display()))
        .map_err(bad_input)?;
    let steps = crate::replay::replay(&curves, &config)
        .with_context(|| format!("{}", path.display()))
        .map_err(bad_input)?;
    let csv = crate::replay::render_csv(&curves.tasks, &steps, args.explain);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(csv.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(|error| ExitError { code: 1, error })
}
