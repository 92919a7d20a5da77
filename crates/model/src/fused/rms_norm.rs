//! RMSNorm `y = x / sqrt(mean(x^2) + eps) * w` and its gradient.

use super::fused_ok;
use super::storage::{dot, for_rows, run2, run3, Float, Kernel2, Kernel3};
use crate::layers;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

/// RMSNorm over the last dim (Zhang & Sennrich 2019; HF `LlamaRMSNorm`): `x` is `(.., d)`,
/// `w` is `(d)`, same dtype. Differentiable in both; on the CPU one fused pass each way.
///
/// # Errors
/// Shape or dtype mismatch, or a tensor failure.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        bail!("rms_norm: weight {:?} for width {d}", w.dims());
    }
    if fused_ok(x) && x.dtype() == w.dtype() {
        return x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps });
    }
    layers::rms_norm(x, w, eps)
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    fn inv_rms<T: Float>(&self, row: &[T]) -> T {
        let ms = dot(row, row) / T::of(row.len() as f64);
        (ms + T::of(self.eps)).sqrt().recip()
    }

    fn forward<T: Float>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let d = w.len();
        let mut out = vec![T::zero(); x.len()];
        for_rows(&mut out, d, |r, y| {
            let row = &x[r * d..(r + 1) * d];
            let inv = self.inv_rms(row);
            for ((y, &v), &wi) in y.iter_mut().zip(row).zip(w) {
                *y = v * inv * wi;
            }
        });
        out
    }

    /// `dx = inv * (dy*w - xh * mean(dy*w*xh))` with `xh = x * inv`, and `dw = sum_rows dy*xh`,
    /// returned as one `(rows + 1, d)` buffer: `dx` rows, then `dw`.
    fn backward<T: Float>(&self, x: &[T], w: &[T], dy: &[T]) -> Vec<T> {
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![T::zero(); x.len() + d];
        let (dx, dw) = out.split_at_mut(x.len());
        let mut inv = vec![T::zero(); rows];
        for_rows(&mut inv, 1, |r, o| {
            o[0] = self.inv_rms(&x[r * d..(r + 1) * d])
        });
        let inv = &inv;
        for_rows(dx, d, |r, dx| {
            let (row, g) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let inv = inv[r];
            let gw: Vec<T> = g.iter().zip(w).map(|(&g, &wi)| g * wi).collect();
            let dot = dot(&gw, row) * inv / T::of(d as f64);
            for ((o, &v), &gw) in dx.iter_mut().zip(row).zip(&gw) {
                *o = inv * (gw - v * inv * dot);
            }
        });
        // dw: partial sums over fixed blocks of rows (in parallel), then summed in block order,
        // so the result does not depend on thread timing.
        let blocks = rows.clamp(1, 64);
        let per = rows.div_ceil(blocks);
        let mut partial = vec![T::zero(); blocks * d];
        for_rows(&mut partial, d, |blk, acc| {
            for r in blk * per..((blk + 1) * per).min(rows) {
                let (row, g) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                for ((a, &v), &g) in acc.iter_mut().zip(row).zip(g) {
                    *a += g * v * inv[r];
                }
            }
        });
        for acc in partial.chunks(d) {
            dw.iter_mut().zip(acc).for_each(|(a, &b)| *a += b);
        }
        out
    }
}

impl Kernel2 for RmsNorm {
    fn apply<T: Float>(&self, x: &[T], w: &[T]) -> Vec<T> {
        self.forward(x, w)
    }
}

impl Kernel3 for RmsNorm {
    fn apply<T: Float>(&self, x: &[T], w: &[T], dy: &[T]) -> Vec<T> {
        self.backward(x, w, dy)
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
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

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d;
        let both = x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &RmsNormGrad(*self))?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(x, w, dy)` to the `(rows + 1, d)` buffer of [`RmsNorm::backward`].
struct RmsNormGrad(RmsNorm);

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
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
        let d = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / d;
        let out = run3(&self.0, self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, Shape::from((rows + 1, d))))
    }
}
