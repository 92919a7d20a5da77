//! Causal scaled dot-product attention `softmax(scale * Q K^T + mask) V` as one graph node.

use super::fused_ok;
use super::softmax::{causal_softmax, softmax_grad_row, AttentionMask};
use super::storage::{for_rows, slice, Float};
use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// `softmax(scale * q k^T + mask) v` per batch row and head: `q`, `k`, `v` are
/// `(rows, heads, seq, head_dim)` (key/value heads already repeated for grouped-query
/// attention), `scale > 0`; returns `(rows, heads, seq, head_dim)`. Differentiable in all three.
///
/// On the CPU one node does every head with single-threaded GEMMs, heads spread over the
/// thread pool (64 small products of 256 x 32 x 256 parallelise badly one by one), and keeps
/// the probabilities for the backward; the composed form (two batched matmuls around
/// [`causal_softmax`]) materialises and zero-fills `(rows, heads, seq, seq)` gradients
/// several times.
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
    causal_softmax(&q.matmul(&k.t()?)?, scale, mask)?.matmul(v)
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
            // dP = dO V^T, then dS in place of a fresh buffer.
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
        let name = self.name();
        let (_, heads, _, hd) = l1.shape().dims4()?;
        let (o, probs) = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let (o, p) = self.forward(
                    slice(q, l1, name)?,
                    slice(k, l2, name)?,
                    slice(v, l3, name)?,
                    heads,
                    hd,
                );
                (CpuStorage::F32(o), CpuStorage::F32(p))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                let (o, p) = self.forward(
                    slice(q, l1, name)?,
                    slice(k, l2, name)?,
                    slice(v, l3, name)?,
                    heads,
                    hd,
                );
                (CpuStorage::F64(o), CpuStorage::F64(p))
            }
            _ => bail!("{name}: mixed or unsupported dtypes"),
        };
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(probs);
        }
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
        let n = q.elem_count();
        let (_, heads, _, hd) = q.dims4()?;
        let g = grad_res.contiguous()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let name = self.name();
        let all = match (&*sq, &*sk, &*sv, &*sg) {
            (
                Storage::Cpu(CpuStorage::F32(q)),
                Storage::Cpu(CpuStorage::F32(k)),
                Storage::Cpu(CpuStorage::F32(v)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => {
                let (q, k, v) = (
                    slice(q, lq, name)?,
                    slice(k, lk, name)?,
                    slice(v, lv, name)?,
                );
                let p = match saved {
                    Some(CpuStorage::F32(p)) => p,
                    _ => self.forward(q, k, v, heads, hd).1,
                };
                let out = self.backward(q, k, v, &p, slice(g, lg, name)?, hd);
                Tensor::from_vec(out, 3 * n, &Device::Cpu)?
            }
            (
                Storage::Cpu(CpuStorage::F64(q)),
                Storage::Cpu(CpuStorage::F64(k)),
                Storage::Cpu(CpuStorage::F64(v)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => {
                let (q, k, v) = (
                    slice(q, lq, name)?,
                    slice(k, lk, name)?,
                    slice(v, lv, name)?,
                );
                let p = match saved {
                    Some(CpuStorage::F64(p)) => p,
                    _ => self.forward(q, k, v, heads, hd).1,
                };
                let out = self.backward(q, k, v, &p, slice(g, lg, name)?, hd);
                Tensor::from_vec(out, 3 * n, &Device::Cpu)?
            }
            _ => bail!("{name}: mixed or unsupported dtypes in the backward"),
        };
        let part = |i: usize| all.narrow(0, i * n, n)?.reshape(q.shape());
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}
