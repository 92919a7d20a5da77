//! `coba-dist [--config F]` / `coba-dist train --config F`: the training job, and
//! `coba-dist check --config F`: validate a configuration without training.

use super::ExitError;
use crate::train::config::{self, Sources, TargetModules, TrainConfig};
use crate::train::{AllRanks, Resume};
use anyhow::{anyhow, Context};
use clap::Args;
use collectives::InitOptions;
use model::CausalLm;
use std::path::PathBuf;

/// The embedded default job (`configs/demo.toml`), used when no `--config` is given.
pub const DEMO_TOML: &str = include_str!("../../../../configs/demo.toml");

/// Options of the training job.
#[derive(Debug, Args, Default)]
pub struct TrainArgs {
    /// TOML configuration (see configs/reference.toml). Default: the embedded
    /// configs/demo.toml (run from the repository root).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set train.lr=2.0e-5` (repeatable; wins over the file and
    /// COBA_* environment variables).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Resume from `auto` (the latest checkpoint in output_dir, else start fresh) or a
    /// checkpoint directory.
    #[arg(long, value_name = "auto|PATH")]
    pub resume: Option<String>,
}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// TOML configuration to validate.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Overrides, as for training.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Ranks the job will run on (for the global batch size shown).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub world_size: u32,
}

fn bad(e: impl Into<anyhow::Error>) -> ExitError {
    ExitError {
        code: 2,
        error: e.into(),
    }
}

/// Reads the configuration layers: file (or the embedded demo), `COBA_*` env, `--set`.
///
/// # Errors
/// An unreadable file or an invalid configuration (exit code 2).
pub fn load_config(path: Option<&PathBuf>, sets: &[String]) -> Result<TrainConfig, ExitError> {
    let toml = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading --config {}", p.display()))
                .map_err(bad)?;
            (text, p.display().to_string())
        }
        None => (
            DEMO_TOML.to_string(),
            "embedded configs/demo.toml".to_string(),
        ),
    };
    config::load(&Sources {
        toml: Some(toml),
        env: config::env_vars(),
        sets: sets.to_vec(),
    })
    .map_err(bad)
}

/// Creates the communicator of `[runtime]` and sizes candle's thread pool (threads = cores /
/// local ranks unless `runtime.threads` or `RAYON_NUM_THREADS` says otherwise).
///
/// # Errors
/// An unknown backend (exit 2) or a failed MPI/NCCL start (exit 1).
pub fn start_runtime(cfg: &TrainConfig) -> Result<Box<dyn collectives::Communicator>, ExitError> {
    let comm = collectives::init(&InitOptions {
        backend: cfg.runtime.backend,
        collective_timeout_s: cfg.runtime.collective_timeout_s,
        gpu_ranks: crate::train::device::gpu_ranks(cfg.runtime.device),
    })
    .map_err(|e| ExitError {
        code: 1,
        error: e.into(),
    })?;
    let threads = if cfg.runtime.threads > 0 {
        cfg.runtime.threads
    } else {
        collectives::launch::default_threads(&*comm)
    };
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle sizes its thread pools from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    Ok(comm)
}

/// Runs the training job on this rank.
pub fn run(args: &TrainArgs) -> Result<(), ExitError> {
    let cfg = load_config(args.config.as_ref(), &args.set)?;
    // Before the runtime, the data and the model: a GPU that is not there is a setting error.
    crate::train::device::check(cfg.runtime.device).map_err(bad)?;
    let resume = match args.resume.as_deref() {
        None => None,
        Some("auto") => Some(Resume::Auto),
        Some(p) => Some(Resume::Path(p.into())),
    };
    let comm = start_runtime(&cfg)?;
    let comm: &dyn collectives::Communicator = &*comm;
    if comm.rank() == 0 {
        tracing::info!(
            "coba-dist {}: {} rank(s), {} thread(s) per rank, output {}",
            env!("CARGO_PKG_VERSION"),
            comm.world_size(),
            std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            cfg.output_dir.display()
        );
        eprintln!("# resolved configuration\n{}", cfg.to_toml());
    }
    match crate::train::run(&cfg, comm, resume.as_ref()) {
        Ok(s) => {
            if comm.rank() == 0 {
                let best = s
                    .best
                    .map_or("none".into(), |(st, r)| format!("{r:.4} at step {st}"));
                eprintln!(
                    "coba-dist: done: {} steps ({}), best mean validation ratio {best}, {:.1} s; \
                     outputs in {}",
                    s.steps,
                    s.stopped_by,
                    s.wall_time_s,
                    cfg.output_dir.display()
                );
                if s.best.is_some() {
                    eprintln!(
                        "coba-dist: the ratio is each task's validation loss over its loss at \
                         step 0, averaged over tasks (lower is better); {}/best holds that \
                         evaluation's model, summary.json the run's numbers, plots/ the curves \
                         (README, \"Training\")",
                        cfg.output_dir.display()
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(fail(comm, e)),
    }
}

/// The exit for a failed run: an error every rank shares ([`AllRanks`]) or a single-process
/// run exits normally; any other error aborts the whole job so no rank waits forever.
///
/// Under mpirun, rank 0 prints a shared error *before* any rank exits (then every rank meets
/// at a barrier and returns): Open MPI kills the remaining ranks as soon as one exits with a
/// non-zero status, which used to swallow rank 0's message (issue "first hour", item 2).
pub fn fail(comm: &dyn collectives::Communicator, e: impl Into<anyhow::Error>) -> ExitError {
    let e: anyhow::Error = e.into();
    if let Some(a) = e.downcast_ref::<AllRanks>() {
        let code = if a.bad_input { 2 } else { 1 };
        if comm.world_size() == 1 {
            return ExitError { code, error: e };
        }
        if comm.rank() == 0 {
            super::print_error(&e);
        }
        // Every rank has the same error; a failed barrier (a dead peer) changes nothing here.
        let _ = comm.barrier();
        ExitError {
            code,
            error: anyhow::Error::new(super::Reported),
        }
    } else if comm.world_size() == 1 {
        ExitError { code: 1, error: e }
    } else {
        collectives::exit_on_error(comm, Err::<(), _>(e));
        unreachable!("exit_on_error aborts the job")
    }
}

/// The largest base `check` loads to test the LoRA settings against it (bytes on disk).
const CHECK_LOAD_LIMIT: u64 = 2 << 30;

/// Bytes of a file, or of every file under a directory (a checkpoint's `model/` included).
fn files_size(p: &std::path::Path) -> u64 {
    if p.is_file() {
        return p.metadata().map_or(0, |m| m.len());
    }
    // Directories are followed only when they are real ones (no symlink loops).
    let entry = |e: std::fs::DirEntry| match e.file_type() {
        Ok(t) if t.is_dir() => files_size(&e.path()),
        _ => e
            .path()
            .metadata()
            .map_or(0, |m| if m.is_file() { m.len() } else { 0 }),
    };
    std::fs::read_dir(p)
        .map(|d| d.flatten().map(entry).sum())
        .unwrap_or(0)
}

/// Validates a configuration: keys and ranges, then the files it names (missing data paths
/// are warnings, so a cluster config passes on a laptop). With LoRA and an existing
/// `model.path` of at most 2 GiB, the base is loaded and the adapters attached (module names,
/// block sizes); a larger one is a warning.
pub fn check(args: &CheckArgs) -> Result<(), ExitError> {
    let cfg = load_config(Some(&args.config), &args.set)?;
    let mut warnings = Vec::new();
    let tok = &cfg.model.tokenizer;
    if !tok.is_file() {
        warnings.push(format!(
            "model.tokenizer {} does not exist here",
            tok.display()
        ));
    }
    if let Some(p) = &cfg.model.path {
        if !p.exists() {
            warnings.push(format!("model.path {} does not exist here", p.display()));
        }
    }
    for t in &cfg.data.tasks {
        for p in &t.paths {
            if !p.exists() {
                warnings.push(format!(
                    "data task `{}`: path {} does not exist here",
                    t.name,
                    p.display()
                ));
            }
        }
    }
    let t = &cfg.train;
    let global = t.micro_batch_size * t.grad_accum * args.world_size as usize;
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(text, "configuration {}: OK", args.config.display());
    let _ = writeln!(text, "  tasks: {}", cfg.task_names().join(", "));
    let _ = writeln!(
        text,
        "  global batch: {global} rows = micro_batch_size {} x grad_accum {} x world_size {}",
        t.micro_batch_size, t.grad_accum, args.world_size
    );
    let _ = writeln!(
        text,
        "  steps: {}",
        if t.max_steps > 0 {
            format!("max_steps {}", t.max_steps)
        } else {
            format!("{} epoch(s)", t.epochs)
        }
    );
    let _ = writeln!(
        text,
        "  weighting: {} (warmup_steps {}, history_length {}, tau {}, update_interval {})",
        cfg.coba.method,
        cfg.coba.warmup_steps,
        cfg.coba.history_length,
        cfg.coba.tau,
        cfg.coba.update_interval
    );
    if cfg.lora.enabled {
        // validate() accepted the settings: they expand without error.
        if let Ok(l) = cfg.lora.settings() {
            let _ = writeln!(
                text,
                "  lora: r {}, alpha {} (scale {}), {}; base {}",
                l.r,
                l.alpha,
                l.scale(),
                match &cfg.lora.target_modules {
                    TargetModules::All(a) => a.clone(),
                    TargetModules::List(_) => l.target_modules.join(", "),
                },
                match cfg.lora.quantize_base_name().as_str() {
                    "none" => "dense".to_string(),
                    q => format!("quantized ({q}, QLoRA)"),
                }
            );
        }
        // The model-level checks (module names, block sizes, architecture) need the base:
        // loaded when small enough for a login node.
        let size = cfg
            .model
            .path
            .as_deref()
            .filter(|p| p.exists())
            .map(files_size);
        if let Some(bytes) = size.filter(|&b| b > CHECK_LOAD_LIMIT) {
            warnings.push(format!(
                "[lora] not checked against model.path: {:.1} GiB is more than check loads \
                 ({} GiB); a run checks it at start",
                bytes as f64 / (1u64 << 30) as f64,
                CHECK_LOAD_LIMIT >> 30
            ));
        }
        if size.is_some_and(|b| b <= CHECK_LOAD_LIMIT) {
            let model = crate::train::build_model(&cfg, 0).map_err(|e| ExitError {
                code: 2,
                error: e.context(format!(
                    "configuration {}: the LoRA settings do not fit model.path",
                    args.config.display()
                )),
            })?;
            let _ = writeln!(
                text,
                "  lora on model.path: {} trainable adapter parameters over {} base parameters{}",
                model.num_parameters(),
                model.base_num_parameters(),
                match model.quantized_summary() {
                    Some(q) => format!(", base quantized: {q}"),
                    None => String::new(),
                }
            );
        }
    }
    if let Err(e) = crate::train::device::check(cfg.runtime.device) {
        warnings.push(format!(
            "{e:#} (on this machine; the run's own machine may differ)"
        ));
    }
    let _ = writeln!(
        text,
        "  dtype: {} ({} on the CPU, {} on a GPU)",
        match cfg.train.dtype {
            config::TrainDtype::Auto => "auto",
            config::TrainDtype::F32 => "f32",
            config::TrainDtype::Bf16 => "bf16",
        },
        config::TrainDtype::name(cfg.train.dtype.resolve(false)),
        config::TrainDtype::name(cfg.train.dtype.resolve(true))
    );
    if cfg.train.early_stopping_patience > 0 && cfg.train.eval_interval == 0 {
        warnings.push(
            "train.early_stopping_patience > 0 with eval_interval = 0: the only evaluation is \
             at the end, so early stopping never stops a run"
                .into(),
        );
    }
    for w in &warnings {
        let _ = writeln!(text, "  warning: {w}");
    }
    use std::io::Write as _;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| ExitError {
            code: 1,
            error: anyhow!(e).context("writing to stdout"),
        })
}
