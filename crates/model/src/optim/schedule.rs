//! Learning-rate schedules: linear warm-up, then cosine decay to `min_lr`, or constant.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule, a function of the 0-based optimizer step.
///
/// Warm-up is linear and reaches the peak on the last warm-up step: step `s < warmup_steps`
/// gets `peak * (s + 1) / warmup_steps` (so the first step never has a zero rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Warm-up, then `lr` for ever.
    Constant {
        /// Peak (and final) rate.
        lr: f64,
        /// Warm-up steps (0 for none).
        #[serde(default)]
        warmup_steps: u64,
    },
    /// Warm-up to `max_lr`, then half a cosine down to `min_lr` at `total_steps`, then
    /// `min_lr` (MFTCoder's schedule; `min_lr = 0` is HF's `cosine`).
    Cosine {
        /// Peak rate.
        max_lr: f64,
        /// Final rate.
        #[serde(default)]
        min_lr: f64,
        /// Warm-up steps (0 for none).
        #[serde(default)]
        warmup_steps: u64,
        /// Step at which the decay reaches `min_lr`.
        total_steps: u64,
    },
}

impl LrSchedule {
    /// One line for messages, e.g. `cosine from 2e-5 to 0 after 10 warm-up steps over 400
    /// steps` or `constant 1e-2 after 0 warm-up steps`.
    pub fn describe(&self) -> String {
        match *self {
            LrSchedule::Constant { lr, warmup_steps } => {
                format!("constant {lr:e} after {warmup_steps} warm-up steps")
            }
            LrSchedule::Cosine {
                max_lr,
                min_lr,
                warmup_steps,
                total_steps,
            } => format!(
                "cosine from {max_lr:e} to {min_lr:e} after {warmup_steps} warm-up steps over \
                 {total_steps} steps"
            ),
        }
    }

    /// The learning rate of 0-based optimizer step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        let warm = |peak: f64, w: u64| -> Option<f64> {
            (step < w).then(|| peak * (step + 1) as f64 / w as f64)
        };
        match *self {
            LrSchedule::Constant { lr, warmup_steps } => warm(lr, warmup_steps).unwrap_or(lr),
            LrSchedule::Cosine {
                max_lr,
                min_lr,
                warmup_steps,
                total_steps,
            } => warm(max_lr, warmup_steps).unwrap_or_else(|| {
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr + 0.5 * (max_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
        }
    }
}
