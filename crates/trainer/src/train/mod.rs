//! The distributed training loop: `coba-dist --config F`.
//!
//! One optimizer step `c` (issue "training loop", and the replay order of
//! `tests/data/coba/README.md`):
//! 1. every rank cuts its shard of global batch `c` into `grad_accum` micro-batches; per-task
//!    loss-token counts (and the stop flag) are all-reduced first, so each task's loss is its
//!    token mean over the whole global batch;
//! 2. rank 0 asks the [`coba::Weighter`] for step `c`'s weights and broadcasts them with `c`
//!    (every rank checks the step);
//! 3. forward + backward of `Σ_i w_i L_i / Σ_{i present} w_i`, with each token of task i
//!    scaled by `w_i / (N_i Σ w)` (N_i = the task's global token count), so gradients summed
//!    over micro-batches and ranks are exactly the global objective's;
//! 4. gradients all-reduced (sum, bucketed, name-sorted), clipped, AdamW with the scheduled LR;
//! 5. after the update of a probe step (c >= 1, c % U == 0) the probe: a no-graph forward over
//!    `probe_samples_per_task` validation samples per task, reduced over ranks, observed by
//!    rank 0's weighter;
//! 6. every `eval_interval` steps a full validation: the mean validation-loss ratio selects
//!    `best/` and drives early stopping;
//! 7. metrics line (rank 0), checkpoint every `every_steps` (background thread).
//!
//! Before step 0 a full validation pass gives `l_i(0)`.

pub mod config;
pub mod data_report;
pub mod early_stopping;
pub mod evaluate;
pub mod lock;
pub mod metrics;
mod resume_rules;
pub mod signals;
pub mod state;

use crate::checkpoint::load_model;
use crate::model::{CausalLm, Gradients, Llama, LlamaConfig, LossOptions, Model, TaskLoss};
use crate::optim::{accumulate, clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use collectives::{all_reduce_named, BucketOptions, Communicator};
use config::{LrKind, TrainConfig};
use data::dataset::Dataset;
use data::tokenize::Encoder;
use data::train::{Cursor, Shard, TrainSampler};
use data::valid::ProbeSampler;
use metrics::{per_task, MetricsWriter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use state::{BackgroundWriter, Snapshot, TrainState};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The latest complete checkpoint in `output_dir/checkpoints`, or a fresh start if none.
    Auto,
    /// This checkpoint directory.
    Path(PathBuf),
}

/// An error every rank hits at the same point with the same data (a NaN loss, bad data):
/// ranks exit together without aborting the job. `bad_input` marks the user's input at fault
/// (data, tokenizer, model path, config/checkpoint mismatch: exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct AllRanks {
    /// What went wrong.
    pub error: anyhow::Error,
    /// The input (files, settings) is at fault.
    pub bad_input: bool,
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

fn all_ranks(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(AllRanks {
        error: e.into(),
        bad_input: false,
    })
}

fn bad_input(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(AllRanks {
        error: e.into(),
        bad_input: true,
    })
}

/// Builds or loads the model of `[model]` (f32 on CPU).
///
/// # Errors
/// Unreadable checkpoint, invalid architecture, or a vocabulary smaller than the tokenizer's.
pub fn build_model(cfg: &TrainConfig, tokenizer_vocab: usize) -> Result<Model> {
    let device = Device::Cpu;
    let model: Model = match (&cfg.model.path, &cfg.model.arch) {
        (Some(p), _) => load_model(p, DType::F32, &device)
            .with_context(|| format!("loading model.path {}", p.display()))?,
        (None, Some(a)) => {
            let d = a.hidden_size;
            let mut lc = LlamaConfig::tiny(
                a.vocab_size.unwrap_or(tokenizer_vocab),
                d,
                a.num_hidden_layers,
                a.num_attention_heads,
                a.num_key_value_heads.unwrap_or(a.num_attention_heads),
            );
            lc.model_type = a.model_type.clone();
            lc.intermediate_size = a
                .intermediate_size
                .unwrap_or_else(|| (8 * d / 3).div_ceil(64) * 64);
            lc.rope_theta = a.rope_theta;
            lc.tie_word_embeddings = a.tie_word_embeddings;
            lc.rms_norm_eps = 1e-5;
            lc.max_position_embeddings = cfg.data.max_seq_len.max(512);
            Llama::new_random(lc, cfg.train.seed, a.init_std, DType::F32, &device)
                .context("[model.arch]")?
                .into()
        }
        (None, None) => bail!("key `model.path`: give model.path or a [model.arch] block"),
    };
    if model.vocab_size() < tokenizer_vocab {
        bail!(
            "the model's vocabulary ({}) is smaller than the tokenizer's ({tokenizer_vocab}): \
             check model.tokenizer",
            model.vocab_size()
        );
    }
    Ok(model)
}

/// Loads the tokenizer and the tasks of a configuration (through the tokenization cache).
///
/// # Errors
/// Data errors name the file, line and field.
pub fn load_data(cfg: &TrainConfig) -> Result<(Encoder, Dataset)> {
    let dc = cfg.data_config();
    let enc = Encoder::from_file(&cfg.model.tokenizer, &dc.template)?;
    let ds = data::dataset::load(&dc, &enc)?;
    Ok((enc, ds))
}

/// Runs the job on this rank (every rank of the job calls it).
///
/// # Errors
/// Errors wrapped in [`AllRanks`] happened identically on every rank; any other error is
/// local to this rank (the caller should abort the job).
pub fn run(cfg: &TrainConfig, comm: &dyn Communicator, resume: Option<&Resume>) -> Result<Summary> {
    let t_start = Instant::now();
    let stop = signals::StopFlag::install().context("installing SIGTERM/SIGUSR1 handlers")?;
    let rank0 = comm.rank() == 0;
    let out = &cfg.output_dir;
    check_output_dir(cfg).map_err(bad_input)?;
    let _lock = lock_output_dir(out, comm)?;
    preflight(cfg, resume).map_err(bad_input)?;
    let (enc, ds) = load_data(cfg).map_err(bad_input)?;
    let data_report = data_report::DataReport::new(&ds, cfg.data_config().probe_samples_per_task);
    if rank0 {
        data_report.log();
    }
    let k = ds.num_tasks();
    let names: Vec<String> = ds.tasks.iter().map(|t| t.name.clone()).collect();
    let mut model = build_model(cfg, enc.vocab_size()).map_err(bad_input)?;
    let t = &cfg.train;
    let shard = Shard {
        rank: comm.rank(),
        world_size: comm.world_size(),
        micro_batch: t.micro_batch_size,
        grad_accum: t.grad_accum,
    };
    let dc = cfg.data_config();
    let mut sampler =
        TrainSampler::new(&ds, dc.batch_mode, dc.mixing, dc.seed, shard.global_rows())
            .map_err(bad_input)?;
    let total_steps = if t.max_steps > 0 {
        t.max_steps
    } else {
        (0..t.epochs).map(|e| sampler.steps_in_epoch(e)).sum()
    };
    let m_batches = evaluate::validation_batches(&ds, shard.global_rows());
    let wcfg = cfg.coba.weighter_config(m_batches);
    let schedule = coba::Schedule::new(wcfg.warmup_steps, wcfg.update_interval)
        .map_err(|e| all_ranks(anyhow!("[coba]: {e}")))?;
    let probe_sampler = ProbeSampler::new(&ds, dc.probe_samples_per_task, dc.seed);
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
    let loss_opts = LossOptions {
        chunk_elems: t.loss_chunk_elems,
    };
    let eval_mb = cfg.eval_micro_batch();

    // Resume or start.
    let ckpt = resolve_resume(cfg, comm, resume)?;
    let (mut opt, mut st) = match &ckpt {
        Some(dir) => {
            let st = state::read_state(dir).map_err(bad_input)?;
            let kept = resume_rules::Kept {
                names: &names,
                global_rows: shard.global_rows(),
                wcfg: &wcfg,
                probe_per_task: dc.probe_samples_per_task,
                total_steps,
            };
            resume_rules::check_kept(&st, &kept, dir).map_err(bad_input)?;
            resume_rules::check_schedule(&st, &lr_schedule, total_steps, dir).map_err(bad_input)?;
            let saved = load_model(dir, DType::F32, &Device::Cpu)
                .with_context(|| format!("loading {}", dir.display()))
                .map_err(all_ranks)?;
            resume_rules::check_architecture(&model, &saved, dir).map_err(bad_input)?;
            model = saved;
            let opt = AdamW::load(dir, &Device::Cpu).map_err(all_ranks)?;
            if rank0 {
                tracing::info!(
                    "resuming from {} (step {}, written by {} ranks)",
                    dir.display(),
                    st.next_step,
                    st.world_size
                );
            }
            (opt, st)
        }
        None => {
            let initial = evaluate::full_validation(&model, &ds, comm, eval_mb, loss_opts)?;
            let initial: Vec<f64> = initial.iter().map(TaskLoss::mean).collect();
            let weighter = coba::Weighter::new(&wcfg, &initial)
                .map_err(|e| all_ranks(anyhow!("initial validation: {e}")))?;
            let st = TrainState {
                version: state::STATE_VERSION,
                next_step: 0,
                cursor: Cursor::default(),
                tasks: names.clone(),
                global_rows: shard.global_rows(),
                world_size: comm.world_size(),
                initial_val_loss: initial,
                weighter,
                weighting: wcfg,
                best: None,
                evals_since_best: 0,
                metrics_offset: 0,
                seed: t.seed,
                // Set below for fresh and resumed runs alike.
                lr_schedule: None,
                total_steps: None,
                metrics_header_len: None,
                probe_samples_per_task: None,
            };
            let opt = AdamW::new(AdamWConfig {
                beta1: t.beta1,
                beta2: t.beta2,
                eps: t.eps,
                weight_decay: t.weight_decay,
            });
            (opt, st)
        }
    };
    let n_params = model.num_parameters();
    st.lr_schedule = Some(lr_schedule);
    st.total_steps = Some(total_steps);
    st.probe_samples_per_task = Some(dc.probe_samples_per_task);
    // The ranks of this run write the next checkpoints (the global batch is what must stay).
    st.world_size = comm.world_size();
    let mut metrics = if rank0 {
        std::fs::write(out.join("config.toml"), cfg.to_toml())
            .with_context(|| format!("write {}", out.join("config.toml").display()))?;
        let mut w = MetricsWriter::open(
            &out.join("metrics.jsonl"),
            st.metrics_offset,
            st.metrics_header_len,
        )?;
        // The header itself says what it holds (a resume from an older checkpoint may follow
        // a rewrite): rewrite it whenever it disagrees with this run.
        let total_changed = w
            .header_value("total_steps")
            .and_then(|v| v.as_u64())
            .filter(|&was| ckpt.is_some() && was != total_steps);
        if let Some(was) = total_changed {
            tracing::info!(
                "resuming with {total_steps} total steps instead of {was}: the learning rate \
                 of every step stays the same ({}), so this equals an uninterrupted run of the \
                 new configuration; metrics.jsonl's header now says total_steps {total_steps}",
                lr_schedule.describe()
            );
            w.update_header("total_steps", json!(total_steps))?;
        }
        if ckpt.is_none() {
            w.write(&json!({
                "initial_val_loss": per_task(&names, st.initial_val_loss.iter().map(|v| Some(*v))),
                "tasks": names,
                "world_size": comm.world_size(),
                "method": wcfg.method.as_str(),
                "global_batch_rows": shard.global_rows(),
                "parameters": n_params,
                "total_steps": total_steps,
                "validation_batches": m_batches,
                "warmup_steps": wcfg.warmup_steps,
                "history_length": wcfg.history_length,
                "update_interval": wcfg.update_interval,
            }))?;
        }
        tracing::info!(
            "{} parameters, {} tasks, {} steps of {} rows on {} rank(s); method {}, W = {}, H = {}, U = {}",
            n_params,
            k,
            total_steps,
            shard.global_rows(),
            comm.world_size(),
            wcfg.method,
            wcfg.warmup_steps,
            wcfg.history_length,
            wcfg.update_interval
        );
        Some(w)
    } else {
        None
    };
    let mut writer = BackgroundWriter::default();
    let progress = rank0.then(|| progress_bar(total_steps, st.next_step));
    let mut stopped_by = "max_steps".to_string();
    let mut final_val: Vec<f64> = Vec::new();
    let mut last_saved = if ckpt.is_some() {
        Some(st.next_step)
    } else {
        None
    };

    let first_step = st.next_step;
    while st.next_step < total_steps {
        let c = st.next_step;
        comm.set_step(c);
        let t0 = Instant::now();
        let mut comm_s = 0.0;

        // 1. Batches and global token counts (+ stop flag).
        let batches = sampler.rank_step(st.cursor, shard).map_err(all_ranks)?;
        let mut counts = vec![0.0f64; k + 2];
        for b in &batches {
            for (i, n) in b.loss_tokens_per_task(k).iter().enumerate() {
                counts[i] += *n as f64;
            }
            counts[k] += b.segment_ids.iter().filter(|&&s| s != 0).count() as f64;
        }
        counts[k + 1] = f64::from(u8::from(stop.raised()));
        let tc = Instant::now();
        comm.all_reduce_sum_f64(&mut counts)?;
        comm_s += tc.elapsed().as_secs_f64();
        let signalled = counts[k + 1] > 0.0;

        // 2. Weights from rank 0.
        let mut wbuf = vec![0.0f64; coba::WeightMessage::encoded_len(k)];
        let mut sw = None;
        let mut weight_s = 0.0;
        if rank0 {
            let tw = Instant::now();
            let w = st
                .weighter
                .weights_for_step(c)
                .map_err(|e| anyhow!("weights for step {c}: {e}"))?;
            wbuf = coba::WeightMessage::from(&w).encode();
            sw = Some(w);
            weight_s = tw.elapsed().as_secs_f64();
        }
        let tc = Instant::now();
        comm.broadcast_f64(&mut wbuf, 0)?;
        comm_s += tc.elapsed().as_secs_f64();
        let msg = coba::WeightMessage::decode(&wbuf, c).context("rank 0's weight broadcast")?;
        let weights = &msg.weights;
        let present_w: f64 = (0..k)
            .filter(|&i| counts[i] > 0.0)
            .map(|i| weights[i])
            .sum();
        let scale: Vec<f64> = (0..k)
            .map(|i| {
                if counts[i] > 0.0 && present_w > 0.0 {
                    weights[i] / (counts[i] * present_w)
                } else {
                    0.0
                }
            })
            .collect();

        // 3. Forward + backward over the micro-batches.
        let mut grads = Gradients::new();
        let mut local = vec![TaskLoss::default(); k];
        for b in &batches {
            let out =
                model.forward_backward(&crate::model::TokenBatch::from(b), &scale, loss_opts)?;
            accumulate(&mut grads, out.grads)?;
            for (l, r) in local.iter_mut().zip(&out.report.per_task) {
                l.add(r);
            }
        }
        if let Some(inj) = &cfg.runtime.inject_nan {
            if inj.step == c && rank0 {
                if let Some(i) = names.iter().position(|n| *n == inj.task) {
                    local[i].nll_sum = f64::NAN;
                }
            }
        }

        // 4. Reduce, check, clip, update.
        let tc = Instant::now();
        let mut list: Vec<(String, Tensor)> = grads.into_iter().collect();
        all_reduce_named(
            comm,
            &mut list,
            &BucketOptions {
                // Layouts are checked once per process (names/shapes never change).
                check_layout: c == first_step,
                ..BucketOptions::default()
            },
        )?;
        evaluate::all_reduce_losses(comm, &mut local)?;
        comm_s += tc.elapsed().as_secs_f64();
        let mut grads: Gradients = list.into_iter().collect();
        if let Some(i) = local.iter().position(|l| !l.nll_sum.is_finite()) {
            return Err(all_ranks(anyhow!(
                "non-finite training loss at step {c} for task `{}` ({}); stopping every rank, \
                 {}",
                names[i],
                local[i].nll_sum,
                last_saved.map_or("no checkpoint was written yet".into(), |s| format!(
                    "the last checkpoint (step {s}) is intact"
                ))
            )));
        }
        let grad_norm = if t.clip_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, t.clip_grad_norm)?
        } else {
            crate::optim::global_norm(&grads)?
        };
        if !grad_norm.is_finite() {
            return Err(all_ranks(anyhow!(
                "non-finite gradient norm at step {c}; stopping every rank"
            )));
        }
        let lr = lr_schedule.lr(c);
        opt.step(model.params(), &grads, lr)?;
        drop(grads);
        st.cursor = sampler.advance(st.cursor);
        st.next_step = c + 1;
        let step_time = t0.elapsed().as_secs_f64();
        let tokens = counts[k];
        let train_loss: Vec<Option<f64>> = local
            .iter()
            .map(|l| (l.tokens > 0).then(|| l.mean()))
            .collect();
        let objective: f64 = (0..k)
            .filter_map(|i| train_loss[i].map(|v| weights[i] * v))
            .sum::<f64>()
            / present_w.max(f64::MIN_POSITIVE);

        let mut rec = serde_json::Map::new();
        rec.insert("step".into(), json!(c));
        rec.insert("lr".into(), json!(lr));
        rec.insert("loss".into(), json!(objective));
        rec.insert(
            "train_loss".into(),
            per_task(&names, train_loss.iter().copied()),
        );
        rec.insert(
            "weights".into(),
            per_task(&names, weights.iter().map(|w| Some(*w))),
        );
        rec.insert("weights_source".into(), json!(msg.source.as_str()));
        rec.insert("grad_norm".into(), json!(grad_norm));
        rec.insert("tokens".into(), json!(tokens));
        rec.insert("tokens_per_s".into(), json!(tokens / step_time));
        rec.insert(
            "gflops_per_s".into(),
            json!(6.0 * n_params as f64 * tokens / step_time / 1e9),
        );
        rec.insert("step_time_s".into(), json!(step_time));
        rec.insert("comm_time_s".into(), json!(comm_s));
        rec.insert("weight_time_s".into(), json!(weight_s));
        if let Some(ex) = sw.as_ref().and_then(|w| w.explain.as_ref()) {
            rec.insert("df".into(), json!(ex.df));
            rec.insert(
                "rcs".into(),
                per_task(&names, ex.rcs.iter().map(|v| Some(*v))),
            );
            rec.insert(
                "acs".into(),
                per_task(&names, ex.acs.iter().map(|v| Some(*v))),
            );
        }

        // 5. Probe.
        if schedule.is_probe_step(c) {
            let tp = Instant::now();
            let idx = c / wcfg.update_interval - 1;
            let pb = probe_sampler.rank_batches(&ds, idx, comm.rank(), comm.world_size(), eval_mb);
            let mut sums = evaluate::local_sums(&model, &pb, k, loss_opts)?;
            evaluate::all_reduce_losses(comm, &mut sums)?;
            let losses: Vec<Option<f64>> = sums
                .iter()
                .map(|l| (l.tokens > 0).then(|| l.mean()))
                .collect();
            if let Some(i) = losses
                .iter()
                .position(|l| l.is_some_and(|v| !v.is_finite()))
            {
                return Err(all_ranks(anyhow!(
                    "non-finite probe loss after step {c} for task `{}`; stopping every rank",
                    names[i]
                )));
            }
            if rank0 {
                st.weighter
                    .observe_probe(c, &losses)
                    .map_err(|e| anyhow!("probe after step {c}: {e}"))?;
            }
            let ratios = losses
                .iter()
                .zip(&st.initial_val_loss)
                .map(|(l, i)| l.map(|l| l / i));
            rec.insert(
                "probe_val_loss".into(),
                per_task(&names, losses.iter().copied()),
            );
            rec.insert("val_ratio".into(), per_task(&names, ratios));
            rec.insert("probe_time_s".into(), json!(tp.elapsed().as_secs_f64()));
        }

        // 6. Evaluation, best model, early stopping.
        let last = st.next_step == total_steps;
        let eval_now = last || (t.eval_interval > 0 && st.next_step % t.eval_interval == 0);
        let mut early_stop = false;
        let mut new_best = false;
        if eval_now {
            let te = Instant::now();
            let v = evaluate::full_validation(&model, &ds, comm, eval_mb, loss_opts)?;
            final_val = v.iter().map(TaskLoss::mean).collect();
            let ratios: Vec<f64> = final_val
                .iter()
                .zip(&st.initial_val_loss)
                .map(|(l, i)| l / i)
                .collect();
            let mean = ratios.iter().sum::<f64>() / k as f64;
            if !mean.is_finite() {
                return Err(all_ranks(anyhow!(
                    "non-finite validation loss after step {c}; stopping every rank"
                )));
            }
            let es = early_stopping::EarlyStopping {
                patience: t.early_stopping_patience,
            };
            match es.observe(&mut st.best, &mut st.evals_since_best, st.next_step, mean) {
                early_stopping::Verdict::NewBest => new_best = true,
                early_stopping::Verdict::Stop => early_stop = true,
                early_stopping::Verdict::NoImprovement => {}
            }
            rec.insert(
                "val_loss".into(),
                per_task(&names, final_val.iter().map(|v| Some(*v))),
            );
            rec.insert("val_ratio_mean".into(), json!(mean));
            rec.insert("eval_time_s".into(), json!(te.elapsed().as_secs_f64()));
            if rank0 {
                tracing::info!(
                    "after step {c} ({} steps done): validation ratio mean {mean:.4}{}",
                    st.next_step,
                    if new_best { " (new best)" } else { "" }
                );
            }
        }
        if let Some(w) = metrics.as_mut() {
            w.write(&Value::Object(rec))?;
            st.metrics_offset = w.offset();
            st.metrics_header_len = Some(w.header_len());
        }
        if let Some(pb) = &progress {
            pb.set_position(st.next_step);
            pb.set_message(format!("loss {objective:.4}"));
        }
        if rank0 && (c % t.log_interval.max(1) == 0 || last) {
            tracing::info!(
                "step {c}: loss {objective:.4} lr {lr:.3e} {:.0} tok/s {:.3}s/step",
                tokens / step_time,
                step_time
            );
        }

        // 7. Checkpoints.
        let every = cfg.checkpoint.every_steps;
        let stopping = signalled || early_stop;
        let save_now = last || stopping || (every > 0 && st.next_step % every == 0);
        if rank0 && (save_now || new_best) {
            let snap = snapshot(&model, &opt, &st)?;
            let snap = std::sync::Arc::new(snap);
            if new_best {
                let s2 = snap.clone();
                let out2 = out.clone();
                let tok = cfg.model.tokenizer.clone();
                let template = serde_json::to_string_pretty(&cfg.data.template)?;
                let summary = serde_json::to_string_pretty(&json!({
                    "step": st.next_step,
                    "val_ratio_mean": st.best.map(|b| b.1),
                    "val_loss": per_task(&names, final_val.iter().map(|v| Some(*v))),
                    "initial_val_loss": per_task(&names, st.initial_val_loss.iter().map(|v| Some(*v))),
                    "method": wcfg.method.as_str(),
                }))?;
                writer.submit("best/".into(), move || {
                    state::write_best(&out2, &s2, &tok, &template, &summary)
                })?;
            }
            if save_now {
                let out2 = out.clone();
                let keep = cfg.checkpoint.keep_last;
                let crash = cfg.runtime.crash_in_checkpoint == Some(st.next_step);
                let step = st.next_step;
                writer.submit(format!("checkpoint step {step}"), move || {
                    state::write_checkpoint(&out2, &snap, keep, crash).map(|_| ())
                })?;
                last_saved = Some(step);
            }
        }
        if stopping {
            stopped_by = if signalled {
                "signal"
            } else {
                "early_stopping"
            }
            .into();
            if rank0 {
                tracing::info!("stopping after step {c}: {stopped_by}");
            }
            break;
        }
    }
    writer.wait()?;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    comm.barrier()?;
    let summary = Summary {
        steps: st.next_step,
        stopped_by,
        tasks: names,
        initial_val_loss: st.initial_val_loss.clone(),
        final_val_loss: final_val,
        best: st.best,
        wall_time_s: t_start.elapsed().as_secs_f64(),
        method: wcfg.method.as_str().into(),
        world_size: comm.world_size(),
        data: data_report,
    };
    // A resumed run that had nothing left to do keeps the summary and plots it already has.
    if rank0 && st.next_step > first_step {
        let p = out.join("summary.json");
        std::fs::write(&p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("write {}", p.display()))?;
        // Pictures are a convenience: a failure is a warning, never a failed run.
        if let Err(e) = write_plots(out) {
            tracing::warn!("plots not written: {e:#}");
        }
    }
    Ok(summary)
}

/// `output_dir/plots/*.png` from `metrics.jsonl` (what `coba-dist plot` draws).
fn write_plots(out: &Path) -> Result<()> {
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

fn snapshot(model: &Model, opt: &AdamW, st: &TrainState) -> Result<Snapshot> {
    let tensors = model
        .params()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(Snapshot {
        config_json: model.config_json(),
        model_type: model.model_type().to_string(),
        dtype: model.dtype(),
        tensors,
        optimizer: opt.clone(),
        state: st.clone(),
    })
}

/// `output_dir` is a usable directory name.
fn check_output_dir(cfg: &TrainConfig) -> Result<()> {
    if cfg.output_dir.as_os_str().is_empty() {
        bail!("key `output_dir`: must not be empty");
    }
    if cfg.output_dir.is_file() {
        bail!("key `output_dir`: {} is a file", cfg.output_dir.display());
    }
    Ok(())
}

/// Runs `decide` on rank 0 only and gives every rank its outcome: rank 0's text, or rank 0's
/// error as a bad-input error on every rank (so all ranks stop together with its message).
fn decided_by_rank0(
    comm: &dyn Communicator,
    decide: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let mut buf = Vec::new();
    if comm.rank() == 0 {
        let (tag, text) = match decide() {
            Ok(t) => (b'+', t),
            Err(e) => (b'!', format!("{e:#}")),
        };
        buf.push(tag);
        buf.extend(text.bytes());
    }
    comm.broadcast_bytes(&mut buf, 0)?;
    let text = String::from_utf8_lossy(buf.get(1..).unwrap_or_default()).into_owned();
    match buf.first() {
        Some(b'+') => Ok(text),
        _ => Err(bad_input(anyhow!("{text}"))),
    }
}

/// Rank 0 takes the output directory's lock ([`lock::OutputLock`]); a refusal stops every
/// rank with rank 0's message.
fn lock_output_dir(out: &Path, comm: &dyn Communicator) -> Result<Option<lock::OutputLock>> {
    let mut held = None;
    decided_by_rank0(comm, || {
        held = Some(lock::OutputLock::acquire(out)?);
        Ok(String::new())
    })?;
    Ok(held)
}

/// Checks that need no data: the files the config names exist, and a fresh start does not
/// mix with an earlier run's checkpoints.
fn preflight(cfg: &TrainConfig, resume: Option<&Resume>) -> Result<()> {
    if !cfg.model.tokenizer.is_file() {
        bail!(
            "key `model.tokenizer`: {} does not exist (paths are relative to the working \
             directory; the embedded demo config expects the repository root)",
            cfg.model.tokenizer.display()
        );
    }
    if let Some(p) = &cfg.model.path {
        if !p.exists() {
            bail!("key `model.path`: {} does not exist", p.display());
        }
    }
    if let Some(inj) = &cfg.runtime.inject_nan {
        if !cfg.data.tasks.iter().any(|t| t.name == inj.task) {
            bail!(
                "key `runtime.inject_nan.task`: no task named `{}`",
                inj.task
            );
        }
    }
    match resume {
        Some(Resume::Path(p)) if !p.exists() => {
            bail!("--resume {}: no such checkpoint directory", p.display())
        }
        None if !state::list_checkpoints(&cfg.output_dir).is_empty() => bail!(
            "{} already holds checkpoints of an earlier run: continue it with --resume auto, \
             or choose another output_dir (a fresh start there would mix the two runs)",
            state::checkpoints_dir(&cfg.output_dir).display()
        ),
        _ => Ok(()),
    }
}

/// Rank 0 picks the checkpoint and broadcasts its path, so every rank resumes from the same
/// one. `auto` takes the newest checkpoint that passes [`state::verify_checkpoint`], with a
/// warning naming each newer one it skipped and why (a corrupt newest checkpoint used to stop
/// the resume); an explicit path must pass it.
fn resolve_resume(
    cfg: &TrainConfig,
    comm: &dyn Communicator,
    resume: Option<&Resume>,
) -> Result<Option<PathBuf>> {
    let Some(resume) = resume else {
        return Ok(None);
    };
    let path = decided_by_rank0(comm, || {
        Ok(pick_checkpoint(cfg, resume)?
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default())
    })?;
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

fn pick_checkpoint(cfg: &TrainConfig, resume: &Resume) -> Result<Option<PathBuf>> {
    let Some((dir, st)) = pick_whole_checkpoint(cfg, resume)? else {
        return Ok(None);
    };
    check_metrics_file(cfg, &st, &dir)?;
    Ok(Some(dir))
}

/// The run's `metrics.jsonl` must still hold what the checkpoint recorded (its step lines),
/// else the checkpoint belongs to another `output_dir` or the file was removed; checked before
/// anything is written.
fn check_metrics_file(cfg: &TrainConfig, st: &TrainState, dir: &Path) -> Result<()> {
    if st.metrics_offset == 0 {
        return Ok(());
    }
    let p = cfg.output_dir.join("metrics.jsonl");
    let len = std::fs::metadata(&p).map_or(0, |m| m.len());
    // A lower bound: the header may have been rewritten since (another length).
    let body = st.metrics_offset - st.metrics_header_len.unwrap_or(0).min(st.metrics_offset);
    if len <= body {
        bail!(
            "{}: the checkpoint was written after {} bytes of {}, which now has {len}: the \
             checkpoint belongs to another output_dir, or metrics.jsonl was removed or cut. \
             Restore the file, or start a new run from the checkpoint's weights with \
             model.path = \"{}\"",
            dir.display(),
            st.metrics_offset,
            p.display(),
            dir.join("model").display()
        );
    }
    Ok(())
}

fn pick_whole_checkpoint(
    cfg: &TrainConfig,
    resume: &Resume,
) -> Result<Option<(PathBuf, TrainState)>> {
    match resume {
        Resume::Path(p) => state::verify_checkpoint(p)
            .map(|st| Some((p.clone(), st)))
            .with_context(|| format!("--resume {}: not a usable checkpoint", p.display())),
        Resume::Auto => {
            let all = state::list_checkpoints(&cfg.output_dir);
            for (_, p) in all.iter().rev() {
                match state::verify_checkpoint(p) {
                    Ok(st) => return Ok(Some((p.clone(), st))),
                    Err(e) => tracing::warn!(
                        "--resume auto: skipping {}, it is damaged: {e:#}",
                        p.display()
                    ),
                }
            }
            if all.is_empty() {
                tracing::info!(
                    "--resume auto: no checkpoint in {}; starting fresh",
                    state::checkpoints_dir(&cfg.output_dir).display()
                );
                Ok(None)
            } else {
                bail!(
                    "--resume auto: every checkpoint in {} is damaged (see the warnings above); \
                     move them away to start fresh",
                    state::checkpoints_dir(&cfg.output_dir).display()
                )
            }
        }
    }
}

fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_position(at);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}
