//! `-log softmax(logits)[label]` per row, and its gradient `g * (softmax - onehot)`.

use super::fused_ok;
use super::storage::{for_rows, host, max, run2, sum_exp, Float, Host, Kernel2};
use crate::layers::log_softmax_last;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Negative log-likelihood of `labels` under `softmax(logits)`: `logits` is `(n, vocab)`,
/// `labels` has `n` ids below `vocab`; returns `(n)` in nats, in the logits' dtype, or in f32
/// for 16-bit logits (cast up first, as HF's `logits.float()` before the loss).
///
/// Differentiable in `logits`. On the CPU one fused pass forward and one backward replace
/// log-softmax + gather (which write four `(n, vocab)` tensors forward and more backward).
///
/// # Errors
/// Shape mismatch, a label `>= vocab`, or a tensor failure.
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if labels.len() != n {
        bail!("cross_entropy: {} labels for {n} rows", labels.len());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= vocab) {
        bail!("cross_entropy: label {bad} >= vocab {vocab}");
    }
    let logits = &logits.to_dtype(crate::layers::compute_dtype(logits.dtype()))?;
    if fused_ok(logits) {
        let op = CrossEntropy {
            labels: labels.into(),
        };
        return logits.contiguous()?.apply_op1(op);
    }
    let ids = Tensor::from_slice(labels, (n, 1), logits.device())?;
    log_softmax_last(logits)?.gather(&ids, 1)?.squeeze(1)?.neg()
}

struct CrossEntropy {
    labels: Arc<[u32]>,
}

/// `(-log softmax(row)[label], log_sum_exp(row))` of every `vocab`-long row of `x`.
pub(super) fn nll_rows<T: Float>(x: &[T], labels: &[u32], vocab: usize) -> (Vec<T>, Vec<T>) {
    let mut out = vec![T::zero(); 2 * labels.len()];
    for_rows(&mut out, 2, |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let lse = log_sum_exp(row);
        o[0] = lse - row[labels[r] as usize];
        o[1] = lse;
    });
    out.chunks(2).map(|p| (p[0], p[1])).unzip()
}

/// `g[r] * (softmax(row) - onehot(label))` in place of every `vocab`-long row of `x`, given the
/// rows' log-sum-exp (from the forward: rebuilding it from the loss loses precision when the
/// label's logit is far below the others).
pub(super) fn grad_rows<T: Float>(x: &mut [T], lse: &[T], g: &[T], labels: &[u32]) {
    let vocab = x.len() / labels.len().max(1);
    for_rows(x, vocab, |r, row| {
        for v in row.iter_mut() {
            *v = g[r] * (*v - lse[r]).exp_fast();
        }
        let l = labels[r] as usize;
        row[l] -= g[r];
    });
}

fn log_sum_exp<T: Float>(row: &[T]) -> T {
    let m = max(row);
    m + sum_exp(row, m).ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, vocab) = l.shape().dims2()?;
        let out = match host(s, l, self.name())? {
            Host::F32(x) => CpuStorage::F32(nll_rows(x, &self.labels, vocab).0),
            Host::F64(x) => CpuStorage::F64(nll_rows(x, &self.labels, vocab).0),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = CrossEntropyGrad {
            labels: self.labels.clone(),
        };
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?))
    }
}

/// `(logits, grad_nll)` to `grad_logits = grad_nll * (softmax(logits) - onehot(label))`.
struct CrossEntropyGrad {
    labels: Arc<[u32]>,
}

fn backward<T: Float>(x: &[T], g: &[T], labels: &[u32], vocab: usize) -> Vec<T> {
    let (_, lse) = nll_rows(x, labels, vocab);
    let mut out = x.to_vec();
    grad_rows(&mut out, &lse, g, labels);
    out
}

impl Kernel2 for CrossEntropyGrad {
    fn apply<T: Float>(&self, x: &[T], g: &[T]) -> Vec<T> {
        backward(x, g, &self.labels, x.len() / self.labels.len().max(1))
    }
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
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
