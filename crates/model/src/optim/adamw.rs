//! AdamW (Loshchilov & Hutter 2019) with f32 moments and saveable state.
//!
//! Update for step `t` (1-based), as PyTorch's `torch.optim.AdamW`:
//! `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`, `p = p (1 - lr wd) - lr (m / (1-b1^t)) /
//! (sqrt(v / (1-b2^t)) + eps)`. Biases and norm weights get no decay (as HF Trainer).
//!
//! Parameters stored in a 16-bit dtype (bf16/f16, for mixed-precision training) get an f32
//! master copy: the update is applied to the master and the parameter is its rounding, so
//! updates below the 16-bit resolution accumulate instead of being lost (as PyTorch AMP /
//! DeepSpeed's fp32 master weights).

use crate::{is_norm_or_bias, Gradients};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Optimizer errors.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A parameter has no gradient.
    #[error("no gradient for parameter {0}")]
    MissingGradient(String),
    /// Saved state does not match the parameters.
    #[error("optimizer state mismatch: {0}")]
    State(String),
    /// Reading or writing the state failed.
    #[error("{path}: {msg}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// AdamW hyper-parameters (defaults: PyTorch's, with `weight_decay = 0.0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// First-moment decay β1.
    pub beta1: f64,
    /// Second-moment decay β2.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied as `p *= 1 - lr * weight_decay`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    config: AdamWConfig,
    step: u64,
}

/// AdamW state: step count, per-parameter f32 moments and (for 16-bit parameters) f32 master
/// weights, keyed by HF parameter name.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    master: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// The names of the parameters that have moments (name-sorted).
    pub fn state_names(&self) -> Vec<String> {
        self.exp_avg.keys().cloned().collect()
    }

    /// A fresh optimizer (step 0, moments created on the first step).
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
            master: BTreeMap::new(),
        }
    }

    /// The f32 master copy of a 16-bit parameter (after at least one step).
    pub fn master(&self, name: &str) -> Option<&Tensor> {
        self.master.get(name)
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// First moment of a parameter (after at least one step).
    pub fn exp_avg(&self, name: &str) -> Option<&Tensor> {
        self.exp_avg.get(name)
    }

    /// Second moment of a parameter (after at least one step).
    pub fn exp_avg_sq(&self, name: &str) -> Option<&Tensor> {
        self.exp_avg_sq.get(name)
    }

    /// One update of every parameter in `params` with learning rate `lr`, in place.
    /// Arithmetic is in f32 (f64 for f64 parameters). A 16-bit parameter is updated through
    /// its f32 master copy (created from the parameter on its first step) and set to the
    /// master's rounding.
    ///
    /// # Errors
    /// [`OptimError::MissingGradient`] if a parameter has no gradient (nothing is updated
    /// then), or a tensor failure.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &Gradients,
        lr: f64,
    ) -> Result<(), OptimError> {
        if let Some(n) = params.keys().find(|n| !grads.contains_key(*n)) {
            return Err(OptimError::MissingGradient(n.clone()));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var) in params {
            let p = var.as_tensor();
            let work = if p.dtype() == DType::F64 {
                DType::F64
            } else {
                DType::F32
            };
            let g = grads[name].to_dtype(work)?;
            let m = match self.exp_avg.get(name) {
                Some(m) => m.to_dtype(work)?,
                None => g.zeros_like()?,
            };
            let v = match self.exp_avg_sq.get(name) {
                Some(v) => v.to_dtype(work)?,
                None => g.zeros_like()?,
            };
            let m = (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
            let v = (v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, c.eps)?;
            let upd = m.affine(lr / bc1, 0.0)?.div(&denom)?;
            let wd = if is_norm_or_bias(name) {
                0.0
            } else {
                c.weight_decay
            };
            let low_precision = matches!(p.dtype(), DType::BF16 | DType::F16);
            let current = match self.master.get(name) {
                Some(m) if low_precision => m.clone(),
                _ => p.to_dtype(work)?,
            };
            let new = (current.affine(1.0 - lr * wd, 0.0)? - upd)?;
            var.set(&new.to_dtype(p.dtype())?)?;
            if low_precision {
                self.master.insert(name.clone(), new);
            }
            self.exp_avg.insert(name.clone(), m.to_dtype(DType::F32)?);
            self.exp_avg_sq
                .insert(name.clone(), v.to_dtype(DType::F32)?);
        }
        Ok(())
    }

    /// Writes `optimizer.json` (config, step) and `optimizer.safetensors` (moments as
    /// `exp_avg.<name>` / `exp_avg_sq.<name>`, master weights of 16-bit parameters as
    /// `master.<name>`, f32) into `dir`.
    ///
    /// # Errors
    /// [`OptimError::Io`] on a write failure.
    pub fn save(&self, dir: &Path) -> Result<(), OptimError> {
        let io = |path: PathBuf, e: &dyn std::fmt::Display| OptimError::Io {
            msg: e.to_string(),
            path,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir.to_path_buf(), &e))?;
        let meta = Meta {
            config: self.config,
            step: self.step,
        };
        let jpath = dir.join("optimizer.json");
        let text = serde_json::to_string_pretty(&meta).map_err(|e| io(jpath.clone(), &e))?;
        std::fs::write(&jpath, text).map_err(|e| io(jpath.clone(), &e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (n, t) in &self.exp_avg {
            map.insert(format!("exp_avg.{n}"), t.clone());
        }
        for (n, t) in &self.exp_avg_sq {
            map.insert(format!("exp_avg_sq.{n}"), t.clone());
        }
        for (n, t) in &self.master {
            map.insert(format!("master.{n}"), t.clone());
        }
        let spath = dir.join("optimizer.safetensors");
        crate::checkpoint::save_safetensors(&map, &spath).map_err(|e| io(spath.clone(), &e))
    }

    /// Reads what [`AdamW::save`] wrote.
    ///
    /// # Errors
    /// [`OptimError::Io`] on a missing or malformed file, [`OptimError::State`] if a moment
    /// lacks its partner.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, OptimError> {
        let io = |path: PathBuf, e: &dyn std::fmt::Display| OptimError::Io {
            msg: e.to_string(),
            path,
        };
        let jpath = dir.join("optimizer.json");
        let text = std::fs::read_to_string(&jpath).map_err(|e| io(jpath.clone(), &e))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| io(jpath.clone(), &e))?;
        let spath = dir.join("optimizer.safetensors");
        let tensors =
            candle_core::safetensors::load(&spath, device).map_err(|e| io(spath.clone(), &e))?;
        let mut opt = Self::new(meta.config);
        opt.step = meta.step;
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("exp_avg_sq.") {
                opt.exp_avg_sq.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("exp_avg.") {
                opt.exp_avg.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("master.") {
                opt.master.insert(n.to_string(), t);
            } else {
                return Err(OptimError::State(format!("unknown tensor {k}")));
            }
        }
        if opt.exp_avg.keys().ne(opt.exp_avg_sq.keys()) {
            return Err(OptimError::State(
                "first and second moments differ in names".into(),
            ));
        }
        Ok(opt)
    }
}
