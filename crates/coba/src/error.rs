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
    /// A probe loss whose ratio to the initial loss overflows f64 (e.g. 1e300 over 1e-10).
    #[error("probe at step {step}: loss of task {task} is {value}, whose ratio to the initial loss overflows")]
    RatioOverflow {
        /// Training step of the probe.
        step: u64,
        /// Task index (config order).
        task: usize,
        /// The loss.
        value: f64,
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
