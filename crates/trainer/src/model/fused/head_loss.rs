//! The LM head and its cross-entropy as one graph node: `nll = -log softmax(h w^T)[label]`.

use super::cross_entropy::{cross_entropy, grad_rows, nll_rows};
use super::fused_ok;
use super::linear::gemm_xwt;
use super::storage::{slice, Float};
use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Negative log-likelihood (nats) of `labels` under `softmax(h w^T + b)`: `h` is `(n, d)`,
/// the head `w` is `(vocab, d)`, `b` an optional `(vocab)` bias; returns `(n)`.
/// Differentiable in `h`, `w` and `b`.
///
/// On the CPU without a bias one node computes the logits with a GEMM, keeps them (and each
/// row's log-sum-exp) for the backward and turns them into their gradient in place
/// (`g (softmax - onehot)`), then
/// `dh = dlogits w`, `dw = dlogits^T h`: the `(n, vocab)` logits gradient is never zero-filled
/// and added as candle's backward does for a matmul node. Callers bound `n * vocab` (the chunked
/// loss does).
///
/// # Errors
/// Shape or dtype mismatch, a label `>= vocab`, or a tensor failure.
pub fn head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    labels: &[u32],
) -> Result<Tensor> {
    let (n, d) = h.dims2()?;
    let (vocab, dw) = w.dims2()?;
    if d != dw || labels.len() != n {
        bail!(
            "head_cross_entropy: h {:?}, head {:?}, {} labels",
            h.dims(),
            w.dims(),
            labels.len()
        );
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= vocab) {
        bail!("head_cross_entropy: label {bad} >= vocab {vocab}");
    }
    if b.is_some() || !(fused_ok(h) && fused_ok(w) && w.dtype() == h.dtype()) {
        let logits = h.matmul(&w.t()?)?;
        let logits = match b {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        };
        return cross_entropy(&logits, labels);
    }
    let op = HeadCrossEntropy {
        labels: labels.into(),
        logits: Mutex::new(None),
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct HeadCrossEntropy {
    labels: Arc<[u32]>,
    /// The forward's `(n, vocab)` logits and `(n)` log-sum-exps, taken by the first backward
    /// (which turns the logits into their gradient in place); a later backward recomputes them.
    logits: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

/// Forward results: `(nll, log_sum_exp, logits)`.
type Forward<T> = (Vec<T>, Vec<T>, Vec<T>);

impl HeadCrossEntropy {
    fn forward<T: Float>(&self, h: &[T], w: &[T], d: usize, vocab: usize) -> Forward<T> {
        let n = self.labels.len();
        let logits = gemm_xwt(h, w, n, d, vocab);
        let (nll, lse) = nll_rows(&logits, &self.labels, vocab);
        (nll, lse, logits)
    }

    /// The logits' gradient `(n, vocab)` from the loss's, consuming the saved logits (or
    /// recomputing them from `h` and `w`).
    fn backward<T: Float + candle_core::WithDType>(
        &self,
        h: &[T],
        w: &[T],
        saved: Option<(Vec<T>, Vec<T>)>,
        g: &[T],
        d: usize,
    ) -> Result<Tensor> {
        let (n, vocab) = (self.labels.len(), w.len() / d);
        let (mut logits, lse) = match saved {
            Some(s) => s,
            None => {
                let (_, lse, logits) = self.forward(h, w, d, vocab);
                (logits, lse)
            }
        };
        grad_rows(&mut logits, &lse, g, &self.labels);
        Tensor::from_vec(logits, (n, vocab), &Device::Cpu)
    }
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (n, d) = l1.shape().dims2()?;
        let (vocab, _) = l2.shape().dims2()?;
        let (nll, saved) = match (s1, s2) {
            (CpuStorage::F32(h), CpuStorage::F32(w)) => {
                let (h, w) = (slice(h, l1, name)?, slice(w, l2, name)?);
                let (nll, lse, logits) = self.forward(h, w, d, vocab);
                let saved = (CpuStorage::F32(logits), CpuStorage::F32(lse));
                (CpuStorage::F32(nll), saved)
            }
            (CpuStorage::F64(h), CpuStorage::F64(w)) => {
                let (h, w) = (slice(h, l1, name)?, slice(w, l2, name)?);
                let (nll, lse, logits) = self.forward(h, w, d, vocab);
                let saved = (CpuStorage::F64(logits), CpuStorage::F64(lse));
                (CpuStorage::F64(nll), saved)
            }
            _ => bail!("{name}: mixed or unsupported dtypes"),
        };
        if let Ok(mut slot) = self.logits.lock() {
            *slot = Some(saved);
        }
        Ok((nll, Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.logits.lock().ok().and_then(|mut s| s.take());
        let name = self.name();
        let d = h.dim(1)?;
        let g = grad_res.contiguous()?;
        let (sh, lh) = h.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let dlogits = match (&*sh, &*sw, &*sg, saved) {
            (
                Storage::Cpu(CpuStorage::F32(h)),
                Storage::Cpu(CpuStorage::F32(w)),
                Storage::Cpu(CpuStorage::F32(g)),
                saved,
            ) => {
                let saved = match saved {
                    Some((CpuStorage::F32(l), CpuStorage::F32(s))) => Some((l, s)),
                    _ => None,
                };
                let (h, w, g) = (
                    slice(h, lh, name)?,
                    slice(w, lw, name)?,
                    slice(g, lg, name)?,
                );
                self.backward(h, w, saved, g, d)?
            }
            (
                Storage::Cpu(CpuStorage::F64(h)),
                Storage::Cpu(CpuStorage::F64(w)),
                Storage::Cpu(CpuStorage::F64(g)),
                saved,
            ) => {
                let saved = match saved {
                    Some((CpuStorage::F64(l), CpuStorage::F64(s))) => Some((l, s)),
                    _ => None,
                };
                let (h, w, g) = (
                    slice(h, lh, name)?,
                    slice(w, lw, name)?,
                    slice(g, lg, name)?,
                );
                self.backward(h, w, saved, g, d)?
            }
            _ => bail!("{name}: mixed or unsupported dtypes in the backward"),
        };
        drop((sh, sw, sg));
        Ok((Some(dlogits.matmul(w)?), Some(dlogits.t()?.matmul(h)?)))
    }
}
