//! `[eval]`: Pass@1 and GSM8K accuracy during training, at every full validation
//! (`train.eval_interval`), on at most `max_problems_per_task` held-out problems per task. Off
//! by default (an empty `metrics`).

use codeexec::Metric;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// `["pass@1"]`, `["accuracy"]` or both; empty (default) turns it off.
    pub metrics: Vec<String>,
    /// The eval bundle: `<task>_test.jsonl[.gz]` per task. Default `data/eval`.
    pub data: PathBuf,
    /// Problems per task, evenly spaced over the bundle. Default 20.
    pub max_problems_per_task: usize,
    /// Token limit per completion. Default 256.
    pub max_new_tokens: usize,
    /// Sequences decoded together on each rank. Default 16.
    pub gen_batch: usize,
    /// Seconds each program may run. Default 10.
    pub timeout_s: u64,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            metrics: Vec::new(),
            data: PathBuf::from("data/eval"),
            max_problems_per_task: 20,
            max_new_tokens: 256,
            gen_batch: 16,
            timeout_s: 10,
        }
    }
}

impl EvalSection {
    /// The parsed metrics (empty when off).
    ///
    /// # Errors
    /// An unknown metric name, or a zero limit, naming the key.
    pub fn parsed(&self) -> Result<Vec<Metric>, String> {
        let mut out = Vec::new();
        for m in &self.metrics {
            let metric = Metric::parse(m).ok_or_else(|| {
                format!("eval.metrics: unknown metric `{m}` (expected \"pass@1\" or \"accuracy\")")
            })?;
            if !out.contains(&metric) {
                out.push(metric);
            }
        }
        for (key, v) in [
            (
                "eval.max_problems_per_task",
                self.max_problems_per_task as u64,
            ),
            ("eval.max_new_tokens", self.max_new_tokens as u64),
            ("eval.gen_batch", self.gen_batch as u64),
            ("eval.timeout_s", self.timeout_s),
        ] {
            if v == 0 {
                return Err(format!("{key} must be >= 1"));
            }
        }
        Ok(out)
    }
}
