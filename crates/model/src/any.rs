//! A model of any supported architecture, chosen by a checkpoint's `model_type`.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::llama::Llama;
use super::lm::CausalLm;
use super::phi::Phi;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

/// A Llama-family or Phi model.
#[derive(Debug)]
pub enum Model {
    /// Llama / Mistral / Qwen2 / SmolLM2.
    Llama(Llama),
    /// Phi-1 / 1.5 / 2.
    Phi(Phi),
}

impl Model {
    /// The HF `config.json` text of the model's configuration.
    pub fn config_json(&self) -> String {
        match self {
            Model::Llama(m) => m.config().to_json(),
            Model::Phi(m) => m.config().to_json(),
        }
    }

    /// HF `model_type` (`llama`, `mistral`, `qwen2`, `phi`).
    pub fn model_type(&self) -> &str {
        match self {
            Model::Llama(m) => &m.config().model_type,
            Model::Phi(m) => &m.config().model_type,
        }
    }

    /// The Llama-family model, if it is one.
    pub fn as_llama(&self) -> Option<&Llama> {
        match self {
            Model::Llama(m) => Some(m),
            Model::Phi(_) => None,
        }
    }

    /// The Phi model, if it is one.
    pub fn as_phi(&self) -> Option<&Phi> {
        match self {
            Model::Phi(m) => Some(m),
            Model::Llama(_) => None,
        }
    }

    /// The LoRA adapters, if attached.
    pub fn lora(&self) -> Option<&crate::lora::Lora> {
        match self {
            Model::Llama(m) => m.lora(),
            Model::Phi(m) => m.lora(),
        }
    }

    /// The projection names LoRA can target in this architecture (PEFT's `"all-linear"`).
    pub fn lora_projections(&self) -> &'static [&'static str] {
        match self {
            Model::Llama(_) => &crate::lora::LLAMA_PROJECTIONS,
            Model::Phi(_) => &crate::lora::PHI_PROJECTIONS,
        }
    }

    /// Attaches adapters: fresh ones from `seed`, or `tensors` (PEFT keys) when given.
    ///
    /// # Errors
    /// Invalid settings (a module the architecture lacks) or adapter tensors.
    pub fn attach_lora(
        &mut self,
        settings: crate::lora::LoraSettings,
        seed: u64,
        tensors: Option<BTreeMap<String, Tensor>>,
    ) -> Result<(), ModelError> {
        let shapes = match self {
            Model::Llama(m) => m.projection_shapes(),
            Model::Phi(m) => m.projection_shapes(),
        };
        let dtype = crate::lora::adapter_dtype(self.dtype());
        let device = self.device().clone();
        let lora = match tensors {
            None => crate::lora::Lora::new(settings, &shapes, seed, dtype, &device)?,
            Some(t) => {
                // Saved adapters are read on the CPU; they live where the model does.
                let t = t
                    .into_iter()
                    .map(|(n, x)| Ok((n, x.to_device(&device)?)))
                    .collect::<Result<BTreeMap<_, _>, ModelError>>()?;
                crate::lora::Lora::from_tensors(settings, &shapes, t, dtype)?
            }
        };
        match self {
            Model::Llama(m) => m.set_lora(lora),
            Model::Phi(m) => m.set_lora(lora),
        }
        Ok(())
    }

    /// Quantizes the base's projection weights to `format` (QLoRA, see
    /// [`Llama::quantize_base`]).
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for Phi; a weight whose input size misfits the blocks.
    pub fn quantize_base(
        &mut self,
        format: candle_core::quantized::GgmlDType,
    ) -> Result<(), ModelError> {
        match self {
            Model::Llama(m) => m.quantize_base(format),
            Model::Phi(_) => Err(ModelError::Unsupported(
                "a quantized base (QLoRA) is implemented for the Llama family, and this model is \
                 phi: use lora.quantize_base = \"none\""
                    .into(),
            )),
        }
    }

    /// The base's quantization for a log line: `None` for a dense base, else e.g.
    /// `"q4_1, 198 weights, 66.4 MiB"` (formats in order of appearance, de-duplicated).
    pub fn quantized_summary(&self) -> Option<String> {
        let q = self.as_llama()?.quantized();
        if q.is_empty() {
            return None;
        }
        let mut formats: Vec<String> = Vec::new();
        for w in q.values() {
            let f = crate::quantized::format_name(w.format());
            if !formats.contains(&f) {
                formats.push(f);
            }
        }
        let bytes: usize = q.values().map(|w| w.bytes()).sum();
        Some(format!(
            "{}, {} weights, {:.2} MiB",
            formats.join("/"),
            q.len(),
            bytes as f64 / (1 << 20) as f64
        ))
    }

    /// The weights to save as a full HF model: the base with any adapters merged in.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn merged_tensors(&self) -> Result<BTreeMap<String, Tensor>, ModelError> {
        match self {
            Model::Llama(m) => m.merged_tensors(),
            Model::Phi(m) => m.merged_tensors(),
        }
    }

    /// Parameters of the model itself (without LoRA adapters): the count FLOPs are quoted
    /// for (`6 × parameters × tokens`).
    pub fn base_num_parameters(&self) -> usize {
        match self {
            Model::Llama(m) => m.base_num_parameters(),
            Model::Phi(m) => m.base_params().values().map(|v| v.elem_count()).sum(),
        }
    }

    /// The model with its adapters merged into the base weights and removed (a plain model;
    /// one without adapters is returned as it is).
    ///
    /// # Errors
    /// A tensor failure.
    pub fn merged(self) -> Result<Model, ModelError> {
        match self {
            Model::Llama(m) if m.lora().is_some() => {
                let tensors = m.merged_tensors()?;
                Ok(Llama::from_tensors(m.config().clone(), tensors, m.dtype(), m.device())?.into())
            }
            Model::Phi(m) if m.lora().is_some() => {
                let tensors = m.merged_tensors()?;
                Ok(Phi::from_tensors(m.config().clone(), tensors, m.dtype(), m.device())?.into())
            }
            other => Ok(other),
        }
    }

    fn inner(&self) -> &dyn CausalLm {
        match self {
            Model::Llama(m) => m,
            Model::Phi(m) => m,
        }
    }
}

impl From<Llama> for Model {
    fn from(m: Llama) -> Self {
        Model::Llama(m)
    }
}

impl From<Phi> for Model {
    fn from(m: Phi) -> Self {
        Model::Phi(m)
    }
}

impl CausalLm for Model {
    fn hidden_cached(
        &self,
        ids: &[u32],
        cache: &mut super::kv_cache::KvCache,
    ) -> Result<Option<Tensor>, ModelError> {
        self.inner().hidden_cached(ids, cache)
    }

    fn hidden(&self, batch: &TokenBatch, track: bool) -> Result<Tensor, ModelError> {
        self.inner().hidden(batch, track)
    }

    fn head(&self, track: bool) -> (Tensor, Option<Tensor>) {
        self.inner().head(track)
    }

    fn head_names(&self) -> (&'static str, Option<&'static str>) {
        self.inner().head_names()
    }

    fn params(&self) -> &BTreeMap<String, Var> {
        self.inner().params()
    }

    fn vocab_size(&self) -> usize {
        self.inner().vocab_size()
    }

    fn dtype(&self) -> DType {
        self.inner().dtype()
    }

    fn device(&self) -> &Device {
        self.inner().device()
    }
}
