//! The `--model PATH` of `eval` and `generate`: a Hugging Face directory, a `.gguf` file or one
//! of our training checkpoint directories (the HF model in its `model/` subdirectory).

use super::ExitError;
use crate::checkpoint::load_model;
use crate::model::Model;
use anyhow::{anyhow, Context};
use candle_core::{DType, Device};
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
    if !path.is_dir() || path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let inner = path.join("model");
    if inner.join("config.json").is_file() {
        return Ok(inner);
    }
    Err(anyhow!(
        "model {}: a directory without config.json or model/config.json (expected a Hugging \
         Face model directory, a training checkpoint directory or a .gguf file)",
        path.display()
    ))
}

/// Loads the model of `--model PATH` (see [`resolve`]) as f32 on the CPU.
///
/// # Errors
/// Exit code 2 for a missing path or an unreadable, malformed or inconsistent checkpoint; the
/// message names the file.
pub fn load(path: &Path) -> Result<Model, ExitError> {
    let dir = resolve(path).map_err(bad_input)?;
    load_model(&dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading model {}", dir.display()))
        .map_err(bad_input)
}
