//! The attention mask (causal, within packed segments) and the softmax of one row of
//! attention scores under it, with its gradient: the row kernels of [`super::attention`].

use super::storage::{max, Float};
use crate::layers::attention_mask;
use candle_core::{bail, Device, Result, Tensor};
use std::sync::{Arc, OnceLock};

/// Which keys each query may attend: key `j <= i` of the same packed segment.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    rows: usize,
    seq: usize,
    /// Row-major `(rows, seq)` segment ids; `None` means one segment per row.
    segments: Option<Arc<[u32]>>,
    /// The additive mask of the first [`AttentionMask::additive`] call, shared by every layer
    /// (and clone) of one forward: built on the host and uploaded once, one copy in the graph.
    additive: Arc<OnceLock<Tensor>>,
}

impl AttentionMask {
    /// The mask of a `(rows, seq)` batch; `segments` is row-major `(rows, seq)` or empty (one
    /// segment per row).
    ///
    /// # Errors
    /// `segments` of the wrong length.
    pub fn new(rows: usize, seq: usize, segments: &[u32]) -> Result<Self> {
        let segments = if segments.is_empty() {
            None
        } else if segments.len() == rows * seq {
            Some(segments.into())
        } else {
            bail!(
                "attention mask: {} segment ids for {rows} x {seq}",
                segments.len()
            )
        };
        Ok(Self {
            rows,
            seq,
            segments,
            additive: Arc::default(),
        })
    }

    /// The additive `(rows, 1, seq, seq)` mask of the composed path (0 or `-inf`), built on
    /// the first call and reused by later calls with the same dtype and device.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn additive(&self, dtype: candle_core::DType, device: &Device) -> Result<Tensor> {
        if let Some(t) = self.additive.get() {
            if t.dtype() == dtype && t.device().same_device(device) {
                return Ok(t.clone());
            }
        }
        let seg: &[u32] = self.segments.as_deref().unwrap_or(&[]);
        let t = attention_mask(seg, self.rows, self.seq, dtype, device)?;
        // A mask of another dtype or device kept first stays; this one is returned as is.
        let _ = self.additive.set(t.clone());
        Ok(t)
    }

    /// Batch rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions per row.
    pub fn seq(&self) -> usize {
        self.seq
    }

    fn same_segment(&self, row: usize, i: usize, j: usize) -> bool {
        match &self.segments {
            None => true,
            Some(s) => s[row * self.seq + i] == s[row * self.seq + j],
        }
    }
}

impl AttentionMask {
    /// Row `i` (query) of batch row `b`: `p[j] = softmax_j(scale * s[j])` over the keys `j`
    /// the mask allows; `p` is left untouched (the caller's zeros) elsewhere. `scale > 0`.
    pub(super) fn softmax_row<T: Float>(
        &self,
        scale: f64,
        s: &[T],
        p: &mut [T],
        b: usize,
        i: usize,
    ) {
        let scale = T::of(scale);
        if self.segments.is_none() {
            // Causal only: keys 0..=i, no per-key test (the loops vectorise).
            let (s, p) = (&s[..=i], &mut p[..=i]);
            let m = max(s) * scale;
            for (p, &v) in p.iter_mut().zip(s) {
                *p = (v * scale - m).exp_fast();
            }
            let inv = p.iter().fold(T::zero(), |a, &e| a + e).recip();
            p.iter_mut().for_each(|v| *v *= inv);
            return;
        }
        let ok = |j: usize| self.same_segment(b, i, j);
        let m = (0..=i)
            .filter(|&j| ok(j))
            .map(|j| s[j] * scale)
            .fold(T::neg_infinity(), num_traits::Float::max);
        let mut sum = T::zero();
        for j in 0..=i {
            if ok(j) {
                let e = (s[j] * scale - m).exp_fast();
                p[j] = e;
                sum += e;
            }
        }
        let inv = sum.recip();
        p[..=i].iter_mut().for_each(|v| *v *= inv);
    }
}

/// Gradient of one softmax row (query `i`): `ds = scale * p * (dp - sum_j p dp)` on keys
/// `0..=i`; `ds` is left untouched (the caller's zeros) above the diagonal, and is 0 wherever
/// `p` is.
pub(super) fn softmax_grad_row<T: Float>(scale: f64, p: &[T], dp: &[T], ds: &mut [T], i: usize) {
    let scale = T::of(scale);
    let dot = p[..=i]
        .iter()
        .zip(&dp[..=i])
        .fold(T::zero(), |a, (&x, &y)| a + x * y);
    for j in 0..=i {
        ds[j] = scale * p[j] * (dp[j] - dot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn additive_mask_is_built_once_and_shared_by_clones() {
        let seg = [0, 0, 1, 0, 1, 1];
        let m = AttentionMask::new(2, 3, &seg).unwrap();
        let a = m.additive(DType::F32, &Device::Cpu).unwrap();
        let b = m.clone().additive(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.id(), b.id(), "a second call rebuilt the mask");
        let want = attention_mask(&seg, 2, 3, DType::F32, &Device::Cpu).unwrap();
        let rows = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(rows(&a), rows(&want));
        // Row 0, query 2 (segment 1) sees only itself; row 1, query 1 sees keys 1 (not 0).
        assert_eq!(&rows(&a)[6..9], [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]);
        assert_eq!(
            &rows(&a)[12..15],
            [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]
        );
        // Another dtype is built for that dtype, not served from the cache.
        let c = m.additive(DType::F64, &Device::Cpu).unwrap();
        assert_eq!(c.dtype(), DType::F64);
        let c32 = c.to_dtype(DType::F32).unwrap();
        assert_eq!(rows(&c32), rows(&want));
    }
}
