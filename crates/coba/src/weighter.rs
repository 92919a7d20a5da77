//! The task-weighting trait, the method registry, and the scheduled driver.

use crate::baselines::{Dwa, Famo, Lbtw, Uniform};
use crate::coba::{Coba, CobaConfig, CobaExplain, Variant};
use crate::gradnorm::GradNorm;
use crate::{Schedule, Source, WeightError};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// One probe as a weighting rule sees it: per-task validation losses measured after the update
/// of `step`, and their ratios to the initial losses. `None` marks a task absent from the probe
/// (an empty CSV cell, or a literal 0 as MFTCoder treats it). Both slices have length K.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// Training step after whose update the probe was measured (>= 1).
    pub step: u64,
    /// `l_i(t)`: mean validation loss per task in nats per token.
    pub losses: &'a [Option<f64>],
    /// `l_i(t) / l_i(0)`: the loss ratio.
    pub ratios: &'a [Option<f64>],
    /// Per task, the L2 norm of the gradient of its mean training loss with respect to the
    /// shared layer (GradNorm's `G_i`); `None` for rules that do not use it.
    pub grad_norms: Option<&'a [f64]>,
}

/// What a rule returns at a compute step.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// K positive weights summing to 1.
    pub weights: Vec<f64>,
    /// CoBa's intermediates; `None` for the baselines.
    pub explain: Option<CobaExplain>,
}

impl Computed {
    pub(crate) fn plain(weights: Vec<f64>) -> Self {
        Self {
            weights,
            explain: None,
        }
    }
}

/// A loss-space task-weighting rule: it is told every probe and asked for weights at the
/// compute steps of a [`Schedule`]. [`Weighter`] wraps any rule with the schedule (warm-up,
/// carried weights, step-order checks); implementors only see probes and computations, in
/// order. State must be serde-serializable so a resumed run continues with identical weights.
pub trait TaskWeighter {
    /// Method name as in configs and the CLI (`coba`, `uniform`, `lbtw`, `dwa`, `famo`).
    fn name(&self) -> &'static str;
    /// K, the number of tasks.
    fn num_tasks(&self) -> usize;
    /// Records one probe (already validated: lengths K, finite, non-negative, 0 mapped to absent).
    ///
    /// # Errors
    /// A method that needs every task returns [`WeightError::MissingTask`].
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError>;
    /// Computes the weights used by training step `step` from the probes so far.
    fn compute(&mut self, step: u64) -> Computed;
}

/// The selectable methods (`[coba] method` in configs, `--method` in the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// [`Coba`].
    #[default]
    Coba,
    /// [`Uniform`].
    Uniform,
    /// [`Lbtw`].
    Lbtw,
    /// [`Dwa`].
    Dwa,
    /// [`Famo`].
    Famo,
    /// [`GradNorm`].
    Gradnorm,
}

impl MethodKind {
    /// Every method, in the order they are documented.
    pub const ALL: [MethodKind; 6] = [
        MethodKind::Coba,
        MethodKind::Uniform,
        MethodKind::Lbtw,
        MethodKind::Dwa,
        MethodKind::Famo,
        MethodKind::Gradnorm,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Coba => "coba",
            MethodKind::Uniform => "uniform",
            MethodKind::Lbtw => "lbtw",
            MethodKind::Dwa => "dwa",
            MethodKind::Famo => "famo",
            MethodKind::Gradnorm => "gradnorm",
        }
    }
}

impl FromStr for MethodKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MethodKind::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown method `{s}` (expected coba, uniform, lbtw, dwa, famo or gradnorm)"
                )
            })
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which losses a rule observes (the CoBa paper's naming: a starred method, e.g. LBTW*,
/// weights by validation losses; the plain one by training losses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// Validation losses of the probe after each update (CoBa, and LBTW*, DWA*, FAMO*).
    #[default]
    Valid,
    /// The global batch's per-task training losses of the step (LBTW, DWA, FAMO as published);
    /// `l_i(0)` stays the initial validation loss, the pre-training loss's estimate. No probe
    /// forward runs.
    Train,
}

impl Signal {
    /// `valid` or `train`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Valid => "valid",
            Signal::Train => "train",
        }
    }

    /// Whether `method` may observe this signal: CoBa is defined on validation losses, and
    /// uniform observes nothing.
    pub fn allowed_for(self, method: MethodKind) -> bool {
        self == Signal::Valid
            || matches!(
                method,
                MethodKind::Lbtw | MethodKind::Dwa | MethodKind::Famo | MethodKind::Gradnorm
            )
    }
}

/// Settings of a weighter: the `[coba]` config section and the `replay` options.
/// Defaults (CoBa paper / MFTCoder): method coba, variant mftcoder, W = 100, H = 200, τ = 5, U = 1.
/// `variant`, `history_length` and `tau` only affect CoBa (they are still validated).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeighterConfig {
    /// Weighting method.
    pub method: MethodKind,
    /// CoBa mixing rule.
    pub variant: Variant,
    /// W, in steps.
    pub warmup_steps: u64,
    /// H, in probes (>= 2).
    pub history_length: usize,
    /// τ (0 < τ <= 1e6).
    pub tau: f64,
    /// U, in steps (>= 1).
    pub update_interval: u64,
    /// The losses the rule observes (default `valid`; `train` for LBTW, DWA, FAMO only).
    pub signal: Signal,
}

impl WeighterConfig {
    /// The paper's name of the configured method: `CoBa`, `Uniform`, `LBTW*` (validation
    /// signal) or `LBTW` (training signal), `DWA*`/`DWA`, `FAMO*`/`FAMO`.
    pub fn label(&self) -> String {
        let base = match self.method {
            MethodKind::Coba => return "CoBa".into(),
            MethodKind::Uniform => return "Uniform".into(),
            MethodKind::Lbtw => "LBTW",
            MethodKind::Dwa => "DWA",
            MethodKind::Famo => "FAMO",
            MethodKind::Gradnorm => "GradNorm",
        };
        match self.signal {
            Signal::Valid => format!("{base}*"),
            Signal::Train => base.into(),
        }
    }
}

impl Default for WeighterConfig {
    fn default() -> Self {
        Self {
            method: MethodKind::Coba,
            variant: Variant::Mftcoder,
            warmup_steps: 100,
            history_length: 200,
            tau: 5.0,
            update_interval: 1,
            signal: Signal::Valid,
        }
    }
}

/// Any of the methods, as one serializable value (the state saved in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Method {
    Coba(Coba),
    Uniform(Uniform),
    Lbtw(Lbtw),
    Dwa(Dwa),
    Famo(Famo),
    Gradnorm(GradNorm),
}

impl Method {
    /// Builds the method `config.method` for `num_tasks` tasks.
    ///
    /// # Errors
    /// [`WeightError::InvalidSetting`] for K = 0, H < 2, τ not in (0, 1e6], U = 0.
    pub fn new(num_tasks: usize, config: &WeighterConfig) -> Result<Self, WeightError> {
        if !config.signal.allowed_for(config.method) {
            return Err(WeightError::InvalidSetting {
                name: "signal",
                value: format!(
                    "\"{}\" with method {}",
                    config.signal.as_str(),
                    config.method
                ),
                reason: "training losses drive lbtw, dwa and famo only (CoBa is defined on \
                         validation losses; uniform observes none)",
            });
        }
        // Validate CoBa's settings for every method, so a bad config fails the same way whatever
        // method it selects.
        let coba = Coba::new(
            num_tasks,
            CobaConfig {
                history_length: config.history_length,
                tau: config.tau,
                update_interval: config.update_interval,
                variant: config.variant,
            },
        )?;
        Ok(match config.method {
            MethodKind::Coba => Method::Coba(coba),
            MethodKind::Uniform => Method::Uniform(Uniform::new(num_tasks)?),
            MethodKind::Lbtw => Method::Lbtw(Lbtw::new(num_tasks)?),
            MethodKind::Dwa => Method::Dwa(Dwa::new(num_tasks)?),
            MethodKind::Famo => Method::Famo(Famo::new(num_tasks)?),
            MethodKind::Gradnorm => Method::Gradnorm(GradNorm::new(num_tasks)?),
        })
    }

    fn inner(&self) -> &dyn TaskWeighter {
        match self {
            Method::Coba(m) => m,
            Method::Uniform(m) => m,
            Method::Lbtw(m) => m,
            Method::Dwa(m) => m,
            Method::Famo(m) => m,
            Method::Gradnorm(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn TaskWeighter {
        match self {
            Method::Coba(m) => m,
            Method::Uniform(m) => m,
            Method::Lbtw(m) => m,
            Method::Dwa(m) => m,
            Method::Famo(m) => m,
            Method::Gradnorm(m) => m,
        }
    }
}

impl TaskWeighter for Method {
    fn name(&self) -> &'static str {
        self.inner().name()
    }
    fn num_tasks(&self) -> usize {
        self.inner().num_tasks()
    }
    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        self.inner_mut().observe(probe)
    }
    fn compute(&mut self, step: u64) -> Computed {
        self.inner_mut().compute(step)
    }
}

/// The weights of one training step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWeights {
    /// The training step.
    pub step: u64,
    /// Where the weights come from.
    pub source: Source,
    /// K weights summing to 1 (config task order), positive unless a softmax underflows
    /// (possible only for extreme inputs, e.g. K ≳ 700 with the `paper` variant).
    pub weights: Vec<f64>,
    /// CoBa's intermediates on `computed` steps; `None` otherwise and for baselines.
    pub explain: Option<CobaExplain>,
}

/// A weighting rule driven by the [`Schedule`]: the one object the trainer and `replay` use.
///
/// Call [`weights_for_step`](Self::weights_for_step) for `step = 0, 1, 2, ...` in order, and
/// [`observe_probe`](Self::observe_probe) after the update of every probe step. The whole value
/// is serde-serializable: restoring it continues with identical weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighter<M = Method> {
    schedule: Schedule,
    /// `l_i(0)` from the full validation pass before step 0 (finite, > 0).
    initial_losses: Vec<f64>,
    method: M,
    /// The step whose weights are asked for next.
    next_step: u64,
    /// The last step that was probed.
    last_probe: Option<u64>,
    /// The last computed weights (carried between computations).
    current: Option<Vec<f64>>,
}

impl Weighter<Method> {
    /// A weighter for the tasks whose initial validation losses are `initial_losses`.
    ///
    /// # Errors
    /// [`WeightError::InvalidSetting`] for K = 0, U = 0, H < 2, τ not in (0, 1e6];
    /// [`WeightError::InvalidInitialLoss`] for an initial loss <= 0 or not finite.
    pub fn new(config: &WeighterConfig, initial_losses: &[f64]) -> Result<Self, WeightError> {
        let method = Method::new(initial_losses.len(), config)?;
        Weighter::with_method(
            Schedule::new(config.warmup_steps, config.update_interval)?,
            method,
            initial_losses,
        )
    }
}

impl<M: TaskWeighter> Weighter<M> {
    /// Wraps any rule with a schedule.
    ///
    /// # Errors
    /// As [`Weighter::new`]; [`WeightError::WrongTaskCount`] if `initial_losses.len()` is not
    /// the rule's K.
    pub fn with_method(
        schedule: Schedule,
        method: M,
        initial_losses: &[f64],
    ) -> Result<Self, WeightError> {
        crate::check_num_tasks(initial_losses.len())?;
        check_len(method.num_tasks(), initial_losses.len())?;
        for (task, &value) in initial_losses.iter().enumerate() {
            if !(value.is_finite() && value > 0.0) {
                return Err(WeightError::InvalidInitialLoss { task, value });
            }
        }
        Ok(Self {
            schedule,
            initial_losses: initial_losses.to_vec(),
            method,
            next_step: 0,
            last_probe: None,
            current: None,
        })
    }

    /// The schedule (W, U).
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// K.
    pub fn num_tasks(&self) -> usize {
        self.initial_losses.len()
    }

    /// The initial losses `l(0)`.
    pub fn initial_losses(&self) -> &[f64] {
        &self.initial_losses
    }

    /// The rule.
    pub fn method(&self) -> &M {
        &self.method
    }

    /// The step whose weights [`weights_for_step`](Self::weights_for_step) expects next.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// Whether a probe is due after the update of `step`.
    pub fn is_probe_step(&self, step: u64) -> bool {
        self.schedule.is_probe_step(step)
    }

    /// The weights training step `step` uses (step 1 of the replay order).
    ///
    /// # Errors
    /// [`WeightError::OutOfOrder`] unless `step` is the next step, and if the probe due after
    /// the previous step was not observed; [`WeightError::NonFiniteWeights`] if a rule ever
    /// produced a non-finite weight (guarded against; never seen).
    pub fn weights_for_step(&mut self, step: u64) -> Result<StepWeights, WeightError> {
        if step != self.next_step {
            return Err(WeightError::OutOfOrder {
                step,
                reason: format!("weights for step {} are due next", self.next_step),
            });
        }
        if let Some(prev) = step.checked_sub(1) {
            if self.schedule.is_probe_step(prev) && self.last_probe != Some(prev) {
                return Err(WeightError::OutOfOrder {
                    step,
                    reason: format!("the probe after step {prev} was not observed"),
                });
            }
        }
        self.next_step += 1;
        if self.schedule.is_compute_step(step) {
            let computed = self.method.compute(step);
            if !computed.weights.iter().all(|w| w.is_finite()) {
                return Err(WeightError::NonFiniteWeights {
                    step,
                    weights: computed.weights,
                });
            }
            self.current = Some(computed.weights.clone());
            return Ok(StepWeights {
                step,
                source: Source::Computed,
                weights: computed.weights,
                explain: computed.explain,
            });
        }
        let (source, weights) = match &self.current {
            Some(w) => (Source::Carried, w.clone()),
            None => (Source::Warmup, crate::math::uniform(self.num_tasks())),
        };
        Ok(StepWeights {
            step,
            source,
            weights,
            explain: None,
        })
    }

    /// Records the probe measured after the update of `step` (step 3 of the replay order).
    /// `losses[i]` is task i's mean validation loss; `None` or `Some(0.0)` mean absent.
    /// Returns the validation-loss ratios `l_i(step) / l_i(0)` the rule observed (`None` for
    /// an absent task): what the trainer logs as `val_ratio`.
    ///
    /// # Errors
    /// [`WeightError::WrongTaskCount`]; [`WeightError::InvalidProbeLoss`] for a negative, NaN or
    /// infinite loss; [`WeightError::RatioOutOfRange`] for a loss more than 1e100 times its
    /// initial loss; [`WeightError::OutOfOrder`] if `step` is not a probe step, or its weights
    /// were not taken, or it was already probed; [`WeightError::MissingTask`] from baselines.
    pub fn observe_probe(
        &mut self,
        step: u64,
        losses: &[Option<f64>],
    ) -> Result<Vec<Option<f64>>, WeightError> {
        self.observe_probe_with_grads(step, losses, None)
    }

    /// [`observe_probe`](Self::observe_probe) with GradNorm's per-task gradient norms of the
    /// shared layer (`G_i`, measured on the training batch of `step`).
    ///
    /// # Errors
    /// As [`observe_probe`](Self::observe_probe); [`WeightError::MissingGradNorms`] from GradNorm
    /// without (valid) norms.
    pub fn observe_probe_with_grads(
        &mut self,
        step: u64,
        losses: &[Option<f64>],
        grad_norms: Option<&[f64]>,
    ) -> Result<Vec<Option<f64>>, WeightError> {
        check_len(self.num_tasks(), losses.len())?;
        if !self.schedule.is_probe_step(step) {
            return Err(WeightError::OutOfOrder {
                step,
                reason: format!(
                    "not a probe step (probes follow steps c >= 1 with c % {} == 0)",
                    self.schedule.update_interval
                ),
            });
        }
        if self.next_step != step + 1 || self.last_probe == Some(step) {
            return Err(WeightError::OutOfOrder {
                step,
                reason: format!(
                    "a probe must follow the weights of its own step (next step is {})",
                    self.next_step
                ),
            });
        }
        let mut present = Vec::with_capacity(losses.len());
        for (task, l) in losses.iter().enumerate() {
            present.push(match *l {
                Some(v) if !(v.is_finite() && v >= 0.0) => {
                    return Err(WeightError::InvalidProbeLoss {
                        step,
                        task,
                        value: v,
                    })
                }
                Some(v) if v > 0.0 => Some(v),
                _ => None,
            });
        }
        let mut ratios = Vec::with_capacity(present.len());
        for (task, (l, l0)) in present.iter().zip(&self.initial_losses).enumerate() {
            let ratio = l.map(|l| l / l0);
            if let (Some(value), Some(ratio)) = (*l, ratio) {
                if ratio > crate::MAX_RATIO {
                    return Err(WeightError::RatioOutOfRange {
                        step,
                        task,
                        value,
                        ratio,
                    });
                }
            }
            ratios.push(ratio);
        }
        self.method.observe(&Probe {
            step,
            losses: &present,
            ratios: &ratios,
            grad_norms,
        })?;
        self.last_probe = Some(step);
        Ok(ratios)
    }

    /// Which probe follows the update of `step`: 0 for the first (`step = U`), 1 for the
    /// next, ...; `None` when `step` is not a probe step. The probe sampler draws probe
    /// `index`'s validation samples.
    pub fn probe_index(&self, step: u64) -> Option<u64> {
        self.schedule.probe_index(step)
    }
}

fn check_len(expected: usize, got: usize) -> Result<(), WeightError> {
    if expected == got {
        Ok(())
    } else {
        Err(WeightError::WrongTaskCount { expected, got })
    }
}
