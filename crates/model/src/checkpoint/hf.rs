//! Hugging Face checkpoint directories: `config.json` plus `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`.

use super::error::CheckpointError;
use crate::{CausalLm, Llama, LlamaConfig, Model, Phi, PhiConfig};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Loads `dir/config.json` and its safetensors weights (f32, f16 or bf16), converted to
/// `dtype` on `device`. `model_type` `phi` gives a [`Phi`], anything else a [`Llama`] (whose
/// config check rejects unknown types).
///
/// # Errors
/// [`CheckpointError::Io`] for missing files, [`CheckpointError::Format`] for malformed JSON
/// or safetensors, [`CheckpointError::Model`] when the weights do not fit the config.
pub fn load_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Model, CheckpointError> {
    let cpath = dir.join("config.json");
    let text = std::fs::read_to_string(&cpath).map_err(|e| CheckpointError::io(&cpath, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::format(&cpath, e))?;
    let is_phi = json.get("model_type").and_then(|v| v.as_str()) == Some("phi");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in weight_files(dir)? {
        let part = candle_core::safetensors::load(&file, device)
            .map_err(|e| CheckpointError::format(&file, e))?;
        tensors.extend(part);
    }
    Ok(if is_phi {
        Phi::from_tensors(PhiConfig::from_json(&text)?, tensors, dtype, device)?.into()
    } else {
        Llama::from_tensors(LlamaConfig::from_json(&text)?, tensors, dtype, device)?.into()
    })
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| CheckpointError::io(&index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::format(&index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::format(&index, "no weight_map object"))?;
    let mut files = BTreeSet::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| CheckpointError::format(&index, "weight_map value is not a string"))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(CheckpointError::format(&index, format!("shard name {f:?}")));
        }
        files.insert(dir.join(f));
    }
    Ok(files.into_iter().collect())
}

/// Writes `dir/config.json` and `dir/model.safetensors` (parameters in the model's dtype, LoRA
/// adapters merged in;
/// a tied LM head is not written, as HF does). Adds `architectures` and `torch_dtype` to the
/// config when absent so `transformers.AutoModelForCausalLM` and candle-transformers load it.
///
/// # Errors
/// [`CheckpointError::Io`] or [`CheckpointError::Format`] on a write failure.
pub fn save_hf_dir(model: &Model, dir: &Path) -> Result<(), CheckpointError> {
    // With LoRA adapters attached: the base with the adapters merged in.
    let tensors = model.merged_tensors()?;
    save_hf_parts(
        &HfParts {
            config_json: &model.config_json(),
            model_type: model.model_type(),
            dtype: model.dtype(),
            tensors: &tensors,
        },
        dir,
    )
}

/// What [`save_hf_parts`] writes: a model's config, type, dtype and named tensors, e.g. an
/// in-memory snapshot taken so that writing can happen on another thread.
#[derive(Debug, Clone, Copy)]
pub struct HfParts<'a> {
    /// HF `config.json` text.
    pub config_json: &'a str,
    /// HF `model_type`.
    pub model_type: &'a str,
    /// Parameter dtype (for `torch_dtype`).
    pub dtype: DType,
    /// Parameters by HF name.
    pub tensors: &'a std::collections::BTreeMap<String, Tensor>,
}

/// [`save_hf_dir`] from parts (config text and tensors) instead of a live model.
///
/// # Errors
/// [`CheckpointError::Io`] or [`CheckpointError::Format`] on a write failure.
pub fn save_hf_parts(parts: &HfParts<'_>, dir: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let arch = match parts.model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        "phi" => "PhiForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut cfg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(parts.config_json).map_err(|e| CheckpointError::format(dir, e))?;
    cfg.entry("architectures")
        .or_insert_with(|| serde_json::json!([arch]));
    let dtype = match parts.dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    };
    cfg.insert("torch_dtype".into(), serde_json::json!(dtype));
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| CheckpointError::format(dir, e))?;
    let cpath = dir.join("config.json");
    std::fs::write(&cpath, text).map_err(|e| CheckpointError::io(&cpath, e))?;
    let tensors: HashMap<String, Tensor> = parts
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let wpath = dir.join("model.safetensors");
    super::save_safetensors(&tensors, &wpath).map_err(|e| CheckpointError::format(&wpath, e))
}
