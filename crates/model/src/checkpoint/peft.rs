//! LoRA adapters in PEFT's directory format (peft 0.21 `save_pretrained`):
//! `adapter_model.safetensors` (keys `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
//! ..., f32, metadata `{"format": "pt"}`) and `adapter_config.json` ([`AdapterConfig`]), which
//! `PeftModel.from_pretrained(base, dir)` loads.

use super::error::CheckpointError;
use crate::lora::LoraSettings;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The adapter weights' file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config's file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// `adapter_config.json`: the fields of PEFT's `LoraConfig` that describe these adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// `"LORA"`.
    pub peft_type: String,
    /// `"CAUSAL_LM"`.
    pub task_type: String,
    /// The base model the adapters were trained on (a path or hub name).
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// alpha.
    pub lora_alpha: f64,
    /// Dropout on A's input.
    pub lora_dropout: f64,
    /// Targeted module names.
    pub target_modules: Vec<String>,
    /// `"none"`: biases are not trained.
    pub bias: String,
    /// `false`: weights are `(out, in)`.
    pub fan_in_fan_out: bool,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// `false`.
    pub use_dora: bool,
    /// `true`: loads for inference unless asked otherwise.
    pub inference_mode: bool,
    /// PEFT's per-module alpha overrides (not supported: must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_pattern: Option<serde_json::Value>,
    /// PEFT's per-module rank overrides (not supported: must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_pattern: Option<serde_json::Value>,
    /// PEFT's layer subset (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<serde_json::Value>,
}

impl AdapterConfig {
    /// The config of adapters with `settings` over `base`.
    pub fn new(settings: &LoraSettings, base: Option<String>) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            base_model_name_or_path: base,
            r: settings.r,
            lora_alpha: settings.alpha,
            lora_dropout: settings.dropout,
            target_modules: settings.target_modules.clone(),
            bias: "none".into(),
            fan_in_fan_out: false,
            use_rslora: settings.use_rslora,
            use_dora: false,
            inference_mode: true,
            alpha_pattern: None,
            rank_pattern: None,
            layers_to_transform: None,
        }
    }

    /// Refuses what these adapters would need and this version does not implement (instead
    /// of a silently different model): DoRA, per-module alpha or rank, a layer subset.
    ///
    /// # Errors
    /// Names the PEFT field.
    pub fn check_supported(&self) -> Result<(), String> {
        let set = |v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Object(m)) => !m.is_empty(),
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        let unsupported = [
            ("use_dora", self.use_dora),
            ("alpha_pattern", set(&self.alpha_pattern)),
            ("rank_pattern", set(&self.rank_pattern)),
            ("layers_to_transform", set(&self.layers_to_transform)),
        ];
        match unsupported.iter().find(|(_, on)| *on) {
            Some((field, _)) => Err(format!(
                "`{field}` is set: adapters using it are not supported in this version"
            )),
            None => Ok(()),
        }
    }

    /// The settings these adapters were trained with.
    pub fn settings(&self) -> LoraSettings {
        let mut target_modules = self.target_modules.clone();
        target_modules.sort();
        LoraSettings {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules,
            use_rslora: self.use_rslora,
        }
    }
}

/// Writes `tensors` (PEFT keys) and `config` into `dir` (created).
///
/// # Errors
/// An IO or serialization failure, naming the file.
pub fn save_adapter(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let cpath = dir.join(ADAPTER_CONFIG);
    let text =
        serde_json::to_string_pretty(config).map_err(|e| CheckpointError::format(&cpath, e))?;
    std::fs::write(&cpath, text).map_err(|e| CheckpointError::io(&cpath, e))?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors.iter(), Some(metadata), &wpath)
        .map_err(|e| CheckpointError::format(&wpath, e))?;
    super::set_output_permissions(&wpath).map_err(|e| CheckpointError::io(&wpath, e))
}

/// Reads an adapter directory: its config and its tensors by PEFT key.
///
/// # Errors
/// A missing or malformed file, naming it.
pub fn load_adapter(
    dir: &Path,
    device: &Device,
) -> Result<(AdapterConfig, BTreeMap<String, Tensor>), CheckpointError> {
    let cpath = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cpath).map_err(|e| CheckpointError::io(&cpath, e))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::format(&cpath, e))?;
    if raw
        .get("target_modules")
        .is_some_and(serde_json::Value::is_string)
    {
        return Err(CheckpointError::format(
            &cpath,
            "target_modules is a pattern string: only a list of module names is supported",
        ));
    }
    let config: AdapterConfig =
        serde_json::from_value(raw).map_err(|e| CheckpointError::format(&cpath, e))?;
    config
        .check_supported()
        .map_err(|m| CheckpointError::format(&cpath, m))?;
    if config.peft_type != "LORA" {
        return Err(CheckpointError::format(
            &cpath,
            format!("peft_type {:?}: only LORA adapters load", config.peft_type),
        ));
    }
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let tensors = candle_core::safetensors::load(&wpath, device)
        .map_err(|e| CheckpointError::format(&wpath, e))?;
    Ok((config, tensors.into_iter().collect()))
}
