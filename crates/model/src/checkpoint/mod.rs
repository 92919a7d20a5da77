//! Model checkpoints in and out: Hugging Face directories (safetensors, sharded or not) and
//! GGUF files (dequantized).

mod error;
mod gguf;
mod hf;
mod peft;

pub use error::CheckpointError;
pub use gguf::{gguf_to_hf_name, load_gguf, unpermute_rows};
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
/// `PATH/model/`), or a `.gguf` file, converting the weights to
/// `dtype` on `device`.
///
/// # Errors
/// See [`load_hf_dir`] and [`load_gguf`].
pub fn load_model(path: &Path, dtype: DType, device: &Device) -> Result<Model, CheckpointError> {
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
