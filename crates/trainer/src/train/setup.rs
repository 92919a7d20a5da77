//! Setting a run up: the model, the data, the checks that need no data, a fresh or resumed
//! [`Trainer`] for a [`Plan`], and rank 0's metric sinks.

use super::config::{BaseQuant, TrainConfig, TrainDtype};
use super::error::{RunError, Scoped};
use super::plan::Plan;
use super::state::{self, TrainState};
use super::trainer::Trainer;
use super::{evaluate, resume_rules, Resume};
use crate::metrics::sink::TensorBoard;
use crate::metrics::{per_task, Header, MetricSinks, MetricsWriter};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use collectives::Communicator;
use data::dataset::Dataset;
use data::tokenize::Encoder;
use data::train::{Cursor, TrainSampler};
use data::valid::ProbeSampler;
use model::checkpoint::{load_gguf_quantized, load_model};
use model::optim::{AdamW, AdamWConfig};
use model::{CausalLm, Llama, LlamaConfig, Model, TaskLoss};
use std::path::Path;

/// Builds or loads the model of `[model]` on the CPU, in `train.dtype` (see [`build_model_on`]).
///
/// # Errors
/// As [`build_model_on`].
pub fn build_model(cfg: &TrainConfig, tokenizer_vocab: usize) -> Result<Model> {
    build_model_on(cfg, tokenizer_vocab, &Device::Cpu)
}

/// Builds or loads the model of `[model]` on `device`, in `train.dtype` (auto: bf16 on a GPU,
/// f32 on the CPU), with `[lora]` applied.
///
/// # Errors
/// Unreadable checkpoint, invalid architecture, or a vocabulary smaller than the tokenizer's.
pub fn build_model_on(cfg: &TrainConfig, tokenizer_vocab: usize, device: &Device) -> Result<Model> {
    let device = device.clone();
    let dtype = cfg.train.dtype.resolve(device.is_cuda());
    let quant = if cfg.lora.enabled {
        cfg.lora.base_quant().map_err(anyhow::Error::msg)?
    } else {
        BaseQuant::None
    };
    let mut model: Model = match (&cfg.model.path, &cfg.model.arch) {
        (Some(p), _) if quant == BaseQuant::Gguf => load_gguf_quantized(p, dtype, &device)
            .map(Model::from)
            .with_context(|| {
                format!(
                    "loading model.path {} (lora.quantize_base = \"gguf\")",
                    p.display()
                )
            })?,
        // A LoRA model (adapter directory) is trained on further as its merged weights.
        (Some(p), _) => load_model(p, dtype, &device)
            .and_then(|m| Ok(m.merged()?))
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
            lc.model_type = a.model_type.as_str().into();
            lc.intermediate_size = a
                .intermediate_size
                .unwrap_or_else(|| (8 * d / 3).div_ceil(64) * 64);
            lc.rope_theta = a.rope_theta;
            lc.tie_word_embeddings = a.tie_word_embeddings;
            lc.rms_norm_eps = 1e-5;
            lc.max_position_embeddings = cfg.data.max_seq_len.max(512);
            Llama::new_random(lc, cfg.train.seed, a.init_std, dtype, &device)
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
    if let BaseQuant::Format(f) = quant {
        model.quantize_base(f).context("lora.quantize_base")?;
    }
    if cfg.lora.enabled {
        let settings = cfg
            .lora
            .settings_for(model.lora_projections())
            .map_err(anyhow::Error::msg)?;
        model
            .attach_lora(settings, cfg.train.seed, None)
            .context("[lora]")?;
    }
    Ok(model)
}

/// `rank 0 -> host: cuda:0, rank 1 -> ...`: every rank's host and device
/// ([`collectives::gather_lines`], startup only).
///
/// # Errors
/// A failed collective.
fn rank_map(comm: &dyn Communicator, device_name: &str) -> Result<String> {
    let mine = format!("{}: {device_name}", collectives::host_name());
    let parts = collectives::gather_lines(comm, &mine)?;
    Ok(parts
        .iter()
        .enumerate()
        .map(|(r, p)| format!("rank {r} -> {p}"))
        .collect::<Vec<_>>()
        .join(", "))
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

/// `output_dir` is a usable directory name.
pub fn check_output_dir(cfg: &TrainConfig) -> Result<()> {
    if cfg.output_dir.as_os_str().is_empty() {
        bail!("key `output_dir`: must not be empty");
    }
    if cfg.output_dir.is_file() {
        bail!("key `output_dir`: {} is a file", cfg.output_dir.display());
    }
    Ok(())
}

/// Checks that need no data: the files the config names exist, and a fresh start does not
/// mix with an earlier run's checkpoints.
pub fn preflight(cfg: &TrainConfig, resume: Option<&Resume>) -> Result<()> {
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

/// `cfg` with `train.dtype = "auto"` replaced by the dtype the checkpoint's run trained in
/// (recorded in its state.json; f32 without the record), so that a bf16 GPU run resumes on the
/// CPU in bf16 and an f32 CPU run on a GPU in f32 (auto alone would pick each device's default
/// and the resume rule would refuse the change).
///
/// # Errors
/// An unreadable state.json or an unknown dtype in it.
fn follow_checkpoint_dtype(cfg: &TrainConfig, dir: &Path) -> anyhow::Result<TrainConfig> {
    let st = state::read_state(dir)?;
    let saved = st.train_dtype.as_deref().unwrap_or("f32");
    let dtype: TrainDtype = saved
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: state.json: {e}", dir.display()))?;
    let mut out = cfg.clone();
    out.train.dtype = dtype;
    if saved != "f32" {
        tracing::info!("train.dtype = \"auto\": resuming in {saved}, as the run trained");
    }
    Ok(out)
}

/// The trainer of a fresh run (after the validation pass that gives `l_i(0)`) or of a resume
/// from `ckpt` (after the resume rules accepted it: same tasks, batch, weighting, LR schedule
/// and architecture).
///
/// # Errors
/// Bad input (a model that does not fit the tokenizer, a checkpoint of another run) on every
/// rank; local errors otherwise.
#[allow(clippy::too_many_arguments)]
pub fn start<'a>(
    cfg: &TrainConfig,
    comm: &'a dyn Communicator,
    ds: &'a Dataset,
    vocab: usize,
    plan: &Plan,
    sampler: TrainSampler<'a>,
    ckpt: Option<&Path>,
) -> Result<Trainer<'a>, RunError> {
    let resumed_cfg;
    let cfg = match (ckpt, cfg.train.dtype) {
        (Some(dir), TrainDtype::Auto) => {
            resumed_cfg = follow_checkpoint_dtype(cfg, dir).bad_input()?;
            &resumed_cfg
        }
        _ => cfg,
    };
    let (device, device_name) =
        super::device::select(cfg.runtime.device, comm.local_rank()).all_ranks()?;
    let map = rank_map(comm, &device_name).local()?;
    if comm.rank() == 0 {
        tracing::info!("ranks -> host: device: {map}");
    }
    let mut model = build_model_on(cfg, vocab, &device).bad_input()?;
    let names: Vec<String> = ds.tasks.iter().map(|t| t.name.clone()).collect();
    let dc = cfg.data_config();
    let global_rows = plan.shard.global_rows();
    // Absolute, so that eval/generate/merge find the base from any directory.
    let base_path = cfg.model.path.as_deref().map(absolute);
    let (opt, mut st) = match ckpt {
        Some(dir) => {
            let st = state::read_state(dir).bad_input()?;
            let kept = resume_rules::Kept {
                names: &names,
                global_rows,
                wcfg: &plan.weighting,
                probe_per_task: plan.probe_samples_per_task,
                total_steps: plan.total_steps,
            };
            resume_rules::check_kept(&st, &kept, dir).bad_input()?;
            let dtype = TrainDtype::name(model.dtype());
            resume_rules::check_dtype(st.train_dtype.as_deref(), dtype, dir).bad_input()?;
            resume_rules::check_schedule(&st, &plan.step.lr_schedule, plan.total_steps, dir)
                .bad_input()?;
            if cfg.lora.enabled {
                let quant = cfg.lora.quantize_base_name();
                resume_rules::check_base_quant(st.lora_quantize_base.as_deref(), &quant, dir)
                    .bad_input()?;
                resume_adapters(cfg, &mut model, dir, base_path.as_deref())?;
            } else {
                resume_rules::check_not_lora(dir).bad_input()?;
                let saved = load_model(dir, model.dtype(), &device)
                    .with_context(|| format!("loading {}", dir.display()))
                    .all_ranks()?;
                resume_rules::check_architecture(&model, &saved, dir).bad_input()?;
                model = saved;
            }
            let opt = AdamW::load(dir, &device).all_ranks()?;
            if comm.rank() == 0 {
                tracing::info!(
                    "resuming from {} (step {}, written by {} ranks)",
                    dir.display(),
                    st.next_step,
                    st.world_size
                );
            }
            (opt, st)
        }
        None => fresh(cfg, comm, ds, &model, plan, names)?,
    };
    st.lr_schedule = Some(plan.step.lr_schedule);
    st.total_steps = Some(plan.total_steps);
    st.probe_samples_per_task = Some(plan.probe_samples_per_task);
    st.train_dtype = Some(TrainDtype::name(model.dtype()).to_string());
    st.lora_quantize_base = cfg.lora.enabled.then(|| cfg.lora.quantize_base_name());
    // The ranks of this run write the next checkpoints (the global batch is what must stay).
    st.world_size = comm.world_size();
    Ok(Trainer {
        model,
        opt,
        state: st,
        comm,
        ds,
        sampler,
        probe_sampler: ProbeSampler::new(ds, plan.probe_samples_per_task, dc.seed),
        shard: plan.shard,
        settings: plan.step.clone(),
        layout_checked: false,
        base_model_path: base_path,
        pending_grad_norms: None,
    })
}

/// Replaces the fresh adapters of `model` by the checkpoint's (same settings and base, the
/// absolute `base`, required).
fn resume_adapters(
    cfg: &TrainConfig,
    model: &mut Model,
    dir: &Path,
    base: Option<&str>,
) -> Result<(), RunError> {
    let adir = dir.join(state::model_dir_name(true));
    if !adir.is_dir() {
        return Err(anyhow::anyhow!(
            "{}: the checkpoint holds a full model (model/), the configuration trains LoRA \
             adapters: resume with lora.enabled = false, or start a LoRA run with model.path = \
             \"{}\"",
            dir.display(),
            dir.join("model").display()
        ))
        .bad_input();
    }
    let (saved, tensors) = model::checkpoint::load_adapter(&adir, &Device::Cpu).bad_input()?;
    let settings = cfg
        .lora
        .settings_for(model.lora_projections())
        .map_err(anyhow::Error::msg)
        .bad_input()?;
    resume_rules::check_adapter(&saved.settings(), &settings, &adir).bad_input()?;
    let saved_base = saved.base_model_name_or_path.as_deref();
    resume_rules::check_adapter_base(saved_base, base, &adir).bad_input()?;
    model
        .attach_lora(settings, cfg.train.seed, Some(tensors))
        .with_context(|| format!("{}", adir.display()))
        .bad_input()
}

/// `p` as an absolute path string (symlinks resolved; as given when it cannot be resolved).
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// A fresh run's optimizer and state: `l_i(0)` from a full validation pass.
fn fresh(
    cfg: &TrainConfig,
    comm: &dyn Communicator,
    ds: &Dataset,
    model: &Model,
    plan: &Plan,
    names: Vec<String>,
) -> Result<(AdamW, TrainState), RunError> {
    let t = &cfg.train;
    let mb = plan.step.eval_micro_batch;
    let initial = evaluate::full_validation(model, ds, comm, mb, plan.step.loss).local()?;
    let initial: Vec<f64> = initial.iter().map(TaskLoss::mean).collect();
    let weighter = coba::Weighter::new(&plan.weighting, &initial)
        .map_err(|e| anyhow::anyhow!("initial validation: {e}"))
        .all_ranks()?;
    let st = TrainState {
        version: state::STATE_VERSION,
        next_step: 0,
        cursor: Cursor::default(),
        tasks: names,
        global_rows: plan.shard.global_rows(),
        world_size: comm.world_size(),
        initial_val_loss: initial,
        weighter,
        weighting: plan.weighting,
        best: None,
        evals_since_best: 0,
        metrics_offset: 0,
        seed: t.seed,
        // Set by `start` for fresh and resumed runs alike.
        lr_schedule: None,
        total_steps: None,
        metrics_header_len: None,
        lora_quantize_base: None,
        train_dtype: None,
        last_train_loss: Vec::new(),
        probe_samples_per_task: None,
    };
    let opt = AdamW::new(AdamWConfig {
        beta1: t.beta1,
        beta2: t.beta2,
        eps: t.eps,
        weight_decay: t.weight_decay,
    });
    Ok((opt, st))
}

/// Rank 0's sinks: writes `config.toml`, opens `metrics.jsonl` at the checkpoint's offset
/// (a fresh run writes the header; a resume that changed `total_steps` rewrites it) and,
/// with `metrics.tensorboard`, new event files under `output_dir/tb/`.
///
/// # Errors
/// IO failures (local).
pub fn open_sinks(
    cfg: &TrainConfig,
    trainer: &Trainer<'_>,
    plan: &Plan,
    resumed: bool,
    world_size: usize,
) -> Result<MetricSinks, RunError> {
    let out = &cfg.output_dir;
    let st = &trainer.state;
    std::fs::write(out.join("config.toml"), cfg.to_toml())
        .with_context(|| format!("write {}", out.join("config.toml").display()))
        .local()?;
    let mut w = MetricsWriter::open(
        &out.join("metrics.jsonl"),
        st.metrics_offset,
        st.metrics_header_len,
    )
    .local()?;
    let total_steps = plan.total_steps;
    // The header itself says what it holds (a resume from an older checkpoint may follow a
    // rewrite): rewrite it whenever it disagrees with this run.
    let total_changed = w
        .header_value("total_steps")
        .and_then(|v| v.as_u64())
        .filter(|&was| resumed && was != total_steps);
    if let Some(was) = total_changed {
        tracing::info!(
            "resuming with {total_steps} total steps instead of {was}: the learning rate of \
             every step stays the same ({}), so this equals an uninterrupted run of the new \
             configuration; metrics.jsonl's header now says total_steps {total_steps}",
            plan.step.lr_schedule.describe()
        );
        w.update_header("total_steps", serde_json::json!(total_steps))
            .local()?;
    }
    let names = trainer.tasks();
    let wcfg = &plan.weighting;
    let lora = trainer.model.lora().is_some();
    if !resumed {
        w.write(&Header {
            dtype: Some(TrainDtype::name(trainer.model.dtype()).into()),
            global_batch_rows: Some(plan.shard.global_rows()),
            history_length: Some(wcfg.history_length),
            initial_val_loss: Some(per_task(
                names,
                st.initial_val_loss.iter().map(|v| Some(*v)),
            )),
            lora_quantize_base: st.lora_quantize_base.clone().filter(|q| q != "none"),
            method: Some(wcfg.method.as_str().into()),
            parameters: Some(trainer.model_parameters()),
            tasks: names.to_vec(),
            total_steps: Some(total_steps),
            trainable_parameters: lora.then(|| trainer.model.num_parameters()),
            update_interval: Some(wcfg.update_interval),
            validation_batches: Some(plan.validation_batches),
            warmup_steps: Some(wcfg.warmup_steps),
            world_size: Some(world_size as u64),
        })
        .local()?;
    }
    let tensorboard = if cfg.metrics.tensorboard {
        let dir = out.join("tb");
        if resumed && !dir.exists() {
            tracing::info!(
                "TensorBoard starts at step {} ({} has no earlier event files; metrics.jsonl \
                 holds every step)",
                st.next_step,
                dir.display()
            );
        }
        Some(TensorBoard::create(&dir, names, st.next_step).local()?)
    } else {
        None
    };
    if let Some(l) = trainer.model.lora() {
        tracing::info!(
            "LoRA: {} trainable adapter parameters (r {}, alpha {}, {}), the base frozen{}",
            trainer.model.num_parameters(),
            l.settings.r,
            l.settings.alpha,
            l.settings.target_modules.join(", "),
            match trainer.model.quantized_summary() {
                Some(q) => format!(" and quantized (QLoRA: {q})"),
                None => String::new(),
            }
        );
    }
    tracing::info!(
        "{} parameters ({}), {} tasks, {} steps of {} rows on {} rank(s); method {}, W = {}, H = {}, U = {}",
        trainer.model_parameters(),
        TrainDtype::name(trainer.model.dtype()),
        names.len(),
        total_steps,
        plan.shard.global_rows(),
        world_size,
        wcfg.method,
        wcfg.warmup_steps,
        wcfg.history_length,
        wcfg.update_interval
    );
    Ok(MetricSinks {
        jsonl: w,
        tensorboard,
    })
}
