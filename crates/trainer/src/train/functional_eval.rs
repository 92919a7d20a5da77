//! Pass@1 and accuracy during training (`[eval] metrics`): at every full validation, the
//! current model generates greedy completions for a fixed, evenly spaced subset of each
//! task's held-out problems (sharded over ranks), rank 0 runs them in the sandbox, and the
//! per-task scores go into the step's record (`pass_at_1`, `accuracy`).

use super::config::TrainConfig;
use super::error::{RunError, Scoped};
use crate::functional::{self, generate, JudgeOptions};
use crate::metrics::record::{per_task, StepRecord};
use ::data::tokenize::Encoder;
use codeexec::{Metric, Problem, TimeLimits, ToolchainOptions};
use collectives::Communicator;
use model::Model;
use std::time::Instant;

/// The problems and settings of the evaluation (loaded once at startup).
pub struct DuringTraining {
    problems: Vec<Problem>,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
    gen_batch: usize,
    opts: JudgeOptions,
}

impl DuringTraining {
    /// `None` when `[eval] metrics` is empty; else the problems of the configured tasks
    /// (every rank loads them: each generates its share).
    ///
    /// # Errors
    /// Bad settings or a malformed bundle (bad input, every rank).
    pub fn new(cfg: &TrainConfig, enc: &Encoder) -> Result<Option<Self>, RunError> {
        let metrics = cfg.eval.parsed().map_err(anyhow::Error::msg).bad_input()?;
        if metrics.is_empty() {
            return Ok(None);
        }
        let problems = functional::problems::load(
            &cfg.data.tasks,
            &cfg.eval.data,
            &metrics,
            Some(cfg.eval.max_problems_per_task),
        )
        .bad_input()?;
        if problems.is_empty() {
            return Err(anyhow::anyhow!(
                "[eval] metrics: none of the tasks has problems in {} for {:?}",
                cfg.eval.data.display(),
                cfg.eval.metrics
            ))
            .bad_input();
        }
        let mut stop_ids = vec![enc.eos_id()];
        stop_ids.extend(generate::tokenizer_eos(
            enc.tokenizer(),
            &cfg.model.tokenizer,
        ));
        stop_ids.dedup();
        Ok(Some(Self {
            problems,
            stop_ids,
            max_new_tokens: cfg.eval.max_new_tokens,
            gen_batch: cfg.eval.gen_batch,
            opts: JudgeOptions {
                jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
                limits: TimeLimits {
                    run_seconds: cfg.eval.timeout_s,
                    ..TimeLimits::default()
                },
                toolchain: ToolchainOptions::default(),
                verbose: false,
            },
        }))
    }

    /// Generates on every rank, judges on rank 0 and fills `pass_at_1` / `accuracy` /
    /// `functional_eval_time_s` of rank 0's record.
    ///
    /// # Errors
    /// A generation, gather or sandbox failure (this rank).
    pub fn run(
        &self,
        model: &Model,
        enc: &Encoder,
        comm: &dyn Communicator,
        names: &[String],
        rec: &mut StepRecord,
    ) -> Result<(), RunError> {
        let t = Instant::now();
        let refs: Vec<&Problem> = self.problems.iter().collect();
        let mine = generate::generate_shard(
            model,
            enc,
            &self.stop_ids,
            &refs,
            self.max_new_tokens,
            self.gen_batch,
            comm,
        )
        .local()?;
        let Some(all) = generate::gather(comm, mine).local()? else {
            return Ok(());
        };
        let texts: Vec<&str> = all.iter().map(|g| g.completion.as_str()).collect();
        let judged = functional::judge(&self.problems, &texts, &self.opts).local()?;
        let scores = functional::task_scores(&judged.rows);
        let column = |m: Metric| {
            scores
                .get(&m)
                .map(|by_task| per_task(names, names.iter().map(|n| by_task.get(n).copied())))
        };
        rec.pass_at_1 = column(Metric::PassAt1);
        rec.accuracy = column(Metric::Accuracy);
        rec.functional_eval_time_s = Some(t.elapsed().as_secs_f64());
        Ok(())
    }
}
