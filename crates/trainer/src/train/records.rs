//! A step's outcomes as the typed metrics record ([`StepRecord`], the README's metrics
//! table): the step itself, then what the probe and the evaluation add.

use super::trainer::{EvalOutcome, ProbeOutcome, StepOutcome};
use crate::metrics::{per_task, StepRecord};

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
    /// Adds `probe_val_loss`, `val_ratio` (rank 0: the weighter's) and `probe_time_s`.
    pub fn fill(&self, r: &mut StepRecord, names: &[String]) {
        r.probe_val_loss = Some(per_task(names, self.losses.iter().copied()));
        if let Some(ratios) = &self.ratios {
            r.val_ratio = Some(per_task(names, ratios.iter().copied()));
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
