//! The distributed training loop: `coba-dist --config F`.
//!
//! [`run`] sets the job up ([`setup`], [`rank0_decisions`]) and then runs the loop of
//! ARCHITECTURE.md, one [`Trainer`] method per step (`tests/data/coba/README.md` gives the
//! replay order):
//! 1. [`Trainer::step`]: batches and the global per-task token counts (+ the stop flag),
//!    rank 0's weights broadcast, forward + backward of `Σ_i w_i L_i / Σ_{i present} w_i`
//!    (each token of task i scaled by `w_i / (N_i Σ w)`), gradients all-reduced (bucketed,
//!    name-sorted), clipped, AdamW with the scheduled LR;
//! 2. [`Trainer::probe`] after the update of a probe step (c >= 1, c % U == 0): a no-graph
//!    forward over `probe_samples_per_task` validation samples per task, observed by rank 0's
//!    weighter;
//! 3. [`Trainer::evaluate`] every `eval_interval` steps and at the end: the mean validation
//!    ratio selects `best/` and drives [`early_stopping`];
//! 4. the metrics record to rank 0's sinks ([`crate::metrics`]), then the [`checkpointer`].
//!
//! Before step 0 a full validation pass gives `l_i(0)`.

pub mod checkpointer;
pub mod config;
pub mod data_report;
pub mod device;
pub mod early_stopping;
pub mod error;
pub mod evaluate;
pub mod faults;
mod functional_eval;
mod grad_norms;
pub mod lock;
mod objective;
pub mod outcome;
pub mod plan;
pub mod progress;
pub mod rank0_decisions;
mod resume_rules;
pub mod setup;
pub mod signals;
pub mod state;
pub mod trainer;

use anyhow::Context;
use checkpointer::{BestSummary, Checkpointer};
use collectives::Communicator;
use config::TrainConfig;
use early_stopping::{EarlyStopping, Verdict};
pub use error::{AllRanks, RunError, Scope, Scoped};
use serde::{Deserialize, Serialize};
pub use setup::{build_model, load_data};
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use trainer::Trainer;

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The latest complete checkpoint in `output_dir/checkpoints`, or a fresh start if none.
    Auto,
    /// This checkpoint directory.
    Path(PathBuf),
}

/// What a finished run reports (also `output_dir/summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Optimizer steps completed.
    pub steps: u64,
    /// Why the run ended: `max_steps`, `early_stopping`, or `signal`.
    pub stopped_by: String,
    /// Tasks in id order.
    pub tasks: Vec<String>,
    /// `l_i(0)`, nats/token.
    pub initial_val_loss: Vec<f64>,
    /// Last full validation, nats/token.
    pub final_val_loss: Vec<f64>,
    /// Best mean validation-loss ratio and its step (steps completed).
    pub best: Option<(u64, f64)>,
    /// Wall time of this process's run, seconds.
    pub wall_time_s: f64,
    /// Weighting method.
    pub method: String,
    /// Ranks.
    pub world_size: usize,
    /// What the data pipeline kept, truncated, dropped and skipped per task, and the warnings
    /// logged at startup (absent in summaries of older versions).
    #[serde(default)]
    pub data: data_report::DataReport,
}

/// Runs the job on this rank (every rank of the job calls it).
///
/// # Errors
/// A [`RunError`] whose scope says whether every rank stops with it or the job aborts.
pub fn run(
    cfg: &TrainConfig,
    comm: &dyn Communicator,
    resume: Option<&Resume>,
) -> Result<Summary, RunError> {
    let t_start = Instant::now();
    let stop = signals::StopFlag::install()
        .context("installing SIGTERM/SIGUSR1 handlers")
        .local()?;
    let rank0 = comm.rank() == 0;
    setup::check_output_dir(cfg).bad_input()?;
    let _lock = rank0_decisions::lock_output_dir(&cfg.output_dir, comm)?;
    setup::preflight(cfg, resume).bad_input()?;
    let (enc, ds) = load_data(cfg).bad_input()?;
    let data_report = data_report::DataReport::new(&ds, cfg.data_config().probe_samples_per_task);
    if rank0 {
        data_report.log();
    }
    let (plan, sampler) = plan::Plan::new(cfg, comm, &ds)?;
    let ckpt = rank0_decisions::resolve_resume(cfg, comm, resume)?;
    let functional = functional_eval::DuringTraining::new(cfg, &enc)?;
    let vocab = enc.vocab_size();
    let mut trainer = setup::start(cfg, comm, &ds, vocab, &plan, sampler, ckpt.as_deref())?;
    let names = trainer.tasks().to_vec();
    let parameters = trainer.model_parameters();
    let mut sinks = match rank0 {
        true => Some(setup::open_sinks(
            cfg,
            &trainer,
            &plan,
            ckpt.is_some(),
            comm.world_size(),
        )?),
        false => None,
    };
    let first_step = trainer.next_step();
    let resumed_at = ckpt.is_some().then_some(first_step);
    let mut checkpointer =
        Checkpointer::new(plan.checkpoint_settings(cfg)?, comm.rank(), resumed_at);
    let early = EarlyStopping {
        patience: cfg.train.early_stopping_patience,
    };
    let progress =
        progress::Progress::new(rank0, plan.total_steps, first_step, cfg.train.log_interval);
    let mut stopped_by = "max_steps";
    let mut final_val = Vec::new();
    while trainer.next_step() < plan.total_steps {
        let stopping_note = |e| with_checkpoint_note(e, checkpointer.last_saved());
        let step = trainer.step(stop.raised()).map_err(stopping_note)?;
        let mut rec = step.record(&names, parameters);
        if let Some(p) = trainer.probe(step.step).map_err(stopping_note)? {
            p.fill(&mut rec, &names);
        }
        let done = trainer.next_step();
        let (mut verdict, mut best) = (Verdict::NoImprovement, None);
        if plan.eval_due(done) {
            let e = trainer.evaluate().map_err(stopping_note)?;
            let st = &mut trainer.state;
            verdict = early.observe(&mut st.best, &mut st.evals_since_best, done, e.ratio_mean);
            if verdict == Verdict::NewBest {
                best = Some(BestSummary::new(&trainer, &e.val_loss, e.ratio_mean));
            }
            e.fill(&mut rec, &names);
            if let Some(f) = &functional {
                f.run(&trainer.model, &enc, comm, &names, &mut rec)
                    .map_err(stopping_note)?;
            }
            log_evaluation(rank0, step.step, done, e.ratio_mean, best.is_some());
            final_val = e.val_loss;
        }
        if let Some(s) = sinks.as_mut() {
            s.step(&rec).local()?;
            trainer.state.metrics_offset = s.jsonl.offset();
            trainer.state.metrics_header_len = Some(s.jsonl.header_len());
        }
        let last = done == plan.total_steps;
        progress.step(&step, last);
        // The last step ends the run anyway: it ends by `max_steps`.
        let stopping = !last && (step.stop_requested || verdict == Verdict::Stop);
        checkpointer
            .after_step(&trainer, last, stopping, best)
            .local()?;
        if stopping {
            stopped_by = if step.stop_requested {
                "signal"
            } else {
                "early_stopping"
            };
            if rank0 {
                tracing::info!("stopping after step {}: {stopped_by}", step.step);
            }
            break;
        }
    }
    checkpointer.finish().local()?;
    progress.finish();
    comm.barrier()?;
    let st = &trainer.state;
    let summary = Summary {
        steps: st.next_step,
        stopped_by: stopped_by.into(),
        tasks: names,
        initial_val_loss: st.initial_val_loss.clone(),
        final_val_loss: final_val,
        best: st.best,
        wall_time_s: t_start.elapsed().as_secs_f64(),
        method: st.weighting.method.as_str().into(),
        world_size: comm.world_size(),
        data: data_report,
    };
    // A resumed run that had nothing left to do keeps the summary and plots it already has.
    if rank0 && st.next_step > first_step {
        write_summary(&cfg.output_dir, &summary).local()?;
    }
    Ok(summary)
}

/// A shared stop (NaN, ...) says which checkpoint a resume would start from.
fn with_checkpoint_note(e: RunError, last_saved: Option<u64>) -> RunError {
    if e.scope != Scope::AllRanks {
        return e;
    }
    let note = last_saved.map_or("no checkpoint was written yet".into(), |s| {
        format!("the last checkpoint (step {s}) is intact")
    });
    RunError {
        scope: e.scope,
        error: anyhow::anyhow!("{:#}; stopping every rank, {note}", e.error),
    }
}

fn log_evaluation(rank0: bool, step: u64, done: u64, mean: f64, new_best: bool) {
    if rank0 {
        tracing::info!(
            "after step {step} ({done} steps done): validation ratio mean {mean:.4}{}",
            if new_best { " (new best)" } else { "" }
        );
    }
}

/// `summary.json`, then the plots (a failed plot is a warning, never a failed run).
fn write_summary(out: &Path, summary: &Summary) -> anyhow::Result<()> {
    let p = out.join("summary.json");
    std::fs::write(&p, serde_json::to_string_pretty(summary)?)
        .with_context(|| format!("write {}", p.display()))?;
    if let Err(e) = write_plots(out) {
        tracing::warn!("plots not written: {e:#}");
    }
    Ok(())
}

/// `output_dir/plots/*.png` from `metrics.jsonl` (what `coba-dist plot` draws).
fn write_plots(out: &Path) -> anyhow::Result<()> {
    let metrics = crate::plot::RunMetrics::read(&out.join("metrics.jsonl"))?;
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let opts = crate::plot::draw::PlotOptions {
        label: out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Default::default()
    };
    let written = crate::plot::draw::write_plots(&metrics, &dir, &opts)?;
    tracing::info!("wrote {} plots in {}", written.len(), dir.display());
    Ok(())
}
