//! The Llama-family configuration, read from and written to a Hugging Face `config.json`.
//!
//! One struct covers Llama / CodeLlama / Mistral (no sliding window) / Qwen2 / SmolLM2: the
//! fields are the ones `transformers.LlamaConfig` and `Qwen2Config` share. Fields we do not use
//! are kept in [`LlamaConfig::extra`] so that a loaded config is written back unchanged.

use super::error::ModelError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_model_type() -> String {
    "llama".to_string()
}

/// Hyper-parameters of a Llama-family decoder (Hugging Face `config.json` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `"llama"`, `"mistral"` or `"qwen2"` (Qwen2 implies q/k/v biases).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size `V` (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent means equal to the query heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; absent means `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest position the model was trained for (informational; RoPE tables are computed for
    /// any position).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// The LM head shares `embed_tokens.weight`.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o projections (Llama's `attention_bias`; Qwen2 has q/k/v biases always).
    #[serde(default)]
    pub attention_bias: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl LlamaConfig {
    /// Parses a `config.json` text and validates it.
    ///
    /// # Errors
    /// [`ModelError::Config`] on malformed JSON or inconsistent sizes,
    /// [`ModelError::Unsupported`] for features we do not implement (RoPE scaling, activations
    /// other than SiLU, sliding-window attention).
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as pretty JSON (for `config.json`).
    pub fn to_json(&self) -> String {
        // A struct of plain fields and a JSON map cannot fail to serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Key/value heads (defaults to the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections carry biases (Qwen2, or `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }

    /// Whether the output projection carries a bias (`attention_bias` on Llama; never on Qwen2).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }

    /// Checks sizes and rejects features the model does not implement.
    ///
    /// # Errors
    /// See [`LlamaConfig::from_json`].
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return bad(
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            );
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 {
            return bad("vocab_size and intermediate_size must be > 0".into());
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return bad(format!("head_dim {hd} must be even and > 0"));
        }
        if self.head_dim.is_none() && hd * self.num_attention_heads != self.hidden_size {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        match self.model_type.as_str() {
            "llama" | "mistral" | "qwen2" => {}
            other => return Err(ModelError::Unsupported(format!("model_type {other:?}"))),
        }
        if let Some(act) = self.extra.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ModelError::Unsupported(format!("hidden_act {act}")));
            }
        }
        if let Some(s) = self.extra.get("rope_scaling") {
            if !s.is_null() {
                return Err(ModelError::Unsupported(format!("rope_scaling {s}")));
            }
        }
        if self
            .extra
            .get("use_sliding_window")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err(ModelError::Unsupported("sliding-window attention".into()));
        }
        Ok(())
    }

    /// A tiny config for tests: `layers` layers of width `hidden`, `heads`/`kv_heads` heads.
    pub fn tiny(vocab: usize, hidden: usize, layers: usize, heads: usize, kv_heads: usize) -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: hidden * 2 + hidden / 2,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            attention_bias: false,
            extra: BTreeMap::new(),
        }
    }
}
