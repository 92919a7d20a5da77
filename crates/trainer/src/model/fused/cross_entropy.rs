//! `-log softmax(logits)[label]` per row, and its gradient `g * (softmax - onehot)`.

use super::fused_ok;
use super::storage::{for_rows, host, max, slice, sum_exp, Float, Host};
use crate::model::layers::log_softmax_last;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Negative log-likelihood of `labels` under `softmax(logits)`: `logits` is `(n, vocab)`
/// (f32/f64), `labels` has `n` ids below `vocab`; returns `(n)` in nats, same dtype.
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

fn forward<T: Float>(x: &[T], labels: &[u32], vocab: usize) -> Vec<T> {
    let mut out = vec![T::zero(); labels.len()];
    for_rows(&mut out, 1, |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        o[0] = log_sum_exp(row) - row[labels[r] as usize];
    });
    out
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
            Host::F32(x) => CpuStorage::F32(forward(x, &self.labels, vocab)),
            Host::F64(x) => CpuStorage::F64(forward(x, &self.labels, vocab)),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = CrossEntropyGrad {
            labels: self.labels.clone(),
        };
        let g = arg.apply_op3_no_bwd(&res.contiguous()?, &grad_res.contiguous()?, &op)?;
        Ok(Some(g))
    }
}

/// `(logits, nll, grad_nll)` to `grad_logits = grad_nll * (softmax(logits) - onehot(label))`,
/// with `log_sum_exp = nll + logits[label]` taken from the forward's result.
struct CrossEntropyGrad {
    labels: Arc<[u32]>,
}

fn backward<T: Float>(x: &[T], nll: &[T], g: &[T], labels: &[u32], vocab: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for_rows(&mut out, vocab, |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let l = labels[r] as usize;
        let lse = nll[r] + row[l];
        for (o, &v) in o.iter_mut().zip(row) {
            *o = g[r] * (v - lse).exp_fast();
        }
        o[l] = o[l] - g[r];
    });
    out
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, vocab) = l1.shape().dims2()?;
        let name = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(n), CpuStorage::F32(g)) => {
                CpuStorage::F32(backward(
                    slice(x, l1, name)?,
                    slice(n, l2, name)?,
                    slice(g, l3, name)?,
                    &self.labels,
                    vocab,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(n), CpuStorage::F64(g)) => {
                CpuStorage::F64(backward(
                    slice(x, l1, name)?,
                    slice(n, l2, name)?,
                    slice(g, l3, name)?,
                    &self.labels,
                    vocab,
                ))
            }
            _ => bail!("{name}: mixed or unsupported dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }
}
