//! `y = x @ w^T (+ b)` as one graph node.

use super::fused_ok;
use super::storage::{run2, with_last_dim, Float, Kernel2};
use crate::layers;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};

/// `x @ w^T (+ b)`: `x` is `(.., in)`, `w` is `(out, in)` (HF/PyTorch layout), `b` is
/// `(out)`; returns `(.., out)`. Differentiable in all three.
///
/// On the CPU the product is one custom node (a direct GEMM forward; backward `dx = dy @ w`,
/// `dw = dy^T @ x`) instead of the composed reshape / transpose / matmul / reshape, each of
/// which costs a zero-filled gradient buffer and an add in candle's backward.
///
/// # Errors
/// Shape or dtype mismatch, or a tensor failure.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_op(x, w, b, Linear { frozen: false })
}

/// [`linear`] for a frozen weight (LoRA's base): the backward returns `dx` only, so no
/// `(out, in)` weight gradient is computed or kept (candle's matmul backward computes `dw`
/// even for a plain tensor). `w` and `b` are taken detached. Off the CPU fast path the composed
/// form runs on the detached weight (same values, the gradient computed and dropped).
///
/// # Errors
/// Shape or dtype mismatch, or a tensor failure.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let b = b.map(Tensor::detach);
    linear_op(x, &w.detach(), b.as_ref(), Linear { frozen: true })
}

fn linear_op(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: Linear) -> Result<Tensor> {
    if !(fused_ok(x) && fused_ok(w) && x.dtype() == w.dtype()) {
        return layers::linear(x, w, b);
    }
    let (out_f, in_f) = w.dims2()?;
    if x.dim(D::Minus1)? != in_f {
        bail!("linear: input {:?} for weight {:?}", x.dims(), w.dims());
    }
    let y = x.contiguous()?.apply_op2(&w.contiguous()?, op)?;
    debug_assert_eq!(y.dim(D::Minus1)?, out_f);
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// The product node; `frozen`: no weight gradient.
struct Linear {
    frozen: bool,
}

/// The forward product of [`Linear`] for given sizes.
struct XwT {
    rows: usize,
    in_f: usize,
    out_f: usize,
}

impl Kernel2 for XwT {
    fn apply<T: Float>(&self, x: &[T], w: &[T]) -> Vec<T> {
        gemm_xwt(x, w, self.rows, self.in_f, self.out_f)
    }
}

/// `dst (rows, out) = x (rows, in) @ w^T`, `w` row-major `(out, in)`.
pub(super) fn gemm_xwt<T: 'static + num_traits::Zero + num_traits::One + Copy>(
    x: &[T],
    w: &[T],
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Vec<T> {
    let mut dst = vec![T::zero(); rows * out_f];
    if rows == 0 || out_f == 0 || in_f == 0 {
        return dst;
    }
    assert!(x.len() >= rows * in_f && w.len() >= out_f * in_f);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `x` holds rows * in_f elements, `w` out_f * in_f and `dst` rows * out_f (asserted
    // above); the strides below address exactly those ranges:
    // dst (m = rows, n = out_f) row-major, lhs x (rows, in_f) row-major, rhs w^T (in_f, out_f)
    // read from row-major w (element (k, n) at n * in_f + k).
    unsafe {
        gemm::gemm(
            rows,
            out_f,
            in_f,
            dst.as_mut_ptr(),
            1,
            out_f as isize,
            false,
            x.as_ptr(),
            1,
            in_f as isize,
            w.as_ptr(),
            in_f as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    dst
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_f, in_f) = l2.shape().dims2()?;
        let rows = l1.shape().elem_count() / in_f.max(1);
        let gemm = XwT { rows, in_f, out_f };
        let out = run2(&gemm, self.name(), (s1, l1), (s2, l2))?;
        Ok((out, with_last_dim(l1.shape(), out_f)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out_f, in_f) = w.dims2()?;
        let rows = x.elem_count() / in_f.max(1);
        let g = grad_res.reshape((rows, out_f))?;
        let dx = g.matmul(w)?.reshape(x.shape())?;
        if self.frozen {
            return Ok((Some(dx), None));
        }
        let dw = g.t()?.matmul(&x.reshape((rows, in_f))?)?;
        Ok((Some(dx), Some(dw)))
    }
}
