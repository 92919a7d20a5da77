//! Model checkpoints in and out: Hugging Face directories (safetensors, sharded or not) and
//! GGUF files (dequantized).

mod error;
mod gguf;
mod hf;

pub use error::CheckpointError;
pub use gguf::{gguf_to_hf_name, load_gguf, unpermute_rows};
pub use hf::{load_hf_dir, save_hf_dir, save_hf_parts, HfParts};

use crate::model::Model;
use candle_core::{DType, Device};
use std::path::Path;

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
