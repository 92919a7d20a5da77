//! The coba-dist model library: the training-mode transformer on candle (configs,
//! differentiable layers, the Llama-family and Phi decoders, the chunked loss and its
//! gradients, generation with a KV cache), the optimizer ([`optim`]: AdamW with f32 master
//! weights, LR schedules, gradient clipping) and the checkpoint formats ([`checkpoint`]: HF
//! safetensors directories, GGUF). It knows nothing of the training loop, the weighting or
//! the command line (crates `trainer` and `coba`).
//!
//! Everything is built from candle ops that have a backward pass (candle-transformers' fused
//! ops do not); `crates/model/tests/*.rs` check logits against candle-transformers and gradients
//! against finite differences.

#![warn(missing_docs)]

mod any;
mod batch;
pub mod checkpoint;
mod config;
mod error;
pub mod fused;
mod generate;
pub mod head_grads;
pub mod init;
mod kv_cache;
pub mod layers;
mod llama;
mod lm;
pub mod lora;
mod loss;
pub mod matmul;
pub mod optim;
mod phi;
pub mod quantized;
pub mod softmax_node;

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
