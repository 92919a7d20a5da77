//! `coba-dist data stats`: per-task sample and token counts of a data setup (see the `data`
//! crate's `stats` module), as a table or, with `--json`, `{"tasks": [{"name", "train",
//! "valid", "test", ...}], "warnings": [...], ...}`. A task reduced to zero samples is
//! reported (with a `warning:` line under the table), not an error.

use super::ExitError;
use ::data::config::{DataConfig, OnBadLine, TemplatePreset};
use anyhow::anyhow;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// Inspect training data.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Per task: samples kept per split, prompt/completion tokens, longest sample,
    /// truncated, dropped by reason, skipped by reason, mixing probability.
    Stats(StatsArgs),
}

/// Arguments of `data stats`: either `--config F [--set KEY=VALUE...]` or
/// `--tokenizer T --task NAME=PATH...`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A training configuration: its tokenizer, tasks and `[data]` settings (other flags
    /// except --set and --json are ignored).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tokenizer", "tasks"])]
    config: Option<PathBuf>,
    /// Override one key of --config, e.g. `--set data.max_seq_len=512` (repeatable; as for
    /// training: wins over the file and COBA_* environment variables).
    #[arg(
        long = "set",
        value_name = "KEY=VALUE",
        requires = "config",
        conflicts_with_all = ["tokenizer", "tasks"]
    )]
    set: Vec<String>,
    /// tokenizer.json (e.g. data/tokenizers/smollm2/tokenizer.json).
    #[arg(long, value_name = "T", required_unless_present = "config")]
    tokenizer: Option<PathBuf>,
    /// A task: NAME=PATH (a .jsonl/.jsonl.gz file or a directory); repeat for more tasks, or
    /// repeat a NAME to give it several paths.
    #[arg(
        long = "task",
        value_name = "NAME=PATH",
        required_unless_present = "config"
    )]
    tasks: Vec<String>,
    /// Positions per row; longer samples are truncated.
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// Prompt template preset: chatml or mftcoder.
    #[arg(long, default_value = "chatml", value_parser = ["chatml", "mftcoder"])]
    template: String,
    /// Skip malformed lines (counted per reason) instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `data <subcommand>`. Exit code 2 for bad data, settings or tokenizer; 1 for a failed
/// write.
pub fn run(args: &DataArgs) -> Result<(), ExitError> {
    match &args.command {
        DataCommand::Stats(a) => stats(a),
    }
}

fn bad_input(error: impl Into<anyhow::Error>) -> ExitError {
    ExitError {
        code: 2,
        error: error.into(),
    }
}

fn stats(args: &StatsArgs) -> Result<(), ExitError> {
    let (cfg, tokenizer) = match (&args.config, &args.tokenizer) {
        (Some(path), _) => {
            let train = super::train::load_config(Some(path), &args.set)?;
            (train.data_config(), train.model.tokenizer)
        }
        (None, Some(tokenizer)) => {
            let mut cfg = DataConfig::from_task_args(&args.tasks).map_err(bad_input)?;
            cfg.max_seq_len = args.max_seq_len;
            cfg.template.preset = match args.template.as_str() {
                "mftcoder" => TemplatePreset::Mftcoder,
                _ => TemplatePreset::Chatml,
            };
            if args.skip_bad_lines {
                cfg.on_bad_line = OnBadLine::Skip;
            }
            (cfg, tokenizer.clone())
        }
        (None, None) => return Err(bad_input(anyhow!("give --config F or --tokenizer T"))),
    };
    let report = ::data::stats::stats(&cfg, &tokenizer).map_err(bad_input)?;
    let text = if args.json {
        report.to_json_pretty() + "\n"
    } else {
        report.table()
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| ExitError {
            code: 1,
            error: anyhow!(e).context("writing to stdout"),
        })
}
