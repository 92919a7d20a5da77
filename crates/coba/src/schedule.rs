//! When weights are computed and when probes are taken (the replay order).

use crate::WeightError;
use serde::{Deserialize, Serialize};

/// The step schedule shared by every method, as pinned in the test vectors' README
/// ("Replay order") and followed by the trainer:
///
/// for every training step `c = 0, 1, ...`
/// 1. if `c >= W` and `c % U == 0` the weights are **computed** from the probes so far;
///    otherwise they are uniform (**warm-up**, before the first computation) or the last
///    computed ones (**carried**);
/// 2. training step `c` uses them;
/// 3. if `c >= 1` and `c % U == 0` a probe (validation losses after the update of step `c`) is
///    appended to the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// W: steps before the first computation (paper Section 3.1 recommends the number of
    /// validation batches). Any value >= 0 works.
    pub warmup_steps: u64,
    /// U: weights are computed, and probes taken, every U steps (U >= 1).
    pub update_interval: u64,
}

impl Schedule {
    /// A checked schedule.
    ///
    /// # Errors
    /// [`WeightError::InvalidSetting`] when `update_interval == 0`.
    pub fn new(warmup_steps: u64, update_interval: u64) -> Result<Self, WeightError> {
        if update_interval == 0 {
            return Err(WeightError::InvalidSetting {
                name: "update_interval",
                value: "0".into(),
                reason: "must be >= 1",
            });
        }
        Ok(Self {
            warmup_steps,
            update_interval,
        })
    }

    /// Whether the weights are (re)computed at the start of step `step`.
    pub fn is_compute_step(&self, step: u64) -> bool {
        step >= self.warmup_steps && step.is_multiple_of(self.update_interval)
    }

    /// Whether a probe is taken after the update of step `step`.
    pub fn is_probe_step(&self, step: u64) -> bool {
        step >= 1 && step.is_multiple_of(self.update_interval)
    }

    /// The 0-based number of the probe after step `step` (`step / U - 1`), `None` when no
    /// probe follows it.
    pub fn probe_index(&self, step: u64) -> Option<u64> {
        self.is_probe_step(step)
            .then(|| step / self.update_interval - 1)
    }
}

/// Where the weights of a step come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Before the first computation: uniform 1/K.
    Warmup,
    /// Computed at this step from the probes so far.
    Computed,
    /// The last computed weights, carried between computations (U >= 2).
    Carried,
}

impl Source {
    /// The lowercase name used in CSV output and the vectors (`warmup`/`computed`/`carried`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Warmup => "warmup",
            Source::Computed => "computed",
            Source::Carried => "carried",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_and_probe_steps() {
        let s = Schedule::new(3, 2).unwrap();
        let compute: Vec<u64> = (0..10).filter(|&c| s.is_compute_step(c)).collect();
        let probe: Vec<u64> = (0..10).filter(|&c| s.is_probe_step(c)).collect();
        assert_eq!(compute, vec![4, 6, 8]);
        assert_eq!(probe, vec![2, 4, 6, 8]);
    }

    #[test]
    fn zero_interval_is_an_error() {
        assert!(matches!(
            Schedule::new(0, 0),
            Err(WeightError::InvalidSetting {
                name: "update_interval",
                ..
            })
        ));
    }
}
