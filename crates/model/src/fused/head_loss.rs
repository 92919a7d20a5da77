//! The LM head and its cross-entropy as one graph node: `nll = -log softmax(h w^T)[label]`.

use super::cross_entropy::{cross_entropy, grad_rows, nll_rows};
use super::fused_ok;
use super::linear::gemm_xwt;
use super::storage::{typed, typed_tensor, Float};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
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
        let logits = crate::matmul::matmul(h, &w.t()?)?;
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

    /// [`HeadCrossEntropy::forward`] on storages of dtype `T`; keeps logits and log-sum-exps.
    fn cpu_fwd_typed<T: Float>(
        &self,
        (h, lh): (&CpuStorage, &Layout),
        (w, lw): (&CpuStorage, &Layout),
    ) -> Result<CpuStorage> {
        let name = self.name();
        let (_, d) = lh.shape().dims2()?;
        let (vocab, _) = lw.shape().dims2()?;
        let (h, w) = (typed::<T>(h, lh, name)?, typed::<T>(w, lw, name)?);
        let (nll, lse, logits) = self.forward(h, w, d, vocab);
        if let Ok(mut slot) = self.logits.lock() {
            *slot = Some((
                T::to_cpu_storage_owned(logits),
                T::to_cpu_storage_owned(lse),
            ));
        }
        Ok(T::to_cpu_storage_owned(nll))
    }

    /// The logits' gradient `(n, vocab)` from the loss's, consuming the saved logits (or
    /// recomputing them from `h` and `w`).
    fn grad_logits<T: Float>(
        &self,
        h: &Tensor,
        w: &Tensor,
        g: &Tensor,
        saved: Option<(CpuStorage, CpuStorage)>,
    ) -> Result<Tensor> {
        let name = self.name();
        let (n, d) = h.dims2()?;
        let vocab = w.dim(0)?;
        let (mut logits, lse) = match saved {
            Some((logits, lse)) => (T::cpu_storage_data(logits)?, T::cpu_storage_data(lse)?),
            None => {
                let (sh, lh) = h.storage_and_layout();
                let (sw, lw) = w.storage_and_layout();
                let (h, w) = (
                    typed_tensor::<T>(&sh, lh, name)?,
                    typed_tensor::<T>(&sw, lw, name)?,
                );
                let (_, lse, logits) = self.forward(h, w, d, vocab);
                (logits, lse)
            }
        };
        let (sg, lg) = g.storage_and_layout();
        grad_rows(
            &mut logits,
            &lse,
            typed_tensor::<T>(&sg, lg, name)?,
            &self.labels,
        );
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
        let nll = match s1.dtype() {
            DType::F32 => self.cpu_fwd_typed::<f32>((s1, l1), (s2, l2))?,
            DType::F64 => self.cpu_fwd_typed::<f64>((s1, l1), (s2, l2))?,
            other => bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        Ok((nll, Shape::from(self.labels.len())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.logits.lock().ok().and_then(|mut s| s.take());
        let g = grad_res.contiguous()?;
        let dlogits = match h.dtype() {
            DType::F32 => self.grad_logits::<f32>(h, w, &g, saved)?,
            DType::F64 => self.grad_logits::<f64>(h, w, &g, saved)?,
            other => bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        // A frozen head (detached: LoRA) gets no (vocab, d) weight gradient.
        let dw = match w.track_op() {
            true => Some(dlogits.t()?.matmul(h)?),
            false => None,
        };
        Ok((Some(dlogits.matmul(w)?), dw))
    }
}
