//! What the [`Trainer`](super::Trainer)'s methods return, and each as its part of the typed
//! metrics record ([`StepRecord`], the README's metrics table): the step itself, then what the
//! probe and the evaluation add.

use crate::metrics::{per_task, StepRecord};

/// One training step's results (identical on every rank, except `explain`).
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The step (0-based).
    pub step: u64,
    /// Its learning rate.
    pub lr: f64,
    /// The weighted objective `Σ w_i L_i / Σ_{i present} w_i`, nats/token.
    pub loss: f64,
    /// Per-task mean training loss over the global batch (`None`: no tokens of the task).
    pub train_loss: Vec<Option<f64>>,
    /// The weights used, as rank 0 broadcast them.
    pub weights: coba::WeightMessage,
    /// CoBa's intermediates on computation steps (rank 0 only).
    pub explain: Option<coba::CobaExplain>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-padding tokens of the global batch.
    pub tokens: f64,
    /// Some rank was asked to stop (SIGTERM/SIGUSR1) before this step.
    pub stop_requested: bool,
    /// Wall time of the step, seconds.
    pub step_time_s: f64,
    /// Of which in collectives.
    pub comm_time_s: f64,
    /// Of which rank 0 spent computing the weights.
    pub weight_time_s: f64,
    /// GradNorm's per-task head gradient norms `G_i` of this step (probe steps of a
    /// `gradnorm` run).
    pub head_grad_norms: Option<Vec<f64>>,
}

/// A probe's results.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// Per-task mean probe loss, nats/token (`None`: the task had no probe tokens).
    pub losses: Vec<Option<f64>>,
    /// What `losses` are: validation losses of the probe, or (`train`) the latest training
    /// losses.
    pub signal: coba::Signal,
    /// `l_i / l_i(0)` as the weighter observed them (rank 0 only; `None` on other ranks).
    pub ratios: Option<Vec<Option<f64>>>,
    /// Wall time, seconds.
    pub time_s: f64,
}

/// A full validation's results.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// Per-task mean validation loss, nats/token.
    pub val_loss: Vec<f64>,
    /// Mean over tasks of `val_loss_i / l_i(0)` (selects `best/`, drives early stopping).
    pub ratio_mean: f64,
    /// Wall time, seconds.
    pub time_s: f64,
}

impl StepOutcome {
    /// The record of this step; `parameters` gives `gflops_per_s` (6 × parameters × tokens).
    pub fn record(&self, names: &[String], parameters: usize) -> StepRecord {
        let s = self.step_time_s;
        let mut r = StepRecord {
            step: self.step,
            lr: Some(self.lr),
            loss: Some(self.loss),
            train_loss: Some(per_task(names, self.train_loss.iter().copied())),
            weights: Some(per_task(
                names,
                self.weights.weights.iter().map(|w| Some(*w)),
            )),
            weights_source: Some(self.weights.source.as_str().into()),
            head_grad_norm: self
                .head_grad_norms
                .as_ref()
                .map(|g| per_task(names, g.iter().map(|v| Some(*v)))),
            grad_norm: Some(self.grad_norm),
            tokens: Some(self.tokens),
            tokens_per_s: Some(self.tokens / s),
            gflops_per_s: Some(6.0 * parameters as f64 * self.tokens / s / 1e9),
            step_time_s: Some(s),
            comm_time_s: Some(self.comm_time_s),
            weight_time_s: Some(self.weight_time_s),
            ..StepRecord::default()
        };
        if let Some(ex) = &self.explain {
            r.df = Some(ex.df);
            r.rcs = Some(per_task(names, ex.rcs.iter().map(|v| Some(*v))));
            r.acs = Some(per_task(names, ex.acs.iter().map(|v| Some(*v))));
        }
        r
    }
}

impl ProbeOutcome {
    /// Adds `probe_val_loss`, `val_ratio` (rank 0: the weighter's) and `probe_time_s`. With
    /// the `train` signal there was no validation probe: only `probe_time_s` (the training
    /// losses the weighter saw are the record's `train_loss`, carried for absent tasks).
    pub fn fill(&self, r: &mut StepRecord, names: &[String]) {
        if self.signal == coba::Signal::Valid {
            r.probe_val_loss = Some(per_task(names, self.losses.iter().copied()));
            if let Some(ratios) = &self.ratios {
                r.val_ratio = Some(per_task(names, ratios.iter().copied()));
            }
        }
        r.probe_time_s = Some(self.time_s);
    }
}

impl EvalOutcome {
    /// Adds `val_loss`, `val_ratio_mean` and `eval_time_s`.
    pub fn fill(&self, r: &mut StepRecord, names: &[String]) {
        r.val_loss = Some(per_task(names, self.val_loss.iter().map(|v| Some(*v))));
        r.val_ratio_mean = Some(self.ratio_mean);
        r.eval_time_s = Some(self.time_s);
    }
}
