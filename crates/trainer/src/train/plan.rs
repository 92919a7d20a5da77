//! The [`Plan`]: every setting the loop needs, derived once from the configuration and the
//! data (global batch, total steps, the weighting's W/H/U, the LR schedule, evaluation and
//! checkpoint cadence, faults).

use super::checkpointer::CheckpointSettings;
use super::config::{LrKind, TrainConfig};
use super::error::{RunError, Scoped};
use super::evaluate;
use super::faults::Faults;
use super::trainer::StepSettings;
use collectives::Communicator;
use data::dataset::Dataset;
use data::train::{Shard, TrainSampler};
use model::optim::LrSchedule;
use model::LossOptions;

/// Every setting of the loop, derived once from the configuration and the data.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This rank's place in the global batch.
    pub shard: Shard,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Full validation every this many steps (0: only at the end).
    pub eval_interval: u64,
    /// M: validation micro-batches of one full pass at the global batch size.
    pub validation_batches: u64,
    /// The weighting settings (W and H resolved from `"auto"`).
    pub weighting: coba::WeighterConfig,
    /// What a step needs.
    pub step: StepSettings,
    /// Validation samples per task in one probe.
    pub probe_samples_per_task: usize,
}

impl Plan {
    /// The plan of `cfg` for this rank, and the training-data sampler (which counts the
    /// steps of an `epochs` run; the trainer then draws from it).
    ///
    /// # Errors
    /// Invalid weighting settings or fault-injection keys, or a data error (bad input).
    pub fn new<'a>(
        cfg: &TrainConfig,
        comm: &dyn Communicator,
        ds: &'a Dataset,
    ) -> Result<(Self, TrainSampler<'a>), RunError> {
        let t = &cfg.train;
        let shard = Shard {
            rank: comm.rank(),
            world_size: comm.world_size(),
            micro_batch: t.micro_batch_size,
            grad_accum: t.grad_accum,
        };
        let dc = cfg.data_config();
        let mut sampler =
            TrainSampler::new(ds, dc.batch_mode, dc.mixing, dc.seed, shard.global_rows())
                .bad_input()?;
        let total_steps = if t.max_steps > 0 {
            t.max_steps
        } else {
            (0..t.epochs).map(|e| sampler.steps_in_epoch(e)).sum()
        };
        let validation_batches = evaluate::validation_batches(ds, shard.global_rows());
        let weighting = cfg.coba.weighter_config(validation_batches);
        // The weighter owns its schedule (W, U); `config::validate` and `coba::Weighter::new`
        // check the settings.
        let lr_schedule = match t.lr_schedule {
            LrKind::Cosine => LrSchedule::Cosine {
                max_lr: t.lr,
                min_lr: t.min_lr,
                warmup_steps: t.lr_warmup_steps,
                total_steps,
            },
            LrKind::Constant => LrSchedule::Constant {
                lr: t.lr,
                warmup_steps: t.lr_warmup_steps,
            },
        };
        let plan = Self {
            shard,
            total_steps,
            eval_interval: t.eval_interval,
            validation_batches,
            weighting,
            step: StepSettings {
                clip_grad_norm: t.clip_grad_norm,
                loss: LossOptions {
                    chunk_elems: t.loss_chunk_elems,
                },
                eval_micro_batch: cfg.eval_micro_batch(),
                lr_schedule,
                faults: Faults::from_config(cfg).bad_input()?,
            },
            probe_samples_per_task: dc.probe_samples_per_task,
        };
        Ok((plan, sampler))
    }

    /// Whether a full validation follows the step that completes `steps_done` steps.
    pub fn eval_due(&self, steps_done: u64) -> bool {
        steps_done == self.total_steps
            || (self.eval_interval > 0 && steps_done.is_multiple_of(self.eval_interval))
    }

    /// What the checkpointer needs.
    ///
    /// # Errors
    /// The template cannot be serialised.
    pub fn checkpoint_settings(&self, cfg: &TrainConfig) -> Result<CheckpointSettings, RunError> {
        Ok(CheckpointSettings {
            output_dir: cfg.output_dir.clone(),
            every_steps: cfg.checkpoint.every_steps,
            keep_last: cfg.checkpoint.keep_last,
            tokenizer: cfg.model.tokenizer.clone(),
            template_json: serde_json::to_string_pretty(&cfg.data.template).local()?,
            faults: self.step.faults.clone(),
        })
    }
}
