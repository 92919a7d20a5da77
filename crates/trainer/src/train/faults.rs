//! Test-only fault injection, resolved once from `[runtime]` (`inject_nan`,
//! `crash_in_checkpoint`): the loop's components receive a [`Faults`] value instead of
//! reading configuration keys, and a real run carries `Faults::default()` (nothing injected).
//! The end-to-end tests use them to check the clean NaN stop and the resume after a kill
//! during a checkpoint write.

use super::config::TrainConfig;
use anyhow::{bail, Result};
use model::TaskLoss;

/// What to break, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// (step, task index): rank 0's training-loss sum of that task becomes NaN at that step.
    pub nan_loss: Option<(u64, usize)>,
    /// Abort the process half-way through writing the checkpoint after this many steps.
    pub crash_in_checkpoint: Option<u64>,
}

impl Faults {
    /// The faults `[runtime]` asks for.
    ///
    /// # Errors
    /// `runtime.inject_nan.task` names no task.
    pub fn from_config(cfg: &TrainConfig) -> Result<Self> {
        let nan_loss = match &cfg.runtime.inject_nan {
            None => None,
            Some(inj) => match cfg.data.tasks.iter().position(|t| t.name == inj.task) {
                Some(i) => Some((inj.step, i)),
                None => bail!(
                    "key `runtime.inject_nan.task`: no task named `{}`",
                    inj.task
                ),
            },
        };
        Ok(Self {
            nan_loss,
            crash_in_checkpoint: cfg.runtime.crash_in_checkpoint,
        })
    }

    /// Makes the chosen task's local loss NaN on rank 0 at the chosen step.
    pub fn corrupt_loss(&self, step: u64, rank: usize, local: &mut [TaskLoss]) {
        if let Some((s, task)) = self.nan_loss {
            if s == step && rank == 0 {
                if let Some(l) = local.get_mut(task) {
                    l.nll_sum = f64::NAN;
                }
            }
        }
    }

    /// Whether the checkpoint after `steps_done` steps is to be cut short by an abort.
    pub fn crash_while_writing(&self, steps_done: u64) -> bool {
        self.crash_in_checkpoint == Some(steps_done)
    }
}
