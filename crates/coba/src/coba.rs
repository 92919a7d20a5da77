//! CoBa, the Convergence Balancer (Gong et al. 2024, arXiv 2410.06741).

use crate::math::{softmax, uniform, ZERO_NORM};
use crate::window::WindowFit;
use crate::{Computed, Probe, TaskWeighter, WeightError};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::str::FromStr;

/// How RCS and ACS are mixed into weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// What MFTCoder's official `CoBaStatus` computes (the code behind the paper's results):
    /// `w = softmax(K (DF·RCS + (1 − DF)·ACS))`, DF not clamped, then if any `w_i < 1/(10K)`:
    /// `w = 0.9·w + 1/(10K)`.
    #[default]
    Mftcoder,
    /// The paper's Eq. 6 with DF clamped to 1: `w = min(DF,1)·RCS + (1 − min(DF,1))·ACS`.
    Paper,
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mftcoder" => Ok(Self::Mftcoder),
            "paper" => Ok(Self::Paper),
            other => Err(format!(
                "unknown variant `{other}` (expected mftcoder or paper)"
            )),
        }
    }
}

/// Intermediates of one CoBa computation, for `replay --explain`, metrics and tests.
/// All vectors have length K (config task order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CobaExplain {
    /// Relative convergence scores, Eq. 4: `softmax(K a / Σ|a|)` (uniform if `Σ|a| < 1e-12`).
    pub rcs: Vec<f64>,
    /// Absolute convergence scores, Eq. 5: `softmax_k(−m a_k / Σ_window |P_k|)`.
    pub acs: Vec<f64>,
    /// `a_k`: OLS slope of task k's loss ratio over the last `min(H, probes)` probes.
    pub task_slopes: Vec<f64>,
    /// `s`: OLS slope of the per-probe maximum ratio over tasks, same window.
    pub total_slope: f64,
    /// Divergence factor, Eq. 7: `n · softmax(τ · (−n A / Σ|A|))[last]` (1 if `Σ|A| < 1e-12`).
    pub df: f64,
    /// `m`: number of slope-history columns in the ACS window.
    pub acs_window: usize,
    /// `n`: number of computations so far, this one included.
    pub df_len: usize,
    /// Whether the minimum-weight floor of the `mftcoder` variant was applied.
    pub floor_applied: bool,
}

/// Column window over the history of per-task slopes (one column per computation), with
/// running per-task sums of absolute values (recomputed once per window length of evictions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SlopeHistory {
    /// Absolute index (0-based computation number) of `cols[0]`.
    first: usize,
    cols: VecDeque<Vec<f64>>,
    abs_sum: Vec<f64>,
    evictions_since_exact: usize,
}

impl SlopeHistory {
    fn new(k: usize) -> Self {
        Self {
            first: 0,
            cols: VecDeque::new(),
            abs_sum: vec![0.0; k],
            evictions_since_exact: 0,
        }
    }

    /// Appends a column, then drops columns before absolute index `window_start`.
    fn push(&mut self, col: Vec<f64>, window_start: usize) {
        for (s, a) in self.abs_sum.iter_mut().zip(&col) {
            *s += a.abs();
        }
        self.cols.push_back(col);
        let mut exact = false;
        while self.first < window_start {
            let Some(old) = self.cols.pop_front() else {
                break;
            };
            self.first += 1;
            self.evictions_since_exact += 1;
            let left = self.cols.len() as f64;
            for (s, a) in self.abs_sum.iter_mut().zip(&old) {
                *s -= a.abs();
                // A slope large next to what remains: the running sum would keep its rounding.
                exact |= a.abs() > SPIKE_FACTOR * *s / left;
            }
        }
        if exact || self.evictions_since_exact > self.cols.len() {
            for (k, s) in self.abs_sum.iter_mut().enumerate() {
                *s = self.cols.iter().map(|c| c[k].abs()).sum();
            }
            self.evictions_since_exact = 0;
        }
    }
}

/// An evicted slope this many times larger than the mean magnitude left in the ACS window
/// forces an exact recomputation of the window sums.
const SPIKE_FACTOR: f64 = 16.0;

/// Largest accepted τ. Beyond it the DF logits `τ n A / Σ|A|` can overflow to infinity
/// (and τ = 1e6 already makes DF a hard arg-max).
pub const MAX_TAU: f64 = 1e6;

/// Configuration of [`Coba`]. Defaults: H = 200, τ = 5, variant `mftcoder`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CobaConfig {
    /// H: number of most recent probes in the slope fit (>= 2).
    pub history_length: usize,
    /// τ: temperature of the DF softmax, Eq. 7 (0 < τ <= [`MAX_TAU`]).
    pub tau: f64,
    /// U: update interval in steps (>= 1); needed for the ACS window start `c // U − H`.
    pub update_interval: u64,
    /// RCS/ACS mixing rule.
    pub variant: Variant,
}

/// CoBa weighting state for K tasks (float64 throughout).
///
/// Reproduces MFTCoder's `CoBaStatus` with the changes pinned in the test vectors' README:
/// the slope window is the last `min(H, probes)` probes for every U, and normalisers below
/// 1e-12 count as zero (RCS uniform, that task's ACS logit 0, DF = 1) so no finite input gives
/// NaN. Each [`compute`](TaskWeighter::compute) is O(K) plus O(n) for the DF softmax over the
/// n total slopes so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coba {
    config: CobaConfig,
    /// Per-task window of loss ratios (None = absent).
    task_fits: Vec<WindowFit>,
    /// Window of the per-probe maximum ratio (None when every task is absent).
    max_fit: WindowFit,
    slopes: SlopeHistory,
    /// A: every total slope so far, one per computation.
    total_slopes: Vec<f64>,
    total_abs_sum: f64,
    /// min(A): the DF softmax's largest logit is `−τ n / Σ|A| · min(A)` (saves a pass).
    /// (`None` before the first computation; an f64 infinity would not survive JSON.)
    total_min: Option<f64>,
}

impl Coba {
    /// CoBa for `num_tasks` tasks.
    ///
    /// # Errors
    /// [`WeightError::InvalidSetting`] for K = 0, H < 2, τ not in (0, [`MAX_TAU`]], U = 0.
    pub fn new(num_tasks: usize, config: CobaConfig) -> Result<Self, WeightError> {
        crate::check_num_tasks(num_tasks)?;
        if config.history_length < 2 {
            return Err(WeightError::InvalidSetting {
                name: "history_length",
                value: config.history_length.to_string(),
                reason: "must be >= 2 (a slope needs two points)",
            });
        }
        if !(config.tau > 0.0 && config.tau <= MAX_TAU) {
            return Err(WeightError::InvalidSetting {
                name: "tau",
                value: config.tau.to_string(),
                reason: "must be finite, > 0 and <= 1e6",
            });
        }
        crate::Schedule::new(0, config.update_interval)?;
        Ok(Self {
            config,
            task_fits: vec![WindowFit::new(config.history_length); num_tasks],
            max_fit: WindowFit::new(config.history_length),
            slopes: SlopeHistory::new(num_tasks),
            total_slopes: Vec::new(),
            total_abs_sum: 0.0,
            total_min: None,
        })
    }

    /// The configuration this state was built with.
    pub fn config(&self) -> &CobaConfig {
        &self.config
    }

    fn divergence_factor(&self) -> f64 {
        if self.total_abs_sum < ZERO_NORM {
            return 1.0;
        }
        let n = self.total_slopes.len() as f64;
        let scale = -self.config.tau * n / self.total_abs_sum;
        // scale < 0, so the largest logit belongs to the smallest slope.
        let max = scale * self.total_min.unwrap_or(0.0);
        let sum: f64 = self
            .total_slopes
            .iter()
            .map(|a| (scale * a - max).exp())
            .sum();
        let last = self.total_slopes.last().copied().unwrap_or(0.0);
        n * (scale * last - max).exp() / sum
    }
}

impl TaskWeighter for Coba {
    fn name(&self) -> &'static str {
        "coba"
    }

    fn num_tasks(&self) -> usize {
        self.task_fits.len()
    }

    fn observe(&mut self, probe: &Probe<'_>) -> Result<(), WeightError> {
        let mut max: Option<f64> = None;
        for (fit, r) in self.task_fits.iter_mut().zip(probe.ratios) {
            fit.push(*r);
            if let Some(r) = r {
                max = Some(max.map_or(*r, |m| m.max(*r)));
            }
        }
        self.max_fit.push(max);
        Ok(())
    }

    fn compute(&mut self, step: u64) -> Computed {
        let k = self.task_fits.len();
        let kf = k as f64;
        let a: Vec<f64> = self.task_fits.iter().map(WindowFit::slope).collect();
        let s = self.max_fit.slope();

        let n = self.total_slopes.len() + 1;
        let start =
            (step / self.config.update_interval).saturating_sub(self.config.history_length as u64);
        let window_start = (start as usize).min(n - 1);
        self.slopes.push(a.clone(), window_start);
        let m = n - window_start;
        self.total_slopes.push(s);
        self.total_abs_sum += s.abs();
        self.total_min = Some(self.total_min.map_or(s, |m| m.min(s)));

        let abs_a: f64 = a.iter().map(|x| x.abs()).sum();
        let rcs = if abs_a < ZERO_NORM {
            uniform(k)
        } else {
            softmax(a.iter().map(|x| kf * x / abs_a))
        };
        let acs = softmax(a.iter().zip(&self.slopes.abs_sum).map(|(x, norm)| {
            if *norm < ZERO_NORM {
                0.0
            } else {
                -(m as f64) * x / norm
            }
        }));
        let df = self.divergence_factor();

        let mut floor_applied = false;
        let weights = match self.config.variant {
            Variant::Mftcoder => {
                let mut w = softmax(
                    rcs.iter()
                        .zip(&acs)
                        .map(|(r, c)| kf * (df * r + (1.0 - df) * c)),
                );
                let floor = 1.0 / (10.0 * kf);
                if w.iter().any(|x| *x < floor) {
                    floor_applied = true;
                    for x in &mut w {
                        *x = *x * (1.0 - 0.1) + floor;
                    }
                }
                w
            }
            Variant::Paper => {
                let d = df.min(1.0);
                rcs.iter()
                    .zip(&acs)
                    .map(|(r, c)| d * r + (1.0 - d) * c)
                    .collect()
            }
        };
        Computed {
            weights,
            explain: Some(CobaExplain {
                rcs,
                acs,
                task_slopes: a,
                total_slope: s,
                df,
                acs_window: m,
                df_len: n,
                floor_applied,
            }),
        }
    }
}
