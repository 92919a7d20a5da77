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
use crate::dataset::{load, Dataset, TaskStats};
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
}

/// Loads every task of `cfg` with the tokenizer at `tokenizer` and reports.
pub fn stats(cfg: &DataConfig, tokenizer: &Path) -> Result<StatsReport> {
    let enc = Encoder::from_file(tokenizer, &cfg.template)?;
    let ds = load(cfg, &enc)?;
    Ok(report(cfg, &ds, tokenizer))
}

/// The report for an already loaded dataset.
pub fn report(cfg: &DataConfig, ds: &Dataset, tokenizer: &Path) -> StatsReport {
    let n: Vec<usize> = ds.tasks.iter().map(|t| t.train.len()).collect();
    let p = probabilities(cfg.mixing, &n);
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
    }
}

impl StatsReport {
    /// Pretty-printed JSON (`{"tasks": [{"name", "train", "valid", "test", ...}], ...}`).
    pub fn to_json_pretty(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A human-readable table, one line per task.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:>7} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>5} {:>5} {:>6}\n",
            "task",
            "train",
            "valid",
            "test",
            "carved",
            "prompt_tok",
            "compl_tok",
            "longest",
            "trunc",
            "drop",
            "skip",
            "p_mix"
        );
        for t in &self.tasks {
            let st = &t.stats;
            s.push_str(&format!(
                "{:<20} {:>7} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>5} {:>5} {:>5} {:>6.3}\n",
                st.name,
                st.train,
                st.valid,
                st.test,
                st.carved_valid,
                st.prompt_tokens,
                st.completion_tokens,
                st.longest_sample,
                st.truncated,
                st.dropped,
                t.skipped_total,
                t.mixing_probability
            ));
        }
        s
    }
}
