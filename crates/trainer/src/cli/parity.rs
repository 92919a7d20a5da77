//! `coba-dist parity`: the same model and validation batches on the CPU in f32 and on a device
//! (a GPU in a CUDA build), compared number by number: the device check
//! (`scripts/gpu-check.sh`) judges the report.
//!
//! Measured, over the first `--batches` non-empty validation micro-batches (round robin over
//! the tasks, rank 0's shard as `eval` takes it):
//! - logits, f32 device vs f32 CPU: the largest absolute difference and the largest |logit|;
//! - gradients of the mean token NLL of the first batch, f32 device vs f32 CPU: per parameter
//!   `||g_device - g_cpu||_2 / ||g_cpu||_2`, the largest and its parameter;
//! - mean NLL (nats per scored token) on the CPU in f32 and on the device in f32 and bf16,
//!   and `|nll_bf16 - nll_f32| / nll_f32` on the device.
//!
//! With `--device cpu` (or no GPU) both sides run on the CPU: logits and gradients must then
//! agree exactly, which is the dry run CI executes. candle leaves TF32 off for f32 matmuls
//! on the GPU; the comparison assumes it (the report says so).

use super::model_path::{self, bad_input};
use super::ExitError;
use crate::train::config::DeviceChoice;
use ::data::batch::Batch;
use ::data::format::Split;
use ::data::tokenize::Encoder;
use anyhow::{anyhow, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use model::{CausalLm, LossOptions, Model, TaskLoss, TokenBatch};
use serde::Serialize;
use std::path::PathBuf;

/// Compare a model on a device against the CPU (logits, gradients, bf16 NLL).
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// A training configuration: its tokenizer, tasks and `[data]` settings, and by default
    /// the model `output_dir/best`.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Model: a Hugging Face directory, a .gguf file or a checkpoint directory.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Override one key of --config (repeatable), e.g. `--set data.max_seq_len=256`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The device under test: auto (a visible GPU, else the CPU), cpu or cuda.
    #[arg(long, value_name = "D", default_value = "auto")]
    device: DeviceChoice,
    /// Validation micro-batches compared.
    #[arg(long, value_name = "N", default_value_t = 2)]
    batches: usize,
    /// Samples per micro-batch (at most a task's validation samples). The logits of a batch
    /// are materialised on both sides: rows x max_seq_len x vocab f32 (SmolLM2, 2 x 512:
    /// 200 MB each).
    #[arg(long, value_name = "N", default_value_t = 2)]
    micro_batch: usize,
    /// Skip the gradient comparison (a large model's CPU backward is slow).
    #[arg(long)]
    no_grads: bool,
}

/// The report, printed as JSON on stdout.
#[derive(Debug, Serialize)]
struct Report {
    device: String,
    model: String,
    batches: usize,
    scored_tokens: u64,
    tf32: bool,
    logits_max_abs_diff: f64,
    logits_max_abs: f64,
    grad_max_rel_diff: Option<f64>,
    grad_worst_parameter: Option<String>,
    nll_cpu_f32: f64,
    nll_device_f32: f64,
    nll_device_bf16: f64,
    nll_bf16_rel_diff: f64,
}

/// Runs the comparison in this process (no launcher) and prints the JSON report.
///
/// # Errors
/// Exit code 2 for bad input (configuration, data, model path, `cuda` without a GPU); 1 for a
/// tensor failure.
pub fn run(args: &ParityArgs) -> Result<(), ExitError> {
    if args.batches == 0 || args.micro_batch == 0 {
        return Err(bad_input(anyhow!(
            "--batches and --micro-batch must be >= 1"
        )));
    }
    if let Some(launch) = collectives::launch::detect() {
        if launch.world_size > 1 {
            return Err(bad_input(anyhow!(
                "parity compares one process's device with its CPU: run it without a launcher \
                 ({launch})"
            )));
        }
    }
    let train = super::train::load_config(Some(&args.config), &args.set)?;
    let model_arg = args
        .model
        .clone()
        .unwrap_or_else(|| train.output_dir.join("best"));
    let cfg = train.data_config();
    cfg.validate().map_err(bad_input)?;
    model_path::resolve(&model_arg).map_err(bad_input)?;
    let (device, name) = crate::train::device::select(args.device, 0).map_err(bad_input)?;
    let enc = Encoder::from_file(&train.model.tokenizer, &cfg.template).map_err(bad_input)?;
    let ds = ::data::dataset::load_with(&cfg, &enc, ::data::dataset::Needs::Split(Split::Valid))
        .map_err(bad_input)?;
    let batches = pick_batches(&ds, args.batches, args.micro_batch);
    if batches.is_empty() {
        return Err(bad_input(anyhow!("no validation batch with scored tokens")));
    }
    let load = |dtype, device: &Device| model_path::load(&model_arg, None, dtype, device);
    let cpu = load(DType::F32, &Device::Cpu)?;
    let dev = load(DType::F32, &device)?;
    let failed = |error: anyhow::Error| ExitError { code: 1, error };
    let (diff, max_abs) = logits_diff(&cpu, &dev, &batches).map_err(failed)?;
    let grads = if args.no_grads {
        None
    } else {
        Some(grad_diff(&cpu, &dev, &batches[0], ds.num_tasks()).map_err(failed)?)
    };
    let (nll_cpu, tokens) = mean_nll(&cpu, &batches).map_err(failed)?;
    let (nll_dev, _) = mean_nll(&dev, &batches).map_err(failed)?;
    drop(dev);
    let bf16 = load(DType::BF16, &device)?;
    let (nll_bf16, _) = mean_nll(&bf16, &batches).map_err(failed)?;
    let report = Report {
        device: name,
        model: model_arg.display().to_string(),
        batches: batches.len(),
        scored_tokens: tokens,
        // The CPU build's stand-in answers `true`; only a GPU's f32 GEMMs can use TF32.
        tf32: !device.is_cpu() && candle_core::cuda::gemm_reduced_precision_f32(),
        logits_max_abs_diff: diff,
        logits_max_abs: max_abs,
        grad_max_rel_diff: grads.as_ref().map(|g| g.0),
        grad_worst_parameter: grads.map(|g| g.1),
        nll_cpu_f32: nll_cpu,
        nll_device_f32: nll_dev,
        nll_device_bf16: nll_bf16,
        nll_bf16_rel_diff: (nll_bf16 - nll_dev).abs() / nll_dev.abs().max(f64::MIN_POSITIVE),
    };
    let text = serde_json::to_string_pretty(&report)
        .context("serializing the report")
        .map_err(failed)?;
    println!("{text}");
    Ok(())
}

/// The first `n` micro-batches with scored tokens, task by task in turn; a task with fewer
/// validation samples than `micro_batch` gets batches of that many rows (no filler rows).
fn pick_batches(ds: &::data::dataset::Dataset, n: usize, micro_batch: usize) -> Vec<Batch> {
    let per_task: Vec<Vec<Batch>> = (0..ds.num_tasks())
        .map(|t| {
            let rows = micro_batch
                .min(ds.tasks[t].split(Split::Valid).len())
                .max(1);
            ::data::valid::valid_batches(ds, t, 0, 1, rows)
        })
        .collect();
    let longest = per_task.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for task in &per_task {
            match task.get(i) {
                Some(b) if b.loss_tokens() > 0 && out.len() < n => out.push(b.clone()),
                _ => {}
            }
        }
    }
    out
}

fn to_cpu_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F32)
}

/// Largest |logit difference| and largest |logit| over the batches.
fn logits_diff(cpu: &Model, dev: &Model, batches: &[Batch]) -> anyhow::Result<(f64, f64)> {
    let (mut diff, mut max_abs) = (0f64, 0f64);
    for batch in batches {
        let tokens = TokenBatch::from(batch);
        let a = cpu.logits(&tokens).context("CPU logits")?;
        let b = to_cpu_f32(&dev.logits(&tokens).context("device logits")?)?;
        let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let m = a.abs()?.max_all()?.to_scalar::<f32>()?;
        diff = diff.max(f64::from(d));
        max_abs = max_abs.max(f64::from(m));
    }
    Ok((diff, max_abs))
}

/// Largest per-parameter relative L2 difference of the mean-NLL gradients, and its parameter.
fn grad_diff(
    cpu: &Model,
    dev: &Model,
    batch: &Batch,
    tasks: usize,
) -> anyhow::Result<(f64, String)> {
    let tokens = TokenBatch::from(batch);
    let scale = vec![1.0 / batch.loss_tokens() as f64; tasks];
    let a = cpu.forward_backward(&tokens, &scale, LossOptions::default())?;
    let b = dev.forward_backward(&tokens, &scale, LossOptions::default())?;
    let mut worst = (0f64, String::new());
    for (name, ga) in &a.grads {
        let gb = b
            .grads
            .get(name)
            .ok_or_else(|| anyhow!("no device gradient for `{name}`"))?;
        let ga = ga.to_dtype(DType::F64)?;
        let gb = to_cpu_f32(gb)?.to_dtype(DType::F64)?;
        let num = (&ga - &gb)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        let den = ga.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        let rel = if den > 0.0 { num / den } else { num };
        if rel > worst.0 || worst.1.is_empty() {
            worst = (rel, name.clone());
        }
    }
    Ok(worst)
}

/// Mean NLL per scored token over the batches, and the token count.
fn mean_nll(model: &Model, batches: &[Batch]) -> anyhow::Result<(f64, u64)> {
    let mut all = TaskLoss::default();
    for batch in batches {
        let report = model.evaluate(&TokenBatch::from(batch), LossOptions::default())?;
        report.per_task.iter().for_each(|l| all.add(l));
    }
    Ok((all.mean(), all.tokens))
}
