//! The typed records of `metrics.jsonl`: the [`Header`] (line 1) and one [`StepRecord`] per
//! optimizer step. The writer ([`super::jsonl`]), `plot` and `compare` share these types, so
//! the schema lives here and nowhere else; the README's metrics table describes the keys.
//!
//! Fields are declared in alphabetical order: serde writes them in declaration order, which
//! keeps the lines byte-identical to those of earlier versions (a `serde_json::Map`, sorted).
//! Readers ignore unknown keys and take absent optional keys as `None`, so files of older and
//! newer versions read alike. A non-finite number is written as `null` (serde_json) and read
//! back as `None`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// `{task: value}`; `None` (JSON `null`) where the task had no value (no tokens in the
/// batch, no validation data) or the value was not finite. Keys are task names.
pub type PerTask = BTreeMap<String, Option<f64>>;

/// `{task: value}` from values in `names` order; non-finite values become `None`.
pub fn per_task(names: &[String], values: impl IntoIterator<Item = Option<f64>>) -> PerTask {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| (n.clone(), v.filter(|x| x.is_finite())))
        .collect()
}

/// Line 1 of `metrics.jsonl`, written by a fresh run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Rows per optimizer step over all ranks (micro_batch × grad_accum × world_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch_rows: Option<usize>,
    /// CoBa's H (probes in the convergence-slope window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_length: Option<usize>,
    /// `l_i(0)`: each task's mean validation loss before step 0, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_val_loss: Option<PerTask>,
    /// The weighting method (`coba`, `uniform`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Trainable parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<usize>,
    /// Task names in config order (the order of every per-task vector).
    pub tasks: Vec<String>,
    /// Optimizer steps the run is configured for (rewritten when a resume changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// CoBa's U (steps between probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_interval: Option<u64>,
    /// M: micro-batches of one full validation pass at the global batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_batches: Option<u64>,
    /// CoBa's W (uniform weights before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Ranks of the run that wrote the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<u64>,
}

/// One optimizer step (0-based `step`). Every key but `step` is optional when read: probe
/// keys appear on probe steps, eval keys on evaluation steps, `df`/`rcs`/`acs` on CoBa
/// computation steps. Times are seconds of this step on rank 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// CoBa's absolute convergence scores (Eq. 5), computation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acs: Option<PerTask>,
    /// Time in collectives (token counts, weight broadcast, gradient and loss all-reduce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_time_s: Option<f64>,
    /// CoBa's divergence factor (Eq. 7), computation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub df: Option<f64>,
    /// Time of the full validation pass, evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_time_s: Option<f64>,
    /// `6 × parameters × tokens / step_time_s / 1e9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops_per_s: Option<f64>,
    /// Global gradient L2 norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The weighted objective `Σ w_i L_i / Σ_{i present} w_i`, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate of this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Time of the probe (forward and reduction), probe steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_time_s: Option<f64>,
    /// Probe loss per task after the update, nats/token, probe steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_val_loss: Option<PerTask>,
    /// CoBa's relative convergence scores (Eq. 4), computation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcs: Option<PerTask>,
    /// The optimizer step, 0-based.
    pub step: u64,
    /// Wall time of the training step proper (forward, backward, all-reduce, update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time_s: Option<f64>,
    /// Non-padding tokens of the global batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<f64>,
    /// `tokens / step_time_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Per-task mean training loss over the global batch, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<PerTask>,
    /// Full-validation loss per task, nats/token, evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<PerTask>,
    /// Probe loss / `l_i(0)` per task, probe steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ratio: Option<PerTask>,
    /// Mean over tasks of full-validation loss / `l_i(0)` (selects `best/`), evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ratio_mean: Option<f64>,
    /// Time rank 0 spent computing the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_time_s: Option<f64>,
    /// Task weights of this step (sum 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PerTask>,
    /// `warmup`, `computed` or `carried`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_source: Option<String>,
}

impl StepRecord {
    /// The per-task maps of this record with their keys (for checks and sinks).
    pub fn per_task_fields(&self) -> [(&'static str, Option<&PerTask>); 7] {
        [
            ("acs", self.acs.as_ref()),
            ("probe_val_loss", self.probe_val_loss.as_ref()),
            ("rcs", self.rcs.as_ref()),
            ("train_loss", self.train_loss.as_ref()),
            ("val_loss", self.val_loss.as_ref()),
            ("val_ratio", self.val_ratio.as_ref()),
            ("weights", self.weights.as_ref()),
        ]
    }

    /// The scalar (not per-task) values of this record with their keys, present ones only.
    pub fn scalar_fields(&self) -> Vec<(&'static str, f64)> {
        [
            ("comm_time_s", self.comm_time_s),
            ("df", self.df),
            ("eval_time_s", self.eval_time_s),
            ("gflops_per_s", self.gflops_per_s),
            ("grad_norm", self.grad_norm),
            ("loss", self.loss),
            ("lr", self.lr),
            ("probe_time_s", self.probe_time_s),
            ("step_time_s", self.step_time_s),
            ("tokens", self.tokens),
            ("tokens_per_s", self.tokens_per_s),
            ("val_ratio_mean", self.val_ratio_mean),
            ("weight_time_s", self.weight_time_s),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// A whole `metrics.jsonl`: the header and the step records in ascending step order (for a
/// step logged twice, the later line, as after a resume that replayed it).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsFile {
    /// Line 1.
    pub header: Header,
    /// One record per step.
    pub steps: Vec<StepRecord>,
    /// The 1-based number of a truncated last line that was skipped (a crash while writing).
    pub truncated_line: Option<usize>,
}

/// A malformed line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (names the field and task where there is one).
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

impl MetricsFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// An unreadable file, or a malformed line (the message names the file and line).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses the bytes of a `metrics.jsonl` (UTF-8, `\n` or `\r\n` line ends, blank lines
    /// skipped).
    ///
    /// # Errors
    /// A line that is not UTF-8 or not a JSON object, a first line without `tasks` (or with
    /// a task listed twice), a step without `step`, a value of the wrong type (the message
    /// names the key path, e.g. `weights.code`), or a task the header does not list. The last
    /// non-blank line is exempt when it is cut off (invalid UTF-8 or incomplete JSON): it is
    /// skipped and its number kept in [`MetricsFile::truncated_line`]. A second header (same
    /// tasks) is accepted.
    pub fn parse(bytes: &[u8]) -> Result<Self, LineError> {
        let lines: Vec<(usize, &[u8])> = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        let last = lines.last().map(|&(n, _)| n);
        let mut header: Option<Header> = None;
        let mut steps: BTreeMap<u64, StepRecord> = BTreeMap::new();
        let mut truncated_line = None;
        for &(line, raw) in &lines {
            let err = |message: String| LineError { line, message };
            let value = match std::str::from_utf8(raw)
                .map_err(|e| (true, format!("not UTF-8 ({e})")))
                .and_then(|text| {
                    serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                        let cut = matches!(
                            e.classify(),
                            serde_json::error::Category::Eof | serde_json::error::Category::Syntax
                        );
                        (cut, json_message(&e))
                    })
                }) {
                Ok(v) => v,
                Err((true, _)) if Some(line) == last => {
                    truncated_line = Some(line);
                    continue;
                }
                Err((_, message)) => return Err(err(message)),
            };
            let Some(obj) = value.as_object() else {
                return Err(err("expected a JSON object".into()));
            };
            let is_step = obj.contains_key("step");
            match &header {
                None if is_step => {
                    return Err(err(
                        "expected the header (with `tasks`) before the first step".into(),
                    ))
                }
                None => header = Some(read_header(value).map_err(err)?),
                Some(h) if !is_step && obj.contains_key("tasks") => {
                    let again = read_header(value).map_err(err)?;
                    if again.tasks != h.tasks {
                        return Err(err(format!(
                            "a second header names tasks {:?}, the first named {:?}",
                            again.tasks, h.tasks
                        )));
                    }
                }
                Some(_) if !is_step => return Err(err("a step record without `step`".into())),
                Some(h) => {
                    let record: StepRecord = typed(value).map_err(err)?;
                    check_tasks(&record, &h.tasks).map_err(err)?;
                    steps.insert(record.step, record);
                }
            }
        }
        let Some(header) = header else {
            return Err(LineError {
                line: truncated_line.unwrap_or(1),
                message: match truncated_line {
                    Some(_) => "no header: the only line is truncated".into(),
                    None => "no header: the file is empty".into(),
                },
            });
        };
        Ok(Self {
            header,
            steps: steps.into_values().collect(),
            truncated_line,
        })
    }

    /// `l_i(0)` in the header's task order (`None` where absent or not finite).
    pub fn initial_val_loss(&self) -> Vec<Option<f64>> {
        in_task_order(self.header.initial_val_loss.as_ref(), &self.header.tasks)
            .unwrap_or_else(|| vec![None; self.header.tasks.len()])
    }
}

/// A per-task map as a vector in `tasks` order (`None` for the map itself when absent).
pub fn in_task_order(map: Option<&PerTask>, tasks: &[String]) -> Option<Vec<Option<f64>>> {
    map.map(|m| tasks.iter().map(|t| m.get(t).copied().flatten()).collect())
}

fn read_header(value: serde_json::Value) -> Result<Header, String> {
    let h: Header = typed(value)?;
    if h.tasks.is_empty() {
        return Err("`tasks` is empty".into());
    }
    for (i, t) in h.tasks.iter().enumerate() {
        if h.tasks[..i].contains(t) {
            return Err(format!("`tasks`: task `{t}` is listed twice"));
        }
    }
    if let Some(m) = &h.initial_val_loss {
        check_map("initial_val_loss", m, &h.tasks)?;
    }
    Ok(h)
}

/// Deserializes with the key path of a type error in the message (`weights.code: ...`).
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("`{path}`: {}", e.inner())
        }
    })
}

fn check_tasks(record: &StepRecord, tasks: &[String]) -> Result<(), String> {
    for (field, map) in record.per_task_fields() {
        if let Some(m) = map {
            check_map(field, m, tasks)?;
        }
    }
    Ok(())
}

fn check_map(field: &str, map: &PerTask, tasks: &[String]) -> Result<(), String> {
    match map.keys().find(|k| !tasks.contains(k)) {
        Some(task) => Err(format!(
            "`{field}`: task `{task}` is not in the header's tasks {tasks:?}"
        )),
        None => Ok(()),
    }
}

/// serde_json's message with its `at line 1 column N` (always line 1 here) turned into a
/// column.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("column {}: invalid JSON: {message}", e.column()),
        None => format!("invalid JSON: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["b".into(), "a".into()]
    }

    #[test]
    fn a_record_writes_the_keys_of_a_sorted_json_object() {
        // Earlier versions built each line as a serde_json::Map (sorted keys); the typed
        // record must write the same bytes for the same values.
        let r = StepRecord {
            step: 3,
            lr: Some(1e-3),
            loss: Some(f64::NAN),
            weights: Some(per_task(&names(), [Some(0.25), Some(0.75)])),
            weights_source: Some("computed".into()),
            df: Some(0.5),
            ..StepRecord::default()
        };
        let mut map = serde_json::Map::new();
        map.insert("step".into(), serde_json::json!(3));
        map.insert("lr".into(), serde_json::json!(1e-3));
        map.insert("loss".into(), serde_json::json!(f64::NAN));
        map.insert("weights".into(), serde_json::json!({"b": 0.25, "a": 0.75}));
        map.insert("weights_source".into(), serde_json::json!("computed"));
        map.insert("df".into(), serde_json::json!(0.5));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&serde_json::Value::Object(map)).unwrap()
        );
    }

    #[test]
    fn absent_and_unknown_keys_and_nulls_read_as_none() {
        let text = concat!(
            r#"{"tasks": ["b", "a"], "initial_val_loss": {"a": 2.0}, "future_key": 1}"#,
            "\n",
            r#"{"step": 0, "train_loss": {"a": 1.5, "b": null}, "new_metric": [1, 2]}"#,
            "\n"
        );
        let f = MetricsFile::parse(text.as_bytes()).unwrap();
        assert_eq!(f.initial_val_loss(), vec![None, Some(2.0)]);
        let s = &f.steps[0];
        assert_eq!(
            in_task_order(s.train_loss.as_ref(), &f.header.tasks),
            Some(vec![None, Some(1.5)])
        );
        assert_eq!((s.lr, s.val_ratio.as_ref()), (None, None));
    }

    #[test]
    fn a_wrong_type_names_the_key_path_and_line() {
        let text = "{\"tasks\": [\"a\"]}\n{\"step\": 1, \"weights\": {\"a\": \"x\"}}\n";
        let e = MetricsFile::parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("`weights.a`: invalid type"), "{e}");
        let text = "{\"tasks\": [\"a\"]}\n{\"step\": 1, \"weights\": {\"z\": 1.0}}\n";
        let e = MetricsFile::parse(text.as_bytes()).unwrap_err();
        assert!(e.message.contains("task `z` is not in the header"), "{e}");
    }
}
