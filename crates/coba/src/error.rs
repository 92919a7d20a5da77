//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong when building or driving a task weighter.
///
/// Every variant names the offending setting, task index or step, so a caller can turn it into a
/// message that points at a file line or config key without more context.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WeightError {
    /// A hyperparameter is outside its domain (K = 0, U = 0, H < 2, tau not finite or <= 0, ...).
    #[error("invalid setting `{name}` = {value}: {reason}")]
    InvalidSetting {
        /// The field's name as in the config (`history_length`, `tau`, ...).
        name: &'static str,
        /// The rejected value, printed.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// The initial validation loss of a task is <= 0 or not finite: ratios would be meaningless.
    #[error("initial loss of task {task} is {value}: it must be finite and > 0")]
    InvalidInitialLoss {
        /// Task index (config order).
        task: usize,
        /// The rejected loss.
        value: f64,
    },
    /// A probe loss is negative, NaN or infinite.
    #[error("probe at step {step}: loss of task {task} is {value}: it must be finite and >= 0")]
    InvalidProbeLoss {
        /// Training step after whose update the probe was measured.
        step: u64,
        /// Task index (config order).
        task: usize,
        /// The rejected loss.
        value: f64,
    },
    /// A probe loss whose ratio to the initial loss is above [`crate::MAX_RATIO`] (e.g. 1e8 over
    /// 1e-300): certainly a logging error, and the slope sums would overflow.
    #[error("probe at step {step}: loss of task {task} is {value}, {ratio:e} times its initial loss (at most 1e100 is accepted)")]
    RatioOutOfRange {
        /// Training step of the probe.
        step: u64,
        /// Task index (config order).
        task: usize,
        /// The loss.
        value: f64,
        /// The ratio `loss / initial loss`.
        ratio: f64,
    },
    /// A rule produced a non-finite weight: a bug (every input path is guarded); the error
    /// keeps the trainer from using it.
    #[error(
        "weights at step {step} are not finite: {weights:?} (please report this with the loss log)"
    )]
    NonFiniteWeights {
        /// The training step.
        step: u64,
        /// The offending weights.
        weights: Vec<f64>,
    },
    /// A method that needs every task in every probe (all baselines) got an absent task.
    #[error("probe at step {step}: task {task} is absent, but method `{method}` needs every task in every probe")]
    MissingTask {
        /// Training step of the probe.
        step: u64,
        /// Task index (config order).
        task: usize,
        /// The method's name (`lbtw`, `dwa`, `famo`, `uniform`).
        method: &'static str,
    },
    /// GradNorm needs each task's gradient norm of the shared layer with every probe.
    #[error("probe at step {step}: method `gradnorm` needs per-task gradient norms of the shared layer ({reason})")]
    MissingGradNorms {
        /// Training step of the probe.
        step: u64,
        /// What is missing or wrong.
        reason: String,
    },
    /// A vector of per-task values has the wrong length.
    #[error("expected {expected} per-task values, got {got}")]
    WrongTaskCount {
        /// K, the number of tasks.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// Steps were requested or probed out of the replay order (see [`crate::Schedule`]).
    #[error("out of order at step {step}: {reason}")]
    OutOfOrder {
        /// The step passed by the caller.
        step: u64,
        /// What was expected instead.
        reason: String,
    },
}
