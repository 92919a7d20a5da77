//! The checkpointer: decides after each step whether to write a checkpoint (every
//! `every_steps`, at the last step, when stopping on a signal or early stopping) and
//! `best/` (a new best evaluation), snapshots the trainer in memory and writes on one
//! background thread (at most one write in flight, in order), keeping the last `keep_last`.
//! Only rank 0 writes (parameters and optimizer state are identical on every rank).

use super::faults::Faults;
use super::state::{self, Snapshot};
use super::trainer::Trainer;
use crate::metrics::{per_task, PerTask};
use anyhow::{bail, Context, Result};
use model::CausalLm;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

/// `best/summary.json`: the evaluation that made the model the best so far (keys in
/// alphabetical order, as earlier versions wrote them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestSummary {
    /// Per-task `l_i(0)`.
    pub initial_val_loss: PerTask,
    /// The weighting method.
    pub method: String,
    /// Steps completed.
    pub step: u64,
    /// Per-task validation loss, nats/token.
    pub val_loss: PerTask,
    /// Mean validation-loss ratio.
    pub val_ratio_mean: Option<f64>,
}

/// Settings of `[checkpoint]` and what `best/` needs beside the weights.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// `output_dir`.
    pub output_dir: PathBuf,
    /// Write every this many steps (0: only at the end and when stopping).
    pub every_steps: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Copied into `best/`.
    pub tokenizer: PathBuf,
    /// `best/template.json` text.
    pub template_json: String,
    /// Test-only faults.
    pub faults: Faults,
}

/// Rank 0's checkpoint writer (a no-op on other ranks).
pub struct Checkpointer {
    settings: CheckpointSettings,
    writes: bool,
    writer: BackgroundWriter,
    last_saved: Option<u64>,
}

impl Checkpointer {
    /// A checkpointer for this rank; `resumed_at` is the step of the checkpoint the run
    /// resumed from (it exists already).
    pub fn new(settings: CheckpointSettings, rank: usize, resumed_at: Option<u64>) -> Self {
        Self {
            settings,
            writes: rank == 0,
            writer: BackgroundWriter::default(),
            last_saved: resumed_at,
        }
    }

    /// Whether the checkpoint after `steps_done` steps is due: the last step, a stop, or a
    /// multiple of `every_steps`.
    pub fn due(&self, steps_done: u64, last: bool, stopping: bool) -> bool {
        let every = self.settings.every_steps;
        last || stopping || (every > 0 && steps_done.is_multiple_of(every))
    }

    /// The step of the newest checkpoint written (or resumed from), if any.
    pub fn last_saved(&self) -> Option<u64> {
        self.last_saved
    }

    /// After a step: writes `best/` when `best` is given and the checkpoint when
    /// [`due`](Self::due), both from one snapshot, in the background.
    ///
    /// # Errors
    /// The snapshot fails, or the previous background write failed.
    pub fn after_step(
        &mut self,
        trainer: &Trainer<'_>,
        last: bool,
        stopping: bool,
        best: Option<BestSummary>,
    ) -> Result<()> {
        let steps_done = trainer.next_step();
        let save = self.due(steps_done, last, stopping);
        if save {
            // Every rank knows which checkpoint exists (rank 0 writes it).
            self.last_saved = Some(steps_done);
        }
        if !self.writes || !(save || best.is_some()) {
            return Ok(());
        }
        let snap = Arc::new(snapshot(trainer)?);
        if let Some(summary) = best {
            let (snap, out) = (snap.clone(), self.settings.output_dir.clone());
            let tok = self.settings.tokenizer.clone();
            let template = self.settings.template_json.clone();
            let summary = serde_json::to_string_pretty(&summary)?;
            self.writer.submit("best/".into(), move || {
                state::write_best(&out, &snap, &tok, &template, &summary)
            })?;
        }
        if save {
            let out = self.settings.output_dir.clone();
            let keep = self.settings.keep_last;
            let crash = self.settings.faults.crash_while_writing(steps_done);
            self.writer
                .submit(format!("checkpoint step {steps_done}"), move || {
                    state::write_checkpoint(&out, &snap, keep, crash).map(|_| ())
                })?;
        }
        Ok(())
    }

    /// Waits for the write in flight.
    ///
    /// # Errors
    /// That write failed.
    pub fn finish(&mut self) -> Result<()> {
        self.writer.wait()
    }
}

impl BestSummary {
    /// The summary of a new best evaluation after `step` steps.
    pub fn new(trainer: &Trainer<'_>, val_loss: &[f64], ratio_mean: f64) -> Self {
        let st = &trainer.state;
        let names = trainer.tasks();
        Self {
            step: st.next_step,
            val_ratio_mean: Some(ratio_mean),
            val_loss: per_task(names, val_loss.iter().map(|v| Some(*v))),
            initial_val_loss: per_task(names, st.initial_val_loss.iter().map(|v| Some(*v))),
            method: st.weighting.method.as_str().into(),
        }
    }
}

/// Deep copies of the parameters, the optimizer and the state (cheap next to a step).
fn snapshot(t: &Trainer<'_>) -> Result<Snapshot> {
    let tensors = t
        .model
        .params()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    let adapter = t
        .model
        .lora()
        .map(|l| model::checkpoint::AdapterConfig::new(&l.settings, t.base_model_path.clone()));
    Ok(Snapshot {
        adapter,
        config_json: t.model.config_json(),
        model_type: t.model.model_type().to_string(),
        dtype: t.model.dtype(),
        tensors,
        optimizer: t.opt.clone(),
        state: t.state.clone(),
    })
}

/// One background writer: a new job waits for the previous one (so at most one snapshot is
/// in flight and checkpoints land in order).
#[derive(Default)]
pub struct BackgroundWriter {
    pending: Option<(String, JoinHandle<Result<()>>)>,
}

impl BackgroundWriter {
    /// Waits for the write in flight, if any.
    ///
    /// # Errors
    /// The failed write's error (or a panic in it).
    pub fn wait(&mut self) -> Result<()> {
        if let Some((what, h)) = self.pending.take() {
            match h.join() {
                Ok(r) => r.with_context(|| format!("writing {what}"))?,
                Err(_) => bail!("writing {what}: the writer thread panicked"),
            }
        }
        Ok(())
    }

    /// Starts `job` on a thread after the previous job finished.
    ///
    /// # Errors
    /// The previous job's error.
    pub fn submit(
        &mut self,
        what: String,
        job: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.wait()?;
        self.pending = Some((what, std::thread::spawn(job)));
        Ok(())
    }
}

impl Drop for BackgroundWriter {
    /// An early return (an error, a NaN stop) still lets the write in flight finish: a
    /// checkpoint the log announced must exist.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("coba-dist: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpointer(every_steps: u64, rank: usize) -> Checkpointer {
        Checkpointer::new(
            CheckpointSettings {
                output_dir: PathBuf::from("/nonexistent"),
                every_steps,
                keep_last: 2,
                tokenizer: PathBuf::new(),
                template_json: String::new(),
                faults: Faults::default(),
            },
            rank,
            Some(4),
        )
    }

    #[test]
    fn due_at_multiples_the_last_step_and_a_stop() {
        let c = checkpointer(5, 0);
        let due: Vec<u64> = (1..=12).filter(|&s| c.due(s, false, false)).collect();
        assert_eq!(due, vec![5, 10]);
        assert!(c.due(7, true, false) && c.due(7, false, true));
        let end_only = checkpointer(0, 0);
        assert!(!(1..100).any(|s| end_only.due(s, false, false)));
        assert!(end_only.due(3, true, false));
        assert_eq!(c.last_saved(), Some(4));
    }
}
