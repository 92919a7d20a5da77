//! `coba-dist plot`: read a run's `metrics.jsonl` into [`RunMetrics`] and draw it as PNG charts
//! ([`draw`]).
//!
//! The file is read as typed records ([`crate::metrics::MetricsFile`]: the header, then one
//! [`crate::metrics::StepRecord`] per step; unknown keys ignored, a step logged
//! twice keeps its later line, a truncated last line is skipped and reported in
//! [`RunMetrics::truncated_line`], any other malformed line is an error naming its line and
//! key). The charts use `train_loss`, `weights`, `df`, `val_ratio` and `val_loss`, in the
//! header's task order.

pub mod draw;

use crate::metrics::record::in_task_order;
pub use crate::metrics::LineError;
use crate::metrics::{MetricsFile, StepRecord};
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

    /// Parses the bytes of a `metrics.jsonl` ([`MetricsFile::parse`]).
    ///
    /// # Errors
    /// As [`MetricsFile::parse`].
    pub fn parse(bytes: &[u8]) -> Result<Self, LineError> {
        let file = MetricsFile::parse(bytes)?;
        let tasks = file.header.tasks.clone();
        Ok(Self {
            initial_val_loss: file.initial_val_loss(),
            method: file.header.method.clone(),
            world_size: file.header.world_size,
            steps: file
                .steps
                .iter()
                .map(|r| StepMetrics::from_record(r, &tasks))
                .collect(),
            truncated_line: file.truncated_line,
            tasks,
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

impl StepMetrics {
    /// The chart values of a record, in `tasks` order.
    fn from_record(r: &StepRecord, tasks: &[String]) -> Self {
        Self {
            step: r.step,
            train_loss: in_task_order(r.train_loss.as_ref(), tasks).unwrap_or_default(),
            weights: in_task_order(r.weights.as_ref(), tasks).unwrap_or_default(),
            df: r.df,
            val_ratio: in_task_order(r.val_ratio.as_ref(), tasks),
            val_loss: in_task_order(r.val_loss.as_ref(), tasks),
        }
    }
}
