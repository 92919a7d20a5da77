//! Loss-space baselines from the CoBa paper's comparison (Section 4), with the update rules
//! pinned in the test vectors' README. Every one needs every task in every probe.

use crate::math::{normalize, softmax, uniform};
use crate::{Computed, Probe, TaskWeighter, WeightError};
use serde::{Deserialize, Serialize};

/// Checks that every task is present and returns the losses as plain values.
fn present(probe: &Probe<'_>, method: &'static str) -> Result<Vec<f64>, WeightError> {
    probe
        .losses
        .iter()
        .enumerate()
        .map(|(task, l)| {
            l.ok_or(WeightError::MissingTask {
                step: probe.step,
                task,
                method,
            })
        })
        .collect()
}

/// Uniform weights `1/K` at every step (plain multi-task fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uniform {
    num_tasks: usize,
}

impl Uniform {
    /// Uniform weighting of `num_tasks` tasks. Errors if K = 0.
    pub fn new(num_tasks: usize) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        Ok(Self { num_tasks })
    }
}

impl TaskWeighter for Uniform {
    fn name(&self) -> &'static str {
        "uniform"
    }
    fn num_tasks(&self) -> usize {
        self.num_tasks
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        present(probe, "uniform").map(drop)
    }
    fn compute(&mut self, _step: u64) -> Computed {
        Computed::plain(uniform(self.num_tasks))
    }
}

/// LBTW, loss-balanced task weighting (Liu, Liang & Gitter 2019), on validation losses as the
/// CoBa paper's LBTW*: `w_i ∝ (l_i(t) / l_i(0))^β`, β = 0.5, with `l(t)` the latest probe;
/// uniform before the first probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lbtw {
    num_tasks: usize,
    latest_ratio: Option<Vec<f64>>,
}

/// LBTW's exponent β (Liu, Liang & Gitter 2019 use 0.5).
pub const LBTW_BETA: f64 = 0.5;

impl Lbtw {
    /// LBTW for `num_tasks` tasks. Errors if K = 0.
    pub fn new(num_tasks: usize) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        Ok(Self {
            num_tasks,
            latest_ratio: None,
        })
    }
}

impl TaskWeighter for Lbtw {
    fn name(&self) -> &'static str {
        "lbtw"
    }
    fn num_tasks(&self) -> usize {
        self.num_tasks
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        present(probe, "lbtw")?;
        self.latest_ratio = Some(probe.ratios.iter().map(|r| r.unwrap_or(0.0)).collect());
        Ok(())
    }
    fn compute(&mut self, _step: u64) -> Computed {
        Computed::plain(match &self.latest_ratio {
            None => uniform(self.num_tasks),
            Some(r) => normalize(r.iter().map(|x| x.powf(LBTW_BETA)).collect()),
        })
    }
}

/// DWA, dynamic weight average (Liu, Johns & Davison 2019), on validation probes:
/// `r_i = l_i(t) / l_i(t−1)` over the two latest probes, `w = softmax(r / T)`, T = 2;
/// uniform with fewer than two probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dwa {
    num_tasks: usize,
    previous: Option<Vec<f64>>,
    latest: Option<Vec<f64>>,
}

/// DWA's temperature T (Liu, Johns & Davison 2019 use 2).
pub const DWA_TEMPERATURE: f64 = 2.0;

impl Dwa {
    /// DWA for `num_tasks` tasks. Errors if K = 0.
    pub fn new(num_tasks: usize) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        Ok(Self {
            num_tasks,
            previous: None,
            latest: None,
        })
    }
}

impl TaskWeighter for Dwa {
    fn name(&self) -> &'static str {
        "dwa"
    }
    fn num_tasks(&self) -> usize {
        self.num_tasks
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        let losses = present(probe, "dwa")?;
        self.previous = self.latest.replace(losses);
        Ok(())
    }
    fn compute(&mut self, _step: u64) -> Computed {
        Computed::plain(match (&self.previous, &self.latest) {
            (Some(prev), Some(last)) => {
                // Clamped: 1e10 / 1e-300 would be +inf, and softmax(inf) is NaN.
                softmax(
                    last.iter()
                        .zip(prev)
                        .map(|(l, p)| (l / p).min(f64::MAX) / DWA_TEMPERATURE),
                )
            }
            _ => uniform(self.num_tasks),
        })
    }
}

/// FAMO's learning rate for the task logits (Liu et al. 2023).
pub const FAMO_LR: f64 = 0.025;
/// FAMO's weight decay on the task logits.
pub const FAMO_DECAY: f64 = 0.01;
const FAMO_EPS_LOSS: f64 = 1e-8;
const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// FAMO, fast adaptive multitask optimization (Liu et al. 2023), on validation probes as the
/// CoBa paper's FAMO*.
///
/// Task logits ξ start at 0. On every probe after the first:
/// `δ_i = log(l_i(prev) + 1e-8) − log(l_i(t) + 1e-8)`, `z = softmax(ξ)`,
/// `g = z ⊙ (δ − z·δ) + 0.01 ξ`, then one bias-corrected Adam step on ξ with g
/// (lr 0.025, β 0.9/0.999, ε 1e-8). Weights: `w_i ∝ z_i / (l_i(t) + 1e-8)` with
/// `z = softmax(ξ)`; uniform before the first probe. Probes during warm-up update ξ too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Famo {
    xi: Vec<f64>,
    adam_m: Vec<f64>,
    adam_v: Vec<f64>,
    adam_t: u32,
    latest: Option<Vec<f64>>,
}

impl Famo {
    /// FAMO for `num_tasks` tasks. Errors if K = 0.
    pub fn new(num_tasks: usize) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        Ok(Self {
            xi: vec![0.0; num_tasks],
            adam_m: vec![0.0; num_tasks],
            adam_v: vec![0.0; num_tasks],
            adam_t: 0,
            latest: None,
        })
    }

    fn adam_step(&mut self, grad: &[f64]) {
        self.adam_t += 1;
        let t = self.adam_t as i32;
        let (c1, c2) = (1.0 - ADAM_BETA1.powi(t), 1.0 - ADAM_BETA2.powi(t));
        let state = self
            .xi
            .iter_mut()
            .zip(&mut self.adam_m)
            .zip(&mut self.adam_v);
        for (((xi, m), v), g) in state.zip(grad) {
            *m = ADAM_BETA1 * *m + (1.0 - ADAM_BETA1) * g;
            *v = ADAM_BETA2 * *v + (1.0 - ADAM_BETA2) * g * g;
            *xi -= FAMO_LR * (*m / c1) / ((*v / c2).sqrt() + ADAM_EPS);
        }
    }
}

impl TaskWeighter for Famo {
    fn name(&self) -> &'static str {
        "famo"
    }
    fn num_tasks(&self) -> usize {
        self.xi.len()
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        let losses = present(probe, "famo")?;
        if let Some(prev) = &self.latest {
            let delta: Vec<f64> = prev
                .iter()
                .zip(&losses)
                .map(|(p, l)| (p + FAMO_EPS_LOSS).ln() - (l + FAMO_EPS_LOSS).ln())
                .collect();
            let z = softmax(self.xi.iter().copied());
            let zd: f64 = z.iter().zip(&delta).map(|(a, b)| a * b).sum();
            let grad: Vec<f64> = z
                .iter()
                .zip(&delta)
                .zip(&self.xi)
                .map(|((zi, di), xi)| zi * (di - zd) + FAMO_DECAY * xi)
                .collect();
            self.adam_step(&grad);
        }
        self.latest = Some(losses);
        Ok(())
    }
    fn compute(&mut self, _step: u64) -> Computed {
        Computed::plain(match &self.latest {
            None => uniform(self.xi.len()),
            Some(l) => {
                let z = softmax(self.xi.iter().copied());
                normalize(
                    z.iter()
                        .zip(l)
                        .map(|(zi, li)| zi / (li + FAMO_EPS_LOSS))
                        .collect(),
                )
            }
        })
    }
}
