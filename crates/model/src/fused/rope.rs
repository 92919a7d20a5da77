//! Rotary position embedding tables (Su et al. 2021), HF's half-split layout, on the first
//! `rot` features of every head; the rotation itself runs in [`super::heads`].

use super::storage::Float;
use crate::layers;
use candle_core::{bail, DType, Device, Result, Tensor};
use std::sync::{Arc, OnceLock};

/// Cosine and sine tables for a `(rows, seq)` batch of positions.
#[derive(Debug, Clone)]
pub struct RopeTables {
    rows: usize,
    seq: usize,
    /// Rotated features per head (`head_dim` for full rotary, less for partial).
    rot: usize,
    /// `(rows * seq, rot / 2)` angles' cosines and sines, f64.
    cos: Arc<[f64]>,
    sin: Arc<[f64]>,
    /// What the composed path's tensors are built from, on first use.
    positions: Arc<[u32]>,
    theta: f64,
    dtype: DType,
    device: Device,
    /// The composed path's `(rows, 1, seq, rot)` tables in the model dtype.
    tensors: OnceLock<(Tensor, Tensor)>,
}

impl RopeTables {
    /// Tables for row-major `(rows, seq)` `positions` and `rot` rotated features per head:
    /// column `i` and `i + rot/2` share frequency `theta^(-2i/rot)`. Computed in f64.
    ///
    /// # Errors
    /// `positions` of the wrong length, odd `rot`, or a tensor failure.
    pub fn new(
        positions: &[u32],
        rows: usize,
        seq: usize,
        rot: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if positions.len() != rows * seq || !rot.is_multiple_of(2) {
            bail!(
                "rope tables: {} positions for {rows} x {seq}, rot {rot}",
                positions.len()
            );
        }
        let half = rot / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| theta.powf(-((2 * i) as f64) / rot as f64))
            .collect();
        let angles = positions
            .iter()
            .flat_map(|&p| inv.iter().map(move |f| p as f64 * f));
        let cos: Arc<[f64]> = angles.clone().map(f64::cos).collect();
        let sin: Arc<[f64]> = angles.map(f64::sin).collect();
        Ok(Self {
            rows,
            seq,
            rot,
            cos,
            sin,
            positions: positions.into(),
            theta,
            dtype,
            device: device.clone(),
            tensors: OnceLock::new(),
        })
    }

    /// Rotated features per head.
    pub fn rot(&self) -> usize {
        self.rot
    }

    /// The composed path's `(rows, 1, seq, rot)` cosine and sine tensors (built on first use).
    ///
    /// # Errors
    /// A tensor failure.
    pub(super) fn tensors(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.tensors.get() {
            return Ok(t);
        }
        let t = layers::rope_tables(
            &self.positions,
            self.rows,
            self.seq,
            self.rot,
            self.theta,
            self.dtype,
            &self.device,
        )?;
        Ok(self.tensors.get_or_init(|| t))
    }

    /// `(rows, seq)` this table was built for.
    pub(super) fn dims(&self) -> (usize, usize) {
        (self.rows, self.seq)
    }

    /// Rotates the first `rot` features of one head vector `y` (position `p` of batch row
    /// `b`) in place; `inverse` rotates by `-angle` (the backward of the forward rotation).
    pub(super) fn rotate<T: Float>(&self, y: &mut [T], b: usize, p: usize, inverse: bool) {
        let half = self.rot / 2;
        let base = (b * self.seq + p) * half;
        let sign = if inverse { -1.0 } else { 1.0 };
        for f in 0..half {
            let c = T::of(self.cos[base + f]);
            let s = T::of(sign * self.sin[base + f]);
            let (x1, x2) = (y[f], y[f + half]);
            y[f] = x1 * c - x2 * s;
            y[f + half] = x2 * c + x1 * s;
        }
    }
}
