//! The [`Trainer`]: model, optimizer, weighter, samplers, communicator and state, with one
//! method per step of ARCHITECTURE.md's "One training step": [`Trainer::step`] (batches and
//! token counts, weights, forward/backward, all-reduce, clip, update), [`Trainer::probe`] and
//! [`Trainer::evaluate`]. Every rank calls the same methods in the same order; the methods run
//! the collectives, so their results are the same on every rank (rank 0 alone also holds the
//! weighter's intermediates).

use super::error::{RunError, Scoped};
use super::evaluate;
use super::faults::Faults;
use super::objective::{objective, token_scales};
pub use super::outcome::{EvalOutcome, ProbeOutcome, StepOutcome};
use super::state::TrainState;
use collectives::{all_reduce_named, BucketOptions, Communicator};
use data::dataset::Dataset;
use data::train::{Shard, TrainSampler};
use data::valid::ProbeSampler;
use model::optim::{accumulate, clip_grad_norm, global_norm, AdamW, LrSchedule};
use model::{CausalLm, Gradients, LossOptions, Model, TaskLoss, TokenBatch};
use std::time::Instant;

/// What a step needs besides its state, parsed once from the configuration.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// Clip the global gradient L2 norm to this (0: no clipping, the norm is still logged).
    pub clip_grad_norm: f64,
    /// The loss's chunking.
    pub loss: LossOptions,
    /// Rows per validation/probe micro-batch.
    pub eval_micro_batch: usize,
    /// The learning rate of each step.
    pub lr_schedule: LrSchedule,
    /// Test-only fault injection (none in a real run).
    pub faults: Faults,
}

/// The LoRA dropout keys of `rows` rows starting at global row `first` of step `step`: a
/// pure function of (seed, step, global row), so a row draws the same masks on any rank, in
/// any micro-batch, and again after a resume.
pub fn row_dropout_keys(seed: u64, step: u64, first: usize, rows: usize) -> Vec<u64> {
    use model::init::mix64;
    let per_step = mix64(mix64(seed ^ 0x4C6F_5241_4472_6F70) ^ step);
    (first..first + rows)
        .map(|r| mix64(per_step ^ r as u64))
        .collect()
}

/// Step `c`'s weights as received, rank 0's CoBa intermediates, seconds computing them and
/// seconds in the broadcast.
type WeightsReceived = (coba::WeightMessage, Option<coba::CobaExplain>, f64, f64);

/// The training job on one rank (built by `train::setup::start`).
pub struct Trainer<'a> {
    /// The model (its parameters are identical on every rank after each step).
    pub model: Model,
    /// AdamW and its moments.
    pub opt: AdamW,
    /// Everything else a checkpoint holds (cursor, weighter, best, metrics offset).
    pub state: TrainState,
    pub(super) comm: &'a dyn Communicator,
    pub(super) ds: &'a Dataset,
    pub(super) sampler: TrainSampler<'a>,
    pub(super) probe_sampler: ProbeSampler,
    pub(super) shard: Shard,
    pub(super) settings: StepSettings,
    /// Gradient layouts are checked on the first step of this process only.
    pub(super) layout_checked: bool,
    /// `model.path`, absolute (LoRA adapters name it as their base).
    pub base_model_path: Option<String>,
    /// GradNorm: the `G_i` measured in the last step, for the probe that follows it.
    pub(super) pending_grad_norms: Option<Vec<f64>>,
}

impl<'a> Trainer<'a> {
    /// The step [`step`](Self::step) runs next (= steps completed).
    pub fn next_step(&self) -> u64 {
        self.state.next_step
    }

    /// Parameters of the model without LoRA adapters (what `gflops_per_s` counts).
    pub fn model_parameters(&self) -> usize {
        self.model.base_num_parameters()
    }

    /// Task names in config order.
    pub fn tasks(&self) -> &[String] {
        &self.state.tasks
    }

    /// Step 1-4 of ARCHITECTURE.md for step `next_step()`: token counts (and `stop_requested`,
    /// this rank's stop flag) all-reduced; rank 0's weights broadcast; forward + backward of
    /// the weighted objective over the micro-batches; gradients and losses all-reduced; a
    /// non-finite loss or norm stops every rank; clip; AdamW with the scheduled LR; the data
    /// cursor advances.
    ///
    /// # Errors
    /// [`Scope::AllRanks`](super::error::Scope) for a non-finite loss or gradient norm and for
    /// data errors; local for collective, tensor and weighting failures.
    pub fn step(&mut self, stop_requested: bool) -> Result<StepOutcome, RunError> {
        let c = self.state.next_step;
        let k = self.ds.num_tasks();
        self.comm.set_step(c);
        let t0 = Instant::now();
        let mut comm_s = 0.0;

        // 1. Batches and global token counts (+ stop flag).
        let batches = self
            .sampler
            .rank_step(self.state.cursor, self.shard)
            .all_ranks()?;
        let mut counts = vec![0.0f64; k + 2];
        for b in &batches {
            for (i, n) in b.loss_tokens_per_task(k).iter().enumerate() {
                counts[i] += *n as f64;
            }
            counts[k] += b.segment_ids.iter().filter(|&&s| s != 0).count() as f64;
        }
        counts[k + 1] = f64::from(u8::from(stop_requested));
        let tc = Instant::now();
        self.comm.all_reduce_sum_f64(&mut counts)?;
        comm_s += tc.elapsed().as_secs_f64();

        // 2. Weights from rank 0.
        let (msg, explain, weight_s, bcast_s) = self.weights(c)?;
        comm_s += bcast_s;
        let scale = token_scales(&msg.weights, &counts[..k]);

        // 3. Forward + backward over the micro-batches.
        let mut grads = Gradients::new();
        let mut local = vec![TaskLoss::default(); k];
        let dropout = self.model.lora().is_some_and(|l| l.settings.dropout > 0.0);
        let first_row = self.shard.rank * self.shard.micro_batch * self.shard.grad_accum;
        for (m, b) in batches.iter().enumerate() {
            let mut tb = TokenBatch::from(b);
            if dropout {
                let row0 = first_row + m * self.shard.micro_batch;
                tb.dropout_keys = row_dropout_keys(self.state.seed, c, row0, b.rows);
            }
            let out = self
                .model
                .forward_backward(&tb, &scale, self.settings.loss)?;
            accumulate(&mut grads, out.grads)?;
            for (l, r) in local.iter_mut().zip(&out.report.per_task) {
                l.add(r);
            }
        }
        self.settings
            .faults
            .corrupt_loss(c, self.comm.rank(), &mut local);

        // GradNorm's per-task head gradient norms, before the update (probe steps only).
        self.pending_grad_norms = None;
        if self.state.weighting.method == coba::MethodKind::Gradnorm
            && self.state.weighter.is_probe_step(c)
        {
            let norms =
                super::grad_norms::head_grad_norms(&self.model, &batches, &counts[..k], self.comm)
                    .local()?;
            self.pending_grad_norms = Some(norms);
        }

        // 4. Reduce, check, clip, update.
        let tc = Instant::now();
        let mut list: Vec<(String, candle_core::Tensor)> = grads.into_iter().collect();
        let options = BucketOptions {
            // Layouts are checked once per process (names/shapes never change).
            check_layout: !self.layout_checked,
            ..BucketOptions::default()
        };
        all_reduce_named(self.comm, &mut list, &options)?;
        self.layout_checked = true;
        evaluate::all_reduce_losses(self.comm, &mut local).local()?;
        comm_s += tc.elapsed().as_secs_f64();
        let mut grads: Gradients = list.into_iter().collect();
        if let Some(i) = local.iter().position(|l| !l.nll_sum.is_finite()) {
            return Err(RunError::all_ranks(format!(
                "non-finite training loss at step {c} for task `{}` ({})",
                self.state.tasks[i], local[i].nll_sum
            )));
        }
        let grad_norm = if self.settings.clip_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, self.settings.clip_grad_norm)?
        } else {
            global_norm(&grads)?
        };
        if !grad_norm.is_finite() {
            return Err(RunError::all_ranks(format!(
                "non-finite gradient norm at step {c}"
            )));
        }
        let lr = self.settings.lr_schedule.lr(c);
        self.opt.step(self.model.params(), &grads, lr).local()?;
        drop(grads);
        self.state.cursor = self.sampler.advance(self.state.cursor);
        self.state.next_step = c + 1;

        let train_loss: Vec<Option<f64>> = local
            .iter()
            .map(|l| (l.tokens > 0).then(|| l.mean()))
            .collect();
        if self.state.weighting.signal == coba::Signal::Train {
            let last = &mut self.state.last_train_loss;
            last.resize(train_loss.len(), None);
            for (kept, now) in last.iter_mut().zip(&train_loss) {
                if now.is_some() {
                    *kept = *now;
                }
            }
        }
        Ok(StepOutcome {
            step: c,
            lr,
            loss: objective(&msg.weights, &train_loss),
            train_loss,
            weights: msg,
            explain,
            grad_norm,
            tokens: counts[k],
            stop_requested: counts[k + 1] > 0.0,
            step_time_s: t0.elapsed().as_secs_f64(),
            comm_time_s: comm_s,
            weight_time_s: weight_s,
            head_grad_norms: self.pending_grad_norms.clone(),
        })
    }

    /// Rank 0's weighter gives step `c`'s weights; every rank receives them and checks the
    /// step. Returns the message, (rank 0) CoBa's intermediates, and the seconds spent
    /// computing and broadcasting.
    fn weights(&mut self, c: u64) -> Result<WeightsReceived, RunError> {
        let k = self.ds.num_tasks();
        let mut buf = vec![0.0f64; coba::WeightMessage::encoded_len(k)];
        let mut explain = None;
        let tw = Instant::now();
        if self.comm.rank() == 0 {
            let w = self
                .state
                .weighter
                .weights_for_step(c)
                .map_err(|e| anyhow::anyhow!("weights for step {c}: {e}"))
                .local()?;
            buf = coba::WeightMessage::from(&w).encode();
            explain = w.explain;
        }
        let weight_s = tw.elapsed().as_secs_f64();
        let tc = Instant::now();
        self.comm.broadcast_f64(&mut buf, 0)?;
        let bcast_s = tc.elapsed().as_secs_f64();
        let msg = coba::WeightMessage::decode(&buf, c)
            .map_err(|e| anyhow::anyhow!("rank 0's weight broadcast: {e}"))
            .local()?;
        Ok((msg, explain, weight_s, bcast_s))
    }

    /// Step 5: the probe after the update of step `step`, when the weighting schedule has
    /// one there (`None` otherwise): a no-graph forward over this probe's validation samples,
    /// reduced over ranks, observed by rank 0's weighter.
    ///
    /// # Errors
    /// A non-finite probe loss (every rank); local for model, collective or weighter errors.
    pub fn probe(&mut self, step: u64) -> Result<Option<ProbeOutcome>, RunError> {
        let Some(index) = self.state.weighter.probe_index(step) else {
            return Ok(None);
        };
        let tp = Instant::now();
        let k = self.ds.num_tasks();
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let signal = self.state.weighting.signal;
        let losses: Vec<Option<f64>> = match signal {
            // The step's training losses (identical on every rank after the all-reduce), a
            // task absent from the batch at its latest value.
            coba::Signal::Train => {
                let mut l = self.state.last_train_loss.clone();
                l.resize(k, None);
                l
            }
            coba::Signal::Valid => {
                let pb = self.probe_sampler.rank_batches(
                    self.ds,
                    index,
                    rank,
                    world,
                    self.settings.eval_micro_batch,
                );
                let mut sums =
                    evaluate::local_sums(&self.model, &pb, k, self.settings.loss).local()?;
                evaluate::all_reduce_losses(self.comm, &mut sums).local()?;
                sums.iter()
                    .map(|l| (l.tokens > 0).then(|| l.mean()))
                    .collect()
            }
        };
        if let Some(i) = losses
            .iter()
            .position(|l| l.is_some_and(|v| !v.is_finite()))
        {
            return Err(RunError::all_ranks(format!(
                "non-finite probe loss after step {step} for task `{}`",
                self.state.tasks[i]
            )));
        }
        let ratios = if rank == 0 {
            let r = self
                .state
                .weighter
                .observe_probe_with_grads(step, &losses, self.pending_grad_norms.as_deref())
                .map_err(|e| anyhow::anyhow!("probe after step {step}: {e}"))
                .local()?;
            Some(r)
        } else {
            None
        };
        Ok(Some(ProbeOutcome {
            losses,
            signal,
            ratios,
            time_s: tp.elapsed().as_secs_f64(),
        }))
    }

    /// Step 6: a full validation pass over every task's validation split, split across
    /// ranks, and the mean ratio to `l_i(0)`.
    ///
    /// # Errors
    /// A non-finite mean ratio (every rank); local for model or collective errors.
    pub fn evaluate(&self) -> Result<EvalOutcome, RunError> {
        let te = Instant::now();
        let v = evaluate::full_validation(
            &self.model,
            self.ds,
            self.comm,
            self.settings.eval_micro_batch,
            self.settings.loss,
        )
        .local()?;
        let val_loss: Vec<f64> = v.iter().map(TaskLoss::mean).collect();
        let ratio_mean = val_loss
            .iter()
            .zip(&self.state.initial_val_loss)
            .map(|(l, i)| l / i)
            .sum::<f64>()
            / val_loss.len().max(1) as f64;
        if !ratio_mean.is_finite() {
            return Err(RunError::all_ranks(format!(
                "non-finite validation loss after step {}",
                self.state.next_step.saturating_sub(1)
            )));
        }
        Ok(EvalOutcome {
            val_loss,
            ratio_mean,
            time_s: te.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keys_belong_to_global_rows() {
        // 2 ranks x micro-batch 2 cut the same global rows as 1 rank x micro-batch 4.
        let one = row_dropout_keys(7, 3, 0, 4);
        let mut two = row_dropout_keys(7, 3, 0, 2);
        two.extend(row_dropout_keys(7, 3, 2, 2));
        assert_eq!(one, two);
        assert_ne!(
            one,
            row_dropout_keys(7, 4, 0, 4),
            "another step, other masks"
        );
        assert_ne!(
            one,
            row_dropout_keys(8, 3, 0, 4),
            "another seed, other masks"
        );
    }
}
