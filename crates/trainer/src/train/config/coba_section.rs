//! `[coba]`: the weighting method and its schedule, with `"auto"` W and H (the paper's
//! W = M, H = 2M, M the validation batches of one pass).

use coba::{MethodKind, Signal, Variant, WeighterConfig};
use serde::{Deserialize, Serialize};

/// A step count that may be `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AutoOr {
    /// An explicit value.
    Value(u64),
    /// `"auto"`.
    Auto(AutoTag),
}

impl<'de> Deserialize<'de> for AutoOr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
            Other(serde::de::IgnoredAny),
        }
        let bad = || serde::de::Error::custom("expected a whole number >= 0 or \"auto\"");
        match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::N(n) => Ok(AutoOr::Value(n)),
            Raw::S(s) if s == "auto" => Ok(AutoOr::Auto(AutoTag::Auto)),
            _ => Err(bad()),
        }
    }
}

/// The literal string `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoTag {
    /// `"auto"`.
    Auto,
}

/// `[coba]`: the weighting method and its schedule (see `coba::WeighterConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CobaSection {
    /// `coba`, `uniform`, `lbtw`, `dwa` or `famo`. Default coba.
    pub method: MethodKind,
    /// `mftcoder` (default) or `paper`.
    pub variant: Variant,
    /// W in steps, or `"auto"` = M, the number of validation batches (paper, Section 3.1).
    /// Default 100.
    pub warmup_steps: AutoOr,
    /// H in probes, or `"auto"` = 2M. Default 200.
    pub history_length: AutoOr,
    /// τ. Default 5.
    pub tau: f64,
    /// U in steps. Default 1.
    pub update_interval: u64,
    /// Samples per task in one probe, summed over ranks; overrides `data.probe_samples_per_task`.
    pub probe_samples_per_task: Option<usize>,
    /// The losses the method observes: `valid` (default; the paper's starred LBTW*, FAMO*, and
    /// CoBa) or `train` (the global batch's per-task training losses: plain LBTW, DWA, FAMO;
    /// no probe forward runs).
    pub signal: Signal,
}

impl Default for CobaSection {
    fn default() -> Self {
        let w = WeighterConfig::default();
        Self {
            method: w.method,
            variant: w.variant,
            warmup_steps: AutoOr::Value(w.warmup_steps),
            history_length: AutoOr::Value(w.history_length as u64),
            tau: w.tau,
            update_interval: w.update_interval,
            probe_samples_per_task: None,
            signal: w.signal,
        }
    }
}

impl std::fmt::Display for AutoOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AutoOr::Value(v) => write!(f, "{v}"),
            AutoOr::Auto(_) => f.write_str("auto"),
        }
    }
}

impl CobaSection {
    /// The weighter settings, with `"auto"` resolved from `m` validation batches.
    pub fn weighter_config(&self, m: u64) -> WeighterConfig {
        let resolve = |v: AutoOr, auto: u64| match v {
            AutoOr::Value(v) => v,
            AutoOr::Auto(_) => auto,
        };
        WeighterConfig {
            method: self.method,
            variant: self.variant,
            warmup_steps: resolve(self.warmup_steps, m),
            history_length: resolve(self.history_length, (2 * m).max(2)) as usize,
            tau: self.tau,
            update_interval: self.update_interval,
            signal: self.signal,
        }
    }
}
