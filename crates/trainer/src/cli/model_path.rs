//! The `--model PATH` of `eval` and `generate`: a Hugging Face directory, a `.gguf` file, a
//! PEFT LoRA adapter directory (its base from `base_model_name_or_path`), or one of our
//! training checkpoint directories (the HF model in `model/`, LoRA adapters in `adapter/`).

use super::ExitError;
use crate::train::config::{DeviceChoice, TrainDtype};
use crate::train::device::select;
use ::data::config::{TemplateConfig, TemplatePreset};
use anyhow::{anyhow, Context};
use candle_core::{DType, Device};
use model::checkpoint::load_model;
use model::Model;
use std::path::{Path, PathBuf};

/// An [`ExitError`] with exit code 2 (bad input).
pub fn bad_input(error: impl Into<anyhow::Error>) -> ExitError {
    ExitError {
        code: 2,
        error: error.into(),
    }
}

/// Where the weights of `--model PATH` are: `PATH` for a HF directory (`PATH/config.json`) or
/// a file (read as GGUF), `PATH/model` for a training checkpoint directory
/// (`PATH/model/config.json`).
///
/// # Errors
/// A message naming `PATH` when it does not exist, or is a directory with neither
/// `config.json` nor `model/config.json`.
pub fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        return Err(anyhow!(
            "model {}: no such file or directory",
            path.display()
        ));
    }
    if !path.is_dir()
        || path.join("config.json").is_file()
        || path.join(model::checkpoint::ADAPTER_CONFIG).is_file()
    {
        return Ok(path.to_path_buf());
    }
    for inner in [path.join("model"), path.join("adapter")] {
        if inner.join("config.json").is_file()
            || inner.join(model::checkpoint::ADAPTER_CONFIG).is_file()
        {
            return Ok(inner);
        }
    }
    Err(anyhow!(
        "model {}: a directory without config.json, adapter_config.json, model/ or adapter/ \
         (expected a Hugging Face model directory, a LoRA adapter directory, a training \
         checkpoint directory or a .gguf file)",
        path.display()
    ))
}

/// The directory that holds the files written beside a model (`best/` has `tokenizer.json`
/// and `template.json` next to `config.json`): `PATH` itself for a directory, the parent of
/// a file.
fn beside_dir(model: &Path) -> &Path {
    if model.is_dir() {
        model
    } else {
        model.parent().unwrap_or_else(|| Path::new("."))
    }
}

/// `tokenizer.json` beside the model (see [`beside_dir`]), if there is one.
fn tokenizer_beside(model: &Path) -> Option<PathBuf> {
    Some(beside_dir(model).join("tokenizer.json")).filter(|p| p.is_file())
}

/// `--tokenizer T` when given, else `tokenizer.json` beside the model.
///
/// # Errors
/// Neither is there (the message says `--tokenizer` is required).
pub fn tokenizer_for(model: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match (explicit, tokenizer_beside(model)) {
        (Some(t), _) => Ok(t.to_path_buf()),
        (None, Some(beside)) => Ok(beside),
        (None, None) => Err(anyhow!(
            "--tokenizer is required: {} has no tokenizer.json beside it",
            model.display()
        )),
    }
}

/// The template the model was trained with: `template.json` beside it (written into `best/`
/// by training), or `None` when there is none.
///
/// # Errors
/// An unreadable or malformed `template.json` (naming it).
pub fn template_beside(model: &Path) -> anyhow::Result<Option<TemplateConfig>> {
    let p = beside_dir(model).join("template.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    let t = serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))?;
    Ok(Some(t))
}

/// The template of `--template NAME` when given, else the one beside the model, else chatml.
///
/// # Errors
/// See [`template_beside`].
pub fn template_for(model: &Path, preset: Option<&str>) -> anyhow::Result<TemplateConfig> {
    Ok(match preset {
        Some(name) => TemplateConfig {
            preset: if name == "mftcoder" {
                TemplatePreset::Mftcoder
            } else {
                TemplatePreset::Chatml
            },
            ..TemplateConfig::default()
        },
        None => template_beside(model)?.unwrap_or_default(),
    })
}

/// Where a command runs its model (`eval`, `generate`): `--device` and `--dtype`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Device: auto (a GPU in a CUDA build with one visible, else the CPU), cpu, or cuda
    /// (GPU `local_rank % visible GPUs` under a launcher).
    #[arg(long, value_name = "D", default_value = "auto")]
    pub device: DeviceChoice,
    /// Parameter and activation dtype: auto (bf16 on a GPU, f32 on the CPU), f32 or bf16.
    /// Losses, log-softmax and norms are computed in f32 either way.
    #[arg(long, value_name = "T", default_value = "auto")]
    pub dtype: TrainDtype,
}

impl DeviceArgs {
    /// The device for the rank with `local_rank` on its host, its name and the dtype.
    ///
    /// # Errors
    /// Exit code 2 for `cuda` in a CPU build or without a visible GPU.
    pub fn select(&self, local_rank: usize) -> Result<(Device, String, DType), ExitError> {
        let (device, name) = select(self.device, local_rank).map_err(bad_input)?;
        let dtype = self.dtype.resolve(!device.is_cpu());
        Ok((device, name, dtype))
    }
}

/// Loads the model of `--model PATH` (see [`resolve`]) in `dtype` on `device`; `base`
/// replaces the base a LoRA adapter directory names.
///
/// # Errors
/// Exit code 2 for a missing path or an unreadable, malformed or inconsistent checkpoint, or
/// `--base` with a model that is not an adapter directory; the message names the file.
pub fn load(
    path: &Path,
    base: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<Model, ExitError> {
    let dir = resolve(path).map_err(bad_input)?;
    let loaded = match base {
        None => load_model(&dir, dtype, device),
        Some(b) if dir.join(model::checkpoint::ADAPTER_CONFIG).is_file() => {
            model::checkpoint::load_with_adapter(Some(b), &dir, dtype, device)
        }
        Some(_) => {
            return Err(bad_input(anyhow!(
                "--base: model {} is not a LoRA adapter directory",
                path.display()
            )))
        }
    };
    loaded
        .with_context(|| format!("loading model {}", dir.display()))
        .map_err(bad_input)
}
