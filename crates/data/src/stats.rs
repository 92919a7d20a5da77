//! `data stats`: per-task counts as a serializable report.
//!
//! ```no_run
//! use data::{config::{DataConfig, TaskSpec}, stats::stats};
//! let cfg = DataConfig::with_tasks(vec![TaskSpec { name: "seed".into(), paths: vec!["data/mftcoder-format".into()] }]);
//! let report = stats(&cfg, "data/tokenizers/smollm2/tokenizer.json".as_ref()).unwrap();
//! println!("{}", serde_json::to_string(&report).unwrap()); // {"tasks": [{"name", "train", "valid", "test", ...}], ...}
//! print!("{}", report.table());
//! ```

use crate::config::DataConfig;
use crate::dataset::{load_with, Dataset, Needs, TaskStats};
use crate::format::Split;
use crate::mixing::probabilities;
use crate::tokenize::Encoder;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One task's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Counts (flattened: `name`, `train`, `valid`, `test`, `skipped`, ...).
    #[serde(flatten)]
    pub stats: TaskStats,
    /// Total lines skipped (all reasons).
    pub skipped_total: usize,
    /// Training mixing probability under the configured mixing.
    pub mixing_probability: f64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Per task, in task-id order.
    pub tasks: Vec<TaskReport>,
    /// `max_seq_len` used for truncation.
    pub max_seq_len: usize,
    /// Tokenizer file.
    pub tokenizer: String,
    /// One line per task and split that holds no samples (see [`warnings`]), without the
    /// `warning: ` prefix.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Loads every task of `cfg` with the tokenizer at `tokenizer` and reports. A task reduced to
/// zero samples (in one split or all) is reported with zero counts and a warning, not an
/// error ([`Needs::Nothing`]).
///
/// # Errors
/// Bad input, IO and tokenizer errors (see [`crate::DataError`]).
pub fn stats(cfg: &DataConfig, tokenizer: &Path) -> Result<StatsReport> {
    let enc = Encoder::from_file(tokenizer, &cfg.template)?;
    let ds = load_with(cfg, &enc, Needs::Nothing)?;
    Ok(report(cfg, &ds, tokenizer))
}

/// Warnings for `st`: one per split left without samples when training needs it (train,
/// valid) or when it had records that were all dropped (any split).
pub fn warnings(st: &TaskStats) -> Vec<String> {
    let mut out = Vec::new();
    if st.train + st.valid + st.test == 0 {
        out.push(format!(
            "task `{}` reduced to zero samples: {} lines, {} skipped, {} records, {} dropped \
             ({} overlong, {} without a loss token)",
            st.name,
            st.lines,
            st.skipped_total(),
            st.records.total(),
            st.dropped,
            st.dropped_overlong,
            st.dropped_no_loss_token
        ));
        return out;
    }
    for split in Split::ALL {
        let (kept, records) = (st.kept(split), st.records.get(split));
        if kept > 0 || (split == Split::Test && records == 0) {
            continue;
        }
        let why = if split == Split::Test {
            String::new()
        } else {
            format!(" (training needs {} samples)", split.name())
        };
        out.push(format!(
            "task `{}` has 0 {} samples left of {} {} records{}",
            st.name,
            split.name(),
            records,
            split.name(),
            why
        ));
    }
    out
}

/// The report for an already loaded dataset.
pub fn report(cfg: &DataConfig, ds: &Dataset, tokenizer: &Path) -> StatsReport {
    let n: Vec<usize> = ds.tasks.iter().map(|t| t.train.len()).collect();
    // No train sample in any task: no mixing (0/0), reported as 0.
    let p = probabilities(cfg.mixing, &n)
        .into_iter()
        .map(|p| if p.is_finite() { p } else { 0.0 });
    StatsReport {
        tasks: ds
            .tasks
            .iter()
            .zip(p)
            .map(|(t, p)| TaskReport {
                skipped_total: t.stats.skipped.values().sum(),
                stats: t.stats.clone(),
                mixing_probability: p,
            })
            .collect(),
        max_seq_len: ds.max_seq_len,
        tokenizer: tokenizer.display().to_string(),
        warnings: ds.tasks.iter().flat_map(|t| warnings(&t.stats)).collect(),
    }
}

impl StatsReport {
    /// Pretty-printed JSON (`{"tasks": [{"name", "train", "valid", "test", ...}], ...}`).
    pub fn to_json_pretty(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A human-readable table, one line per task: samples kept per split (`carved` of the
    /// valid ones carved out of train), tokens, longest sample, truncated, dropped by reason
    /// (`drop_long`: overlong under `overlong = "drop"`, `drop_noloss`: no loss token), lines
    /// skipped (total, then `reason=count` per reason), mixing probability; then one
    /// `warning: ` line per [`StatsReport::warnings`] entry.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:>7} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>9} {:>11} {:>5} {:>6}  {}\n",
            "task",
            "train",
            "valid",
            "test",
            "carved",
            "prompt_tok",
            "compl_tok",
            "longest",
            "trunc",
            "drop_long",
            "drop_noloss",
            "skip",
            "p_mix",
            "skipped_by_reason"
        );
        for t in &self.tasks {
            let st = &t.stats;
            let reasons = if st.skipped.is_empty() {
                "-".to_string()
            } else {
                st.skipped
                    .iter()
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            s.push_str(&format!(
                "{:<20} {:>7} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>9} {:>11} {:>5} {:>6.3}  {}\n",
                st.name,
                st.train,
                st.valid,
                st.test,
                st.carved_valid,
                st.prompt_tokens,
                st.completion_tokens,
                st.longest_sample,
                st.truncated,
                st.dropped_overlong,
                st.dropped_no_loss_token,
                t.skipped_total,
                t.mixing_probability,
                reasons
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}
