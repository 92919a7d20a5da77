//! The training-mode transformer on candle: configs, differentiable layers, the Llama-family
//! decoder, the chunked loss and its gradients.
//!
//! Everything is built from candle ops that have a backward pass (candle-transformers' fused
//! ops do not); `tests/model_*.rs` check logits against candle-transformers and gradients
//! against finite differences.

mod any;
mod batch;
mod config;
mod error;
pub mod fused;
mod generate;
pub mod init;
mod kv_cache;
pub mod layers;
mod llama;
mod lm;
mod loss;
mod phi;

pub use any::Model;
pub use batch::TokenBatch;
pub use config::LlamaConfig;
pub use error::ModelError;
pub use generate::Sampling;
pub use kv_cache::KvCache;
pub use llama::{is_norm_or_bias, parameter_shapes, Llama, EMBED, FINAL_NORM, LM_HEAD};
pub use lm::CausalLm;
pub use loss::{Gradients, LossOptions, LossReport, StepOutput, TaskLoss};
pub use phi::{phi_parameter_shapes, Phi, PhiConfig};
