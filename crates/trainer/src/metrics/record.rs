//! The typed records of `metrics.jsonl`: the [`Header`] (line 1) and one [`StepRecord`] per
//! optimizer step. The writer ([`super::jsonl`]), `plot` and `compare` share these types, so
//! the schema lives here and nowhere else; the README's metrics table describes the keys. The
//! reader of whole files is [`super::reader`].
//!
//! Fields are declared in alphabetical order: serde writes them in declaration order, which
//! keeps the lines byte-identical to those of earlier versions (a `serde_json::Map`, sorted).
//! Readers ignore unknown keys and take absent optional keys as `None`, so files of older and
//! newer versions read alike. A non-finite number is written as `null` (serde_json) and read
//! back as `None`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// The model dtype (`f32`, `bf16`; absent in older files, which were f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Rows per optimizer step over all ranks (micro_batch × grad_accum × world_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch_rows: Option<usize>,
    /// CoBa's H (probes in the convergence-slope window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_length: Option<usize>,
    /// `l_i(0)`: each task's mean validation loss before step 0, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_val_loss: Option<PerTask>,
    /// With QLoRA: `lora.quantize_base` (`gguf`, `q8_0`, ...); absent for a dense base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_quantize_base: Option<String>,
    /// The weighting method (`coba`, `uniform`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Parameters of the model (without LoRA adapters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<usize>,
    /// Task names in config order (the order of every per-task vector).
    pub tasks: Vec<String>,
    /// Optimizer steps the run is configured for (rewritten when a resume changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// With LoRA: the adapters' parameters (`parameters` counts the model without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_parameters: Option<usize>,
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
    /// GSM8K-style accuracy per task (`[eval] metrics`), evaluation steps; `null` for a task
    /// without answers in the eval bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<PerTask>,
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
    /// Time of the Pass@1 / accuracy evaluation (generation and execution), evaluation steps
    /// with `[eval] metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functional_eval_time_s: Option<f64>,
    /// `6 × parameters × tokens / step_time_s / 1e9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops_per_s: Option<f64>,
    /// Global gradient L2 norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The weighted objective `Σ w_i L_i / Σ_{i present} w_i`, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Pass@1 per task (`[eval] metrics`; over the task's languages), evaluation steps; `null`
    /// for a task without unit tests in the eval bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_1: Option<PerTask>,
    /// GradNorm's `G_i`: the L2 norm of the gradient of each task's mean training loss with
    /// respect to the LM head weight, probe steps of a `gradnorm` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_grad_norm: Option<PerTask>,
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
    pub fn per_task_fields(&self) -> [(&'static str, Option<&PerTask>); 10] {
        [
            ("accuracy", self.accuracy.as_ref()),
            ("acs", self.acs.as_ref()),
            ("head_grad_norm", self.head_grad_norm.as_ref()),
            ("pass_at_1", self.pass_at_1.as_ref()),
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
            ("functional_eval_time_s", self.functional_eval_time_s),
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

/// A per-task map as a vector in `tasks` order (`None` for the map itself when absent).
pub fn in_task_order(map: Option<&PerTask>, tasks: &[String]) -> Option<Vec<Option<f64>>> {
    map.map(|m| tasks.iter().map(|t| m.get(t).copied().flatten()).collect())
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
}
