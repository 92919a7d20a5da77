//! `y = x W^T (+ b)` for a frozen base weight that may be quantized (QLoRA's base, see
//! [`crate::quantized`]).
//!
//! A dense weight goes to [`frozen_linear`]. A quantized one is one custom node holding the
//! quantized weight: the forward dequantizes it to x's dtype and runs the same GEMM as
//! [`super::linear`], the backward dequantizes it again for `dx = dy W` and computes no weight
//! gradient. Between the two only the quantized bytes are kept.

use super::fused_ok;
use super::linear::{frozen_linear, gemm_xwt};
use super::storage::{typed, typed_tensor, with_last_dim, Float};
use crate::quantized::{Frozen, QuantizedWeight};
use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

/// `x W^T (+ b)` with `x (.., in)`, the frozen `W (out, in)` and `b (out)` (taken detached);
/// differentiable in `x` only. Off the CPU fast path the dequantized weight joins the composed
/// graph (same values; the dense copy then lives until the backward).
///
/// # Errors
/// Shape mismatch or a tensor failure.
pub fn frozen(x: &Tensor, w: &Frozen, b: Option<&Tensor>) -> Result<Tensor> {
    let q = match w {
        Frozen::Dense(t) => return frozen_linear(x, t, b),
        Frozen::Quantized(q) => q,
    };
    if !fused_ok(x) {
        return frozen_linear(x, &q.dequantize(x.dtype(), x.device())?, b);
    }
    let (out_f, in_f) = q.dims();
    if x.dim(D::Minus1)? != in_f {
        bail!("frozen: input {:?} for weight ({out_f}, {in_f})", x.dims());
    }
    let y = x
        .contiguous()?
        .apply_op1(QuantizedLinear { w: q.clone() })?;
    match b {
        Some(b) => y.broadcast_add(&b.detach()),
        None => Ok(y),
    }
}

struct QuantizedLinear {
    w: Arc<QuantizedWeight>,
}

impl QuantizedLinear {
    fn forward<T: Float>(&self, x: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let (out_f, in_f) = self.w.dims();
        let x = typed::<T>(x, l, "frozen")?;
        let w = self.w.dequantize(T::DTYPE, &Device::Cpu)?;
        let (storage, layout) = w.storage_and_layout();
        let w = typed_tensor::<T>(&storage, layout, "frozen")?;
        Ok(gemm_xwt(x, w, x.len() / in_f.max(1), in_f, out_f))
    }
}

impl CustomOp1 for QuantizedLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(s, l)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(s, l)?),
            _ => bail!("{}: unsupported dtype", self.name()),
        };
        Ok((out, with_last_dim(l.shape(), self.w.dims().0)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (out_f, in_f) = self.w.dims();
        let rows = x.elem_count() / in_f.max(1);
        let w = self.w.dequantize(x.dtype(), x.device())?;
        let dx = grad_res.reshape((rows, out_f))?.matmul(&w)?;
        Ok(Some(dx.reshape(x.shape())?))
    }
}
