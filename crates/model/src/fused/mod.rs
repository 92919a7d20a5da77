//! Fused CPU kernels with a hand-written backward for the memory-bound parts of a training
//! step: attention (scores, causal/segment mask, softmax, values), RMSNorm, head split/merge
//! with RoPE, SwiGLU, the linear layer, and the cross-entropy of the LM head.
//!
//! candle's own fused kernels have no backward, and the composed forms in
//! [`super::layers`] write a fresh full-size tensor per elementary op (a causal softmax over
//! `(batch, heads, seq, seq)` scores is seven of them forward and more backward). Each op here
//! reads its input once and writes one output, forward and backward; on the CPU it replaces the
//! composed form, which stays the reference (`crates/model/tests/fused.rs` checks values and gradients
//! of both at 1e-12 in f64) and the path for other devices and dtypes.
//!
//! Kernels run on the CPU for f32 and f64, rows split across candle's own thread pool (sized
//! by `RAYON_NUM_THREADS`); any other device or dtype takes the composed path. Results do not
//! depend on the thread count or timing (every reduction has a fixed order).

mod attention;
mod cross_entropy;
mod frozen;
mod head_loss;
mod heads;
mod linear;
mod lora_linear;
mod rms_norm;
mod rope;
mod softmax;
mod storage;
mod swiglu;

pub use attention::attention;
pub use cross_entropy::cross_entropy;
pub use frozen::frozen;
pub use head_loss::head_cross_entropy;
pub use heads::{merge_heads, split_heads};
pub use linear::{frozen_linear, linear};
pub use lora_linear::lora_linear;
pub use rms_norm::rms_norm;
pub use rope::RopeTables;
pub use softmax::AttentionMask;
pub use storage::exp_f32;
pub use swiglu::swiglu;

use candle_core::{DType, Tensor};

/// Whether the fused kernel handles this tensor (CPU, f32 or f64, not empty) and fusion is not
/// turned off with `COBA_FUSED=0` (kept for A/B benchmarks and debugging). Empty tensors take
/// the composed path, whose shape rules for zero-width dims the kernels need not repeat.
pub(crate) fn fused_ok(t: &Tensor) -> bool {
    t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && t.elem_count() > 0
        && fusion_enabled()
}

fn fusion_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("COBA_FUSED").map_or(true, |v| v != "0"))
}
