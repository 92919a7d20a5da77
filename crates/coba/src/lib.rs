//! Loss-space task weighting for multi-task fine-tuning.
//!
//! The heart of coba-dist: **CoBa**, the Convergence Balancer (Gong et al. 2024,
//! arXiv 2410.06741), and the baselines of its comparison (uniform, LBTW, DWA, FAMO), behind
//! one trait, [`TaskWeighter`], driven by one [`Schedule`] through [`Weighter`]. Everything is
//! float64, deterministic and serde-serializable; this crate does no IO and knows nothing of
//! tensors, ranks or files.
//!
//! The semantics are MFTCoder's official `CoBaStatus` with its NaN/crash cases guarded, as
//! pinned by the test vectors in `tests/data/coba/` (see the README there).
//!
//! ```
//! use coba::{Weighter, WeighterConfig, Source};
//!
//! let config = WeighterConfig { warmup_steps: 2, history_length: 4, ..Default::default() };
//! // Initial validation losses of two tasks (full validation pass before step 0).
//! let mut weighter = Weighter::new(&config, &[2.0, 1.0]).unwrap();
//! for step in 0..6u64 {
//!     let w = weighter.weights_for_step(step).unwrap();
//!     assert!((w.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
//!     if step < 2 { assert_eq!(w.source, Source::Warmup) } else { assert_eq!(w.source, Source::Computed) }
//!     // ... train step `step` with w.weights ...
//!     if weighter.is_probe_step(step) {
//!         let t = (step + 1) as f64;
//!         weighter.observe_probe(step, &[Some(2.0 / t), Some(1.0 - 0.01 * t)]).unwrap();
//!     }
//! }
//! ```
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod baselines;
mod coba;
mod error;
mod gradnorm;
mod math;
mod message;
mod schedule;
mod weighter;
mod window;

pub use baselines::{Dwa, Famo, Lbtw, Uniform, DWA_TEMPERATURE, FAMO_DECAY, FAMO_LR, LBTW_BETA};
pub use coba::{Coba, CobaConfig, CobaExplain, Variant, MAX_TAU};
pub use error::WeightError;
pub use gradnorm::{GradNorm, GRADNORM_ALPHA, GRADNORM_FLOOR, GRADNORM_LR};
pub use message::WeightMessage;
pub use schedule::{Schedule, Source};
pub use weighter::{
    Computed, Method, MethodKind, Probe, Signal, StepWeights, TaskWeighter, Weighter,
    WeighterConfig,
};
pub use window::WindowFit;

/// Largest accepted loss ratio `l_i(t) / l_i(0)`; a larger one is
/// [`WeightError::RatioOutOfRange`] (real curves stay within a few units of 1).
pub const MAX_RATIO: f64 = 1e100;

fn check_num_tasks(num_tasks: usize) -> Result<(), WeightError> {
    if num_tasks == 0 {
        return Err(WeightError::InvalidSetting {
            name: "num_tasks",
            value: "0".into(),
            reason: "at least one task is needed",
        });
    }
    Ok(())
}
