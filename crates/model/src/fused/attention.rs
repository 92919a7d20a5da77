//! Causal scaled dot-product attention `softmax(scale * Q K^T + mask) V` as one graph node.

use super::fused_ok;
use super::softmax::{softmax_grad_row, AttentionMask};
use super::storage::{for_rows, typed, typed_tensor, Float};
use crate::softmax_node::softmax_last;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// `softmax(scale * q k^T + mask) v` per batch row and head: `q`, `k`, `v` are
/// `(rows, heads, seq, head_dim)` (key/value heads already repeated for grouped-query
/// attention), `scale > 0`; returns `(rows, heads, seq, head_dim)`. Differentiable in all three.
///
/// On the CPU one node does every head with single-threaded GEMMs, heads spread over the
/// thread pool (64 small products of 256 x 32 x 256 parallelise badly one by one), and keeps
/// the probabilities for the backward; the composed form (two batched matmuls around a masked
/// softmax, the path off the CPU) materialises and zero-fills `(rows, heads, seq, seq)`
/// gradients several times.
///
/// # Errors
/// Shapes that disagree with each other or with the mask, or a tensor failure.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttentionMask,
) -> Result<Tensor> {
    let dims = q.dims4()?;
    if k.dims4()? != dims || v.dims4()? != dims {
        bail!(
            "attention: q {:?}, k {:?}, v {:?} differ",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if fused_ok(q) && k.dtype() == q.dtype() && v.dtype() == q.dtype() {
        // Checks the mask against the shape and the scale.
        let (b, h, t, _) = dims;
        if b != mask.rows() || t != mask.seq() || scale.is_nan() || scale <= 0.0 {
            bail!(
                "attention: {b} x {h} x {t} input, mask {} x {}, scale {scale}",
                mask.rows(),
                mask.seq()
            );
        }
        let op = Attention {
            scale,
            mask: mask.clone(),
            probs: Mutex::new(None),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    // Scaling q instead of the scores and the one-node softmax keep three (rows, heads, seq,
    // seq) tensors in the graph (scores, masked scores, probabilities) instead of eight.
    let m = mask.additive(q.dtype(), q.device())?;
    let scores = crate::matmul::matmul(&q.affine(scale, 0.0)?, &k.t()?)?.broadcast_add(&m)?;
    crate::matmul::matmul(&softmax_last(&scores)?, v)
}

struct Attention {
    scale: f64,
    mask: AttentionMask,
    /// The forward's probabilities `(rows * heads, seq, seq)`, taken by the first backward (a
    /// later backward through the same node recomputes them).
    probs: Mutex<Option<CpuStorage>>,
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)`, single-threaded; `dst` row-major, `lhs` and `rhs`
/// addressed by their row and column strides (in elements).
#[allow(clippy::too_many_arguments)]
fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above bound every element the strides address inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl Attention {
    /// Returns `(o, probs)`.
    fn forward<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        heads: usize,
        hd: usize,
    ) -> (Vec<T>, Vec<T>) {
        let t = self.mask.seq();
        let n_heads = q.len() / (t * hd).max(1);
        let mut probs = vec![T::zero(); n_heads * t * t];
        for_rows(&mut probs, t * t, |bh, p| {
            let x = bh * t * hd..(bh + 1) * t * hd;
            let mut s = vec![T::zero(); t * t];
            // S = Q K^T: K^T (hd, t) read from row-major K (t, hd).
            matmul(t, t, hd, &mut s, &q[x.clone()], (hd, 1), &k[x], (1, hd));
            let b = bh / heads;
            for i in 0..t {
                let row = i * t..(i + 1) * t;
                self.mask
                    .softmax_row(self.scale, &s[row.clone()], &mut p[row], b, i);
            }
        });
        let mut o = vec![T::zero(); q.len()];
        let probs_ref = &probs;
        for_rows(&mut o, t * hd, |bh, o| {
            let x = bh * t * hd..(bh + 1) * t * hd;
            let p = &probs_ref[bh * t * t..(bh + 1) * t * t];
            matmul(t, hd, t, o, p, (t, 1), &v[x], (hd, 1));
        });
        (o, probs)
    }

    /// `[dq ; dk ; dv]` (three times the input length) from the saved probabilities and `do`.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        p: &[T],
        d_o: &[T],
        hd: usize,
    ) -> Vec<T> {
        let t = self.mask.seq();
        let n = q.len();
        let mut out = vec![T::zero(); 3 * n];
        // One output row per head: [dq_h ; dk_h ; dv_h] lives at three places, so the pool
        // iterates heads over a scratch index and each head writes its own disjoint slices.
        let (dq, rest) = out.split_at_mut(n);
        let (dk, dv) = rest.split_at_mut(n);
        let heads_total = n / (t * hd).max(1);
        let mut per_head: Vec<(&mut [T], &mut [T], &mut [T])> = dq
            .chunks_mut(t * hd)
            .zip(dk.chunks_mut(t * hd))
            .zip(dv.chunks_mut(t * hd))
            .map(|((a, b), c)| (a, b, c))
            .collect();
        debug_assert_eq!(per_head.len(), heads_total);
        for_rows(&mut per_head, 1, |bh, slot| {
            let (dq, dk, dv) = &mut slot[0];
            let x = bh * t * hd..(bh + 1) * t * hd;
            let (qh, kh, vh, doh) = (&q[x.clone()], &k[x.clone()], &v[x.clone()], &d_o[x]);
            let ph = &p[bh * t * t..(bh + 1) * t * t];
            // dP = dO V^T, then dS (zero above the diagonal) into a second buffer.
            let mut dp = vec![T::zero(); t * t];
            matmul(t, t, hd, &mut dp, doh, (hd, 1), vh, (1, hd));
            let mut ds = vec![T::zero(); t * t];
            for i in 0..t {
                let row = i * t..(i + 1) * t;
                softmax_grad_row(
                    self.scale,
                    &ph[row.clone()],
                    &dp[row.clone()],
                    &mut ds[row],
                    i,
                );
            }
            // dQ = dS K; dK = dS^T Q; dV = P^T dO.
            matmul(t, hd, t, dq, &ds, (t, 1), kh, (hd, 1));
            matmul(t, hd, t, dk, &ds, (1, t), qh, (hd, 1));
            matmul(t, hd, t, dv, ph, (1, t), doh, (hd, 1));
        });
        drop(per_head);
        out
    }
}

impl Attention {
    /// [`Attention::forward`] on storages of dtype `T`; keeps the probabilities.
    fn cpu_fwd_typed<T: Float>(
        &self,
        (q, lq): (&CpuStorage, &Layout),
        (k, lk): (&CpuStorage, &Layout),
        (v, lv): (&CpuStorage, &Layout),
    ) -> Result<CpuStorage> {
        let name = self.name();
        let (_, heads, _, hd) = lq.shape().dims4()?;
        let (q, k, v) = (
            typed::<T>(q, lq, name)?,
            typed::<T>(k, lk, name)?,
            typed::<T>(v, lv, name)?,
        );
        let (o, probs) = self.forward(q, k, v, heads, hd);
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(T::to_cpu_storage_owned(probs));
        }
        Ok(T::to_cpu_storage_owned(o))
    }

    /// `[dq ; dk ; dv]` as one flat tensor, from the saved probabilities (or recomputed ones).
    fn bwd_typed<T: Float>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
        saved: Option<CpuStorage>,
    ) -> Result<Tensor> {
        let name = self.name();
        let (_, heads, _, hd) = q.dims4()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (q, k, v) = (
            typed_tensor::<T>(&sq, lq, name)?,
            typed_tensor::<T>(&sk, lk, name)?,
            typed_tensor::<T>(&sv, lv, name)?,
        );
        let p = match saved {
            Some(p) => T::cpu_storage_data(p)?,
            None => self.forward(q, k, v, heads, hd).1,
        };
        let out = self.backward(q, k, v, &p, typed_tensor::<T>(&sg, lg, name)?, hd);
        Tensor::from_vec(out, 3 * q.len(), &Device::Cpu)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
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
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let o = match s1.dtype() {
            DType::F32 => self.cpu_fwd_typed::<f32>(args.0, args.1, args.2)?,
            DType::F64 => self.cpu_fwd_typed::<f64>(args.0, args.1, args.2)?,
            other => bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        Ok((o, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The first backward takes the forward's probabilities; a later one recomputes them.
        let saved = self.probs.lock().ok().and_then(|mut slot| slot.take());
        let g = grad_res.contiguous()?;
        let all = match q.dtype() {
            DType::F32 => self.bwd_typed::<f32>(q, k, v, &g, saved)?,
            DType::F64 => self.bwd_typed::<f64>(q, k, v, &g, saved)?,
            other => bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        let n = q.elem_count();
        let part = |i: usize| all.narrow(0, i * n, n)?.reshape(q.shape());
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}
