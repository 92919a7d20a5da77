//! The SwiGLU gate `silu(g) * u` (Shazeer 2020; the Llama MLP) as one graph node.

use super::fused_ok;
use super::storage::{for_rows, run2, run3, Float, Kernel2, Kernel3};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `silu(g) * u` with `silu(x) = x * sigmoid(x)`; `g` and `u` have the same shape and dtype.
/// Differentiable in both. On the CPU one pass forward and one backward, instead of candle's
/// SiLU backward (seven full-size temporaries) plus a product node.
///
/// # Errors
/// Shape mismatch or a tensor failure.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.dims() != u.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ", g.dims(), u.dims());
    }
    if fused_ok(g) && g.dtype() == u.dtype() {
        return g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu);
    }
    g.silu()? * u
}

struct SwiGlu;

/// Row length the kernels hand to the thread pool (rows are independent elements here).
const BLOCK: usize = 4096;

fn sigmoid<T: Float>(x: T) -> T {
    (T::one() + (-x).exp_fast()).recip()
}

fn forward<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    for_blocks(&mut out, |start, y| {
        let (g, u) = (&g[start..start + y.len()], &u[start..start + y.len()]);
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid(g) * u;
        }
    });
    out
}

/// `[dg ; du]` (twice the input length): `dg = dy * u * sigmoid(g) * (1 + g (1 - sigmoid(g)))`,
/// `du = dy * silu(g)`.
fn backward<T: Float>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    for_blocks(dg, |start, o| {
        let r = start..start + o.len();
        for ((o, &g), (&u, &d)) in o
            .iter_mut()
            .zip(&g[r.clone()])
            .zip(u[r.clone()].iter().zip(&dy[r.clone()]))
        {
            let s = sigmoid(g);
            *o = d * u * s * (T::one() + g * (T::one() - s));
        }
    });
    for_blocks(du, |start, o| {
        let r = start..start + o.len();
        for ((o, &g), &d) in o.iter_mut().zip(&g[r.clone()]).zip(&dy[r.clone()]) {
            *o = d * g * sigmoid(g);
        }
    });
    out
}

/// [`for_rows`] over `BLOCK`-long pieces (the last one shorter), passing each piece's offset.
fn for_blocks<T: Float, F: Fn(usize, &mut [T]) + Sync>(out: &mut [T], f: F) {
    let n = out.len();
    let whole = n / BLOCK * BLOCK;
    let (head, tail) = out.split_at_mut(whole);
    for_rows(head, BLOCK, |r, piece| f(r * BLOCK, piece));
    if !tail.is_empty() {
        f(whole, tail);
    }
}

impl Kernel2 for SwiGlu {
    fn apply<T: Float>(&self, g: &[T], u: &[T]) -> Vec<T> {
        forward(g, u)
    }
}

impl Kernel3 for SwiGluGrad {
    fn apply<T: Float>(&self, g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
        backward(g, u, dy)
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
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
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = g.elem_count();
        let both = g.apply_op3_no_bwd(u, &grad_res.contiguous()?, &SwiGluGrad)?;
        let dg = both.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = both.narrow(0, n, n)?.reshape(g.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// `(g, u, dy)` to the flat `[dg ; du]` of [`backward`].
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        let n = l1.shape().elem_count();
        let out = run3(self, self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, Shape::from(2 * n)))
    }
}
