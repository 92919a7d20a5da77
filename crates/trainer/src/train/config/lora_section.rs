//! `[lora]`: LoRA fine-tuning with PEFT's settings (MFTCoder's recipes use r = 96,
//! alpha = 32 on every linear layer). Off by default.

use candle_core::quantized::GgmlDType;
use model::lora::{LoraSettings, LLAMA_PROJECTIONS};
use serde::{Deserialize, Serialize};

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Train LoRA adapters instead of every weight. Default false.
    pub enabled: bool,
    /// Rank. Default 96.
    pub r: usize,
    /// Scale numerator (`s = alpha / r`). Default 32.
    pub alpha: f64,
    /// Dropout on the adapters' input (PEFT's `lora_dropout`; MFTCoder uses 0.05), masks
    /// drawn from (seed, step, global row). Default 0.
    pub dropout: f64,
    /// `"all-linear"` (every projection of a block, not the LM head, as PEFT) or a list of
    /// projection names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`). Default `"all-linear"`.
    pub target_modules: TargetModules,
    /// rsLoRA scaling `alpha / sqrt(r)`. Default false.
    pub use_rslora: bool,
    /// QLoRA: hold the frozen base's projection weights quantized. `"none"` (default: dense
    /// f32), `"gguf"` (keep a GGUF `model.path`'s own block formats, e.g. Q4_1), or a GGML block
    /// format to quantize any base to on load (`q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q4_k`,
    /// ...; K-quants need input sizes divisible by 256).
    pub quantize_base: String,
}

/// What `lora.quantize_base` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuant {
    /// A dense base.
    None,
    /// A GGUF file's projections as stored.
    Gguf,
    /// Projections quantized to this block format on load.
    Format(GgmlDType),
}

/// `lora.target_modules`: the string `"all-linear"` or a list of names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `"all-linear"`.
    All(String),
    /// Named projections.
    List(Vec<String>),
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            enabled: false,
            r: 96,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: TargetModules::All("all-linear".into()),
            use_rslora: false,
            quantize_base: "none".into(),
        }
    }
}

impl LoraSection {
    /// `quantize_base` as state.json records it (lower case).
    pub fn quantize_base_name(&self) -> String {
        self.quantize_base.to_ascii_lowercase()
    }

    /// `quantize_base` parsed.
    ///
    /// # Errors
    /// An unknown value, naming the key and the accepted ones.
    pub fn base_quant(&self) -> Result<BaseQuant, String> {
        match self.quantize_base_name().as_str() {
            "none" => Ok(BaseQuant::None),
            "gguf" => Ok(BaseQuant::Gguf),
            other => model::quantized::parse_format(other)
                .map(BaseQuant::Format)
                .map_err(|e| {
                    format!(
                        "key `lora.quantize_base`: \"none\", \"gguf\" or {}",
                        e.trim_start_matches("expected ")
                    )
                }),
        }
    }

    /// The model crate's settings for a Llama-family model (see [`LoraSection::settings_for`]);
    /// what validation checks before a model exists.
    ///
    /// # Errors
    /// As [`LoraSection::settings_for`].
    pub fn settings(&self) -> Result<LoraSettings, String> {
        self.settings_for(&LLAMA_PROJECTIONS)
    }

    /// The model crate's settings, `"all-linear"` expanded to `projections` (the model's:
    /// [`model::Model::lora_projections`]), the list sorted.
    ///
    /// # Errors
    /// A string other than `"all-linear"`, or invalid settings (message names the key).
    pub fn settings_for(&self, projections: &[&str]) -> Result<LoraSettings, String> {
        let mut target_modules = match &self.target_modules {
            TargetModules::All(s) if s == "all-linear" => {
                projections.iter().map(|m| m.to_string()).collect()
            }
            TargetModules::All(s) => {
                return Err(format!(
                    "key `lora.target_modules`: \"{s}\": give \"all-linear\" or a list of names"
                ))
            }
            TargetModules::List(l) => l.clone(),
        };
        target_modules.sort();
        target_modules.dedup();
        let s = LoraSettings {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules,
            use_rslora: self.use_rslora,
        };
        s.validate().map_err(|e| match e {
            model::ModelError::Config(m) => format!("key {m}"),
            other => other.to_string(),
        })?;
        Ok(s)
    }
}
