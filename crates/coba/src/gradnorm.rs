//! GradNorm (Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing
//! in Deep Multitask Networks", Sec. 3.2, Alg. 1): task weights learned so that each task's
//! weighted gradient norm on the shared layer tracks the mean norm times its relative inverse
//! training rate. Pinned by `tests/data/gradnorm/vectors.json` (a numpy reference written
//! from the paper).

use crate::math::uniform;
use crate::{Computed, Probe, TaskWeighter, WeightError};
use serde::{Deserialize, Serialize};

/// GradNorm's asymmetry α (the paper's multitask NYUv2 setting; the CoBa paper uses 1.5).
pub const GRADNORM_ALPHA: f64 = 1.5;
/// Learning rate of the weights' own Adam optimizer.
pub const GRADNORM_LR: f64 = 0.025;
/// Floor of a weight before the renormalisation to Σ w = K (keeps weights positive).
pub const GRADNORM_FLOOR: f64 = 1e-6;
const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// GradNorm's state: the K weights (Σ w = K, starting at 1) and their Adam moments.
///
/// On every probe, with `G_i` the norm of the gradient of task i's mean loss with respect to
/// the shared layer (the LM head in coba-dist) and `r_i = L̃_i / mean_j L̃_j`, `L̃_i` the loss
/// ratio `l_i(t) / l_i(0)` of the probe:
/// `target_i = mean_j(w_j G_j) · r_i^α` (held constant), `∂L_grad/∂w_i = sign(w_i G_i −
/// target_i) · G_i` (sign 0 at 0), one bias-corrected Adam step (lr 0.025, β 0.9/0.999,
/// ε 1e-8), `w ← max(w, 1e-6)`, `w ← K w / Σ w`. Weights: `w / K` (sum 1); uniform before the
/// first probe. The losses are the probe's (GradNorm* with validation losses) or the step's
/// training losses (GradNorm, `signal = "train"`); the norms always come from the training
/// batch.
///
/// A task absent from the step's batch has no gradient (`G_i = 0`): the means (`mean_j w_j
/// G_j` and the `r_i` normalisation) run over the tasks present, and an absent task's weight
/// and Adam moments do not move (its Adam bias correction counts its own updates) until the
/// renormalisation. The paper's setting has every task in every batch, where this is the rule
/// as written; counting absent tasks as zeros instead would lower the mean norm until every
/// present task's weight falls at every probe, whatever the losses say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradNorm {
    w: Vec<f64>,
    adam_m: Vec<f64>,
    adam_v: Vec<f64>,
    /// Adam updates per task (the bias correction's t).
    adam_t: Vec<u32>,
}

impl GradNorm {
    /// GradNorm for `num_tasks` tasks. Errors if K = 0.
    pub fn new(num_tasks: usize) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        Ok(Self {
            w: vec![1.0; num_tasks],
            adam_m: vec![0.0; num_tasks],
            adam_v: vec![0.0; num_tasks],
            adam_t: vec![0; num_tasks],
        })
    }
}

/// `sign(x)` with `sign(0) = 0` (as numpy; `f64::signum(0.0)` is 1).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl TaskWeighter for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }
    fn num_tasks(&self) -> usize {
        self.w.len()
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        let k = self.w.len();
        let missing = |reason: String| WeightError::MissingGradNorms {
            step: probe.step,
            reason,
        };
        let g = probe
            .grad_norms
            .ok_or_else(|| missing("none were measured".into()))?;
        if g.len() != k {
            return Err(missing(format!("{} values for {k} tasks", g.len())));
        }
        if let Some(i) = g.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(missing(format!("task {i} has {}", g[i])));
        }
        let ratios: Vec<f64> = probe
            .ratios
            .iter()
            .enumerate()
            .map(|(task, r)| {
                r.ok_or(WeightError::MissingTask {
                    step: probe.step,
                    task,
                    method: "gradnorm",
                })
            })
            .collect::<Result<_, _>>()?;
        let present: Vec<usize> = (0..k).filter(|&i| g[i] > 0.0).collect();
        if present.is_empty() {
            return Ok(());
        }
        let n = present.len() as f64;
        let gbar = present.iter().map(|&i| self.w[i] * g[i]).sum::<f64>() / n;
        let mean_ratio = present.iter().map(|&i| ratios[i]).sum::<f64>() / n;
        for &i in &present {
            let target = gbar * (ratios[i] / mean_ratio).powf(GRADNORM_ALPHA);
            let gi = sign(self.w[i] * g[i] - target) * g[i];
            self.adam_t[i] += 1;
            let t = self.adam_t[i] as i32;
            let (c1, c2) = (1.0 - ADAM_BETA1.powi(t), 1.0 - ADAM_BETA2.powi(t));
            self.adam_m[i] = ADAM_BETA1 * self.adam_m[i] + (1.0 - ADAM_BETA1) * gi;
            self.adam_v[i] = ADAM_BETA2 * self.adam_v[i] + (1.0 - ADAM_BETA2) * gi * gi;
            let step =
                GRADNORM_LR * (self.adam_m[i] / c1) / ((self.adam_v[i] / c2).sqrt() + ADAM_EPS);
            self.w[i] = (self.w[i] - step).max(GRADNORM_FLOOR);
        }
        let total: f64 = self.w.iter().sum();
        for w in &mut self.w {
            *w *= k as f64 / total;
        }
        Ok(())
    }
    fn compute(&mut self, _step: u64) -> Computed {
        if self.adam_t.iter().all(|&t| t == 0) {
            return Computed::plain(uniform(self.w.len()));
        }
        let k = self.w.len() as f64;
        Computed::plain(self.w.iter().map(|w| w / k).collect())
    }
}
