//! Model checkpoints in and out: Hugging Face directories (safetensors, sharded or not) and
//! GGUF files (dequantized).

mod error;
mod gguf;
mod hf;
mod peft;

pub use error::CheckpointError;
pub use gguf::{gguf_to_hf_name, load_gguf, load_gguf_quantized, unpermute_rows};
pub use hf::{load_hf_dir, save_hf_dir, save_hf_parts, HfParts};
pub use peft::{load_adapter, save_adapter, AdapterConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

use crate::Model;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes `tensors` to the safetensors file `path` with the permissions every other output
/// file gets (`0666` less the process umask, i.e. `0644` usually). The safetensors crate
/// writes through a private temporary file (`0600`) that it renames, which left model and
/// optimizer files unreadable to a group that could read everything else.
///
/// # Errors
/// candle's serialization or IO error, or a failed `chmod`.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> candle_core::Result<()> {
    candle_core::safetensors::save(tensors, path)?;
    set_output_permissions(path)?;
    Ok(())
}

/// `chmod 0666 & !umask` (see [`save_safetensors`]).
fn set_output_permissions(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o666 & !umask();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The process umask from `/proc/self/status` (Linux 4.7+), else the common `022`.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Loads a model from a HF checkpoint directory, one of our training checkpoints (HF model in
/// `PATH/model/`, or LoRA adapters in `PATH/adapter/`), a PEFT adapter directory
/// (`adapter_config.json`: the base named by its `base_model_name_or_path` is loaded and the
/// adapters attached), or a `.gguf` file, converting the weights to `dtype` on `device`.
///
/// # Errors
/// See [`load_hf_dir`], [`load_gguf`] and [`load_adapter`]; an adapter without a base path.
pub fn load_model(path: &Path, dtype: DType, device: &Device) -> Result<Model, CheckpointError> {
    let adapter_dir = if path.join(ADAPTER_CONFIG).is_file() {
        Some(path.to_path_buf())
    } else if path.join("adapter").join(ADAPTER_CONFIG).is_file() {
        Some(path.join("adapter"))
    } else {
        None
    };
    if let Some(dir) = adapter_dir.filter(|_| !path.join("config.json").exists()) {
        return load_with_adapter(None, &dir, dtype, device);
    }
    if path.is_dir()
        && !path.join("config.json").exists()
        && path.join("model/config.json").exists()
    {
        // One of our training checkpoints: the HF model sits in `model/`.
        load_hf_dir(&path.join("model"), dtype, device)
    } else if path.is_dir() {
        load_hf_dir(path, dtype, device)
    } else {
        Ok(load_gguf(path, dtype, device)?.into())
    }
}

/// The base model (`base`, else the adapter config's `base_model_name_or_path`) with the
/// adapters of `adapter_dir` attached.
///
/// # Errors
/// Loading either fails, or no base is known.
pub fn load_with_adapter(
    base: Option<&Path>,
    adapter_dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Model, CheckpointError> {
    let (cfg, tensors) = load_adapter(adapter_dir, device)?;
    let base =
        match (base, &cfg.base_model_name_or_path) {
            (Some(b), _) => b.to_path_buf(),
            (None, Some(b)) => std::path::PathBuf::from(b),
            (None, None) => return Err(CheckpointError::format(
                &adapter_dir.join(ADAPTER_CONFIG),
                "LoRA adapters without base_model_name_or_path: give the base model (merge --base)",
            )),
        };
    // A base that is itself an adapter directory (a LoRA run on a LoRA run's best/) is
    // its merged weights, as training saw it.
    let mut model = load_model(&base, dtype, device)?.merged()?;
    model.attach_lora(cfg.settings(), 0, Some(tensors))?;
    Ok(model)
}
