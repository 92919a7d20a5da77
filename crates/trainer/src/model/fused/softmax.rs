//! Attention probabilities `softmax(scale * scores + mask)` under a causal (and packed-segment)
//! mask, and their gradient.

use super::fused_ok;
use super::storage::{for_rows, host, max, run2, Float, Host, Kernel2};
use crate::model::layers::{attention_mask, softmax_last};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Device, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Which keys each query may attend: key `j <= i` of the same packed segment.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    rows: usize,
    seq: usize,
    /// Row-major `(rows, seq)` segment ids; `None` means one segment per row.
    segments: Option<Arc<[u32]>>,
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
        })
    }

    /// The additive `(rows, 1, seq, seq)` mask of the composed path (0 or `-inf`).
    ///
    /// # Errors
    /// A tensor failure.
    pub fn additive(&self, dtype: candle_core::DType, device: &Device) -> Result<Tensor> {
        let seg: &[u32] = self.segments.as_deref().unwrap_or(&[]);
        attention_mask(seg, self.rows, self.seq, dtype, device)
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

/// `softmax(scale * scores + mask)` over the last dim: `scores` is `(rows, heads, seq, seq)`
/// (query, key), masked entries get probability 0; `scale > 0`. Differentiable in `scores`.
///
/// # Errors
/// `scores` not matching the mask's `(rows, seq)`, or a tensor failure.
pub fn causal_softmax(scores: &Tensor, scale: f64, mask: &AttentionMask) -> Result<Tensor> {
    let (b, _, q, k) = scores.dims4()?;
    if b != mask.rows || q != mask.seq || k != mask.seq {
        bail!(
            "causal_softmax: scores {:?} for a {} x {} mask",
            scores.dims(),
            mask.rows,
            mask.seq
        );
    }
    if scale.is_nan() || scale <= 0.0 {
        bail!("causal_softmax: scale {scale} must be positive");
    }
    if fused_ok(scores) {
        let op = CausalSoftmax {
            scale,
            mask: mask.clone(),
        };
        return scores.contiguous()?.apply_op1(op);
    }
    let m = mask.additive(scores.dtype(), scores.device())?;
    softmax_last(&scores.affine(scale, 0.0)?.broadcast_add(&m)?)
}

struct CausalSoftmax {
    scale: f64,
    mask: AttentionMask,
}

impl CausalSoftmax {
    /// Batch row and query index of flat row `r` of a `(rows, heads, seq, seq)` tensor.
    fn row_query(&self, r: usize, heads: usize) -> (usize, usize) {
        let t = self.mask.seq;
        (r / (heads * t), r % t)
    }

    fn forward<T: Float>(&self, x: &[T], heads: usize) -> Vec<T> {
        let t = self.mask.seq;
        let mut out = vec![T::zero(); x.len()];
        for_rows(&mut out, t, |r, p| {
            let (b, i) = self.row_query(r, heads);
            self.mask
                .softmax_row(self.scale, &x[r * t..(r + 1) * t], p, b, i);
        });
        out
    }

    fn backward<T: Float>(&self, p: &[T], dp: &[T]) -> Vec<T> {
        let t = self.mask.seq;
        let mut out = vec![T::zero(); p.len()];
        for_rows(&mut out, t, |r, ds| {
            let rows = r * t..(r + 1) * t;
            softmax_grad_row(self.scale, &p[rows.clone()], &dp[rows], ds, r % t);
        });
        out
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
            p.iter_mut().for_each(|v| *v = *v * inv);
            return;
        }
        let ok = |j: usize| self.same_segment(b, i, j);
        let m = (0..=i)
            .filter(|&j| ok(j))
            .map(|j| s[j] * scale)
            .fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for j in 0..=i {
            if ok(j) {
                let e = (s[j] * scale - m).exp_fast();
                p[j] = e;
                sum = sum + e;
            }
        }
        let inv = sum.recip();
        p[..=i].iter_mut().for_each(|v| *v = *v * inv);
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

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, heads, _, _) = l.shape().dims4()?;
        let out = match host(s, l, self.name())? {
            Host::F32(x) => CpuStorage::F32(self.forward(x, heads)),
            Host::F64(x) => CpuStorage::F64(self.forward(x, heads)),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = CausalSoftmaxGrad {
            inner: CausalSoftmax {
                scale: self.scale,
                mask: self.mask.clone(),
            },
        };
        Ok(Some(res.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?))
    }
}

/// `(P, dP)` to the scores' gradient.
struct CausalSoftmaxGrad {
    inner: CausalSoftmax,
}

impl Kernel2 for CausalSoftmaxGrad {
    fn apply<T: Float>(&self, p: &[T], dp: &[T]) -> Vec<T> {
        self.inner.backward(p, dp)
    }
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run2(self, self.name(), (s1, l1), (s2, l2))?;
        Ok((out, l1.shape().clone()))
    }
}
