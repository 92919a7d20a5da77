//! `coba-dist plot`: read a run's `metrics.jsonl` into [`RunMetrics`] and draw it as PNG charts
//! ([`draw`]).
//!
//! The file, as the training loop writes it: line 1 is the header
//! `{"initial_val_loss": {task: f64}, "tasks": [task, ...], "world_size": n, "method": "coba"}`,
//! then one object per optimizer step with `step` (0-based), `train_loss` {task: f64|null},
//! `weights` {task: f64}, on CoBa computation steps `df`, on probe steps `val_ratio`
//! {task: f64|null}, on eval steps `val_loss` {task: f64|null} (and more keys, which are
//! ignored here, as are unknown keys). A resumed run may log a step twice: the later line wins.
//! A truncated last line (a crash while writing) is skipped and reported in
//! [`RunMetrics::truncated_line`]; any other malformed line is an error naming its line.

pub mod draw;

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A run's `metrics.jsonl`, reduced to what the charts need: the header and one record per
/// logged optimizer step. Per-task values are stored in [`RunMetrics::tasks`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    /// Task names in the header's order (the legend and colour order of every chart).
    pub tasks: Vec<String>,
    /// Each task's loss in the full validation pass before step 0 (`None` where the header has
    /// no finite value for it).
    pub initial_val_loss: Vec<Option<f64>>,
    /// The weighting method the header names (`coba`, `uniform`, ...), if any.
    pub method: Option<String>,
    /// The number of ranks the header names, if any.
    pub world_size: Option<u64>,
    /// One record per logged step, in ascending step order; for a step logged more than once
    /// (a resumed run) the record of the later line.
    pub steps: Vec<StepMetrics>,
    /// The 1-based number of a truncated last line that was skipped (a crash while writing).
    pub truncated_line: Option<usize>,
}

/// One optimizer step's record. Each per-task vector is in [`RunMetrics::tasks`] order, `None`
/// where the task is missing from the object or its value is `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// The step number (0-based).
    pub step: u64,
    /// Per-task training loss (empty when the record has no `train_loss`).
    pub train_loss: Vec<Option<f64>>,
    /// Task weights used for this step (empty when the record has no `weights`).
    pub weights: Vec<Option<f64>>,
    /// CoBa's divergence factor, on computation steps.
    pub df: Option<f64>,
    /// Probe loss / initial loss per task, on probe steps.
    pub val_ratio: Option<Vec<Option<f64>>>,
    /// Full-validation loss per task, on eval steps.
    pub val_loss: Option<Vec<Option<f64>>>,
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

/// Where the validation-ratio curves come from (see [`RunMetrics::val_ratio_curves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatioSource {
    /// `val_ratio` of probe steps (the CoBa probe loss / initial loss).
    Probe,
    /// `val_loss / initial_val_loss` of eval steps (the run logged no probe).
    Eval,
    /// Neither probes nor evals were logged.
    None,
}

/// One task's curve: (step, value) points in ascending step order, finite values only.
pub type Curve = Vec<(f64, f64)>;

impl RunMetrics {
    /// Reads and parses `path` (a `metrics.jsonl`).
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
    /// A line that is not UTF-8 or not a JSON object, a first line without `tasks`, a step
    /// without `step`, a value of the wrong type, or a task the header does not list. The last
    /// non-blank line is exempt when it is cut off (invalid UTF-8 or incomplete JSON): it is
    /// skipped and its number kept in [`RunMetrics::truncated_line`].
    pub fn parse(bytes: &[u8]) -> Result<Self, LineError> {
        let lines: Vec<(usize, &[u8])> = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        let last = lines.last().map(|&(n, _)| n);
        let mut header: Option<Header> = None;
        let mut steps: BTreeMap<u64, StepMetrics> = BTreeMap::new();
        let mut truncated_line = None;
        for &(line, raw) in &lines {
            let err = |message: String| LineError { line, message };
            let value = match std::str::from_utf8(raw)
                .map_err(|e| (true, format!("not UTF-8 ({e})")))
                .and_then(|text| {
                    serde_json::from_str::<Value>(text).map_err(|e| {
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
            let Value::Object(obj) = value else {
                return Err(err("expected a JSON object".into()));
            };
            match &header {
                None => header = Some(Header::from_object(&obj).map_err(err)?),
                Some(h) if !obj.contains_key("step") && obj.contains_key("tasks") => {
                    // A header written again (e.g. by a resumed run): it must name the same tasks.
                    let again = Header::from_object(&obj).map_err(err)?;
                    if again.tasks != h.tasks {
                        return Err(err(format!(
                            "a second header names tasks {:?}, the first named {:?}",
                            again.tasks, h.tasks
                        )));
                    }
                }
                Some(h) => {
                    let record = StepMetrics::from_object(&obj, &h.tasks).map_err(err)?;
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
            tasks: header.tasks,
            initial_val_loss: header.initial_val_loss,
            method: header.method,
            world_size: header.world_size,
            steps: steps.into_values().collect(),
            truncated_line,
        })
    }

    /// The per-task validation-loss ratio curves `l_i(t) / l_i(0)`: from the `val_ratio` of
    /// probe steps, or, when no step has one, from `val_loss / initial_val_loss` of eval steps.
    /// Non-finite points (and a task without an initial loss, in the eval case) are left out.
    pub fn val_ratio_curves(&self) -> (RatioSource, Vec<Curve>) {
        if self.steps.iter().any(|s| s.val_ratio.is_some()) {
            return (RatioSource::Probe, self.curves(|s| s.val_ratio.clone()));
        }
        if self.steps.iter().any(|s| s.val_loss.is_some()) {
            let ratios = |s: &StepMetrics| {
                s.val_loss.as_ref().map(|losses| {
                    losses
                        .iter()
                        .zip(&self.initial_val_loss)
                        .map(|(l, l0)| match (l, l0) {
                            (Some(l), Some(l0)) if *l0 != 0.0 => Some(l / l0),
                            _ => None,
                        })
                        .collect()
                })
            };
            return (RatioSource::Eval, self.curves(ratios));
        }
        (RatioSource::None, vec![Vec::new(); self.tasks.len()])
    }

    /// Per-task task-weight curves.
    pub fn weight_curves(&self) -> Vec<Curve> {
        self.curves(|s| Some(s.weights.clone()))
    }

    /// Per-task training-loss curves.
    pub fn train_loss_curves(&self) -> Vec<Curve> {
        self.curves(|s| Some(s.train_loss.clone()))
    }

    /// The divergence factor over the CoBa computation steps.
    pub fn df_curve(&self) -> Curve {
        self.steps
            .iter()
            .filter_map(|s| s.df.filter(|d| d.is_finite()).map(|d| (s.step as f64, d)))
            .collect()
    }

    /// One curve per task from a per-step vector (`None` = the step has no such vector).
    fn curves(&self, per_step: impl Fn(&StepMetrics) -> Option<Vec<Option<f64>>>) -> Vec<Curve> {
        let mut curves = vec![Vec::new(); self.tasks.len()];
        for s in &self.steps {
            let Some(values) = per_step(s) else { continue };
            for (curve, v) in curves.iter_mut().zip(values) {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    curve.push((s.step as f64, v));
                }
            }
        }
        curves
    }
}

/// Min-max normalises `values` to [0, 1]: `(v - min) / (max - min)`, as the CoBa paper plots
/// its validation-ratio curves (Figures 9-10). A constant curve maps to all 0 (never NaN);
/// non-finite inputs map to NaN and do not affect min and max.
pub fn min_max_normalize(values: &[f64]) -> Vec<f64> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    let range = max - min;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                f64::NAN
            } else if range > 0.0 && range.is_finite() {
                ((v - min) / range).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// The header line's fields this module uses.
struct Header {
    tasks: Vec<String>,
    initial_val_loss: Vec<Option<f64>>,
    method: Option<String>,
    world_size: Option<u64>,
}

impl Header {
    fn from_object(obj: &Map<String, Value>) -> Result<Self, String> {
        let tasks = match obj.get("tasks") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!("`tasks`: expected task names, got {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => return Err(format!("`tasks`: expected an array, got {other}")),
            None if obj.contains_key("step") => {
                return Err("expected the header (with `tasks`) before the first step".into())
            }
            None => return Err("the header has no `tasks`".into()),
        };
        if tasks.is_empty() {
            return Err("`tasks` is empty".into());
        }
        for (i, t) in tasks.iter().enumerate() {
            if tasks[..i].contains(t) {
                return Err(format!("`tasks`: task `{t}` is listed twice"));
            }
        }
        let initial_val_loss = task_values(obj, "initial_val_loss", &tasks)?
            .unwrap_or_else(|| vec![None; tasks.len()]);
        let method = match obj.get("method") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("`method`: expected a string, got {other}")),
        };
        let world_size = match obj.get("world_size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| format!("`world_size`: expected a positive integer, got {v}"))?,
            ),
        };
        Ok(Self {
            tasks,
            initial_val_loss,
            method,
            world_size,
        })
    }
}

impl StepMetrics {
    fn from_object(obj: &Map<String, Value>, tasks: &[String]) -> Result<Self, String> {
        let step = match obj.get("step") {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("`step`: expected a non-negative integer, got {v}"))?,
            None => return Err("a step record without `step`".into()),
        };
        Ok(Self {
            step,
            train_loss: task_values(obj, "train_loss", tasks)?.unwrap_or_default(),
            weights: task_values(obj, "weights", tasks)?.unwrap_or_default(),
            df: number(obj, "df")?,
            val_ratio: task_values(obj, "val_ratio", tasks)?,
            val_loss: task_values(obj, "val_loss", tasks)?,
        })
    }
}

/// `obj[field]` as a number; absent or `null` is `None`.
fn number(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(format!("`{field}`: expected a number, got {other}")),
    }
}

/// `obj[field]` as a {task: number|null} object, in `tasks` order; absent or `null` is `None`.
fn task_values(
    obj: &Map<String, Value>,
    field: &str,
    tasks: &[String],
) -> Result<Option<Vec<Option<f64>>>, String> {
    let map = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "`{field}`: expected an object {{task: number}}, got {other}"
            ))
        }
    };
    let mut values = vec![None; tasks.len()];
    for (task, v) in map {
        let Some(i) = tasks.iter().position(|t| t == task) else {
            return Err(format!(
                "`{field}`: task `{task}` is not in the header's tasks {tasks:?}"
            ));
        };
        values[i] = match v {
            Value::Null => None,
            Value::Number(n) => n.as_f64(),
            other => {
                return Err(format!(
                    "`{field}`: task `{task}`: expected a number or null, got {other}"
                ))
            }
        };
    }
    Ok(Some(values))
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
