//! Optimizer, learning-rate schedule and gradient utilities (clipping, accumulation).

mod adamw;
mod grads;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, OptimError};
pub use grads::{accumulate, clip_grad_norm, global_norm, scale};
pub use schedule::LrSchedule;
