//! `y = x W^T (+ b) + s ((x ⊙ M) A^T) B^T` as one graph node: a LoRA-adapted linear layer
//! with a frozen base `W (out, in)`, trainable `A (r, in)`, `B (out, r)` and an optional
//! dropout mask `M` on the adapter's input (0 or `1/(1-p)`, PEFT's inverted dropout).
//!
//! Composed, the base output, the adapter's `(.., out)` product and their sum each stay alive
//! for the backward (two extra `(rows, out)` activations per adapted projection: +49% peak
//! memory on the step benchmark with r = 16). Here only the output exists; the backward
//! recomputes the small `h = (x ⊙ M) A^T` `(rows, r)`:
//! `dB = s dy^T h`, `dh = s dy B`, `dA = dh^T (x ⊙ M)`, `dx = dy W + (dh A) ⊙ M`.

use super::frozen::frozen;
use super::fused_ok;
use super::linear::{gemm_xwt, linear};
use super::storage::{typed, typed_tensor, with_last_dim, Float};
use crate::quantized::Frozen;
use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, D};

/// The adapted layer; `w` (dense or quantized, see [`crate::quantized`]), `b` and `mask`
/// (x's shape, constant) are taken detached, `a` and `bm` are differentiable.
///
/// # Errors
/// Shape or dtype mismatch, or a tensor failure.
pub fn lora_linear(
    x: &Tensor,
    w: &Frozen,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    s: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let w_ok = match w {
        Frozen::Dense(t) => t.dtype() == x.dtype() && fused_ok(t),
        Frozen::Quantized(_) => true,
    };
    let same = x.dtype() == a.dtype() && x.dtype() == bm.dtype();
    if !(same && w_ok && fused_ok(x) && fused_ok(a) && fused_ok(bm)) {
        // Other devices and mixed dtypes (f32 adapters over a 16-bit base): composed.
        let base = frozen(x, w, b)?;
        let xa = x.to_dtype(a.dtype())?;
        let xa = match mask {
            Some(m) => (xa * m.detach().to_dtype(a.dtype())?)?,
            None => xa,
        };
        let h = linear(&xa, a, None)?.affine(s, 0.0)?;
        return base + linear(&h, bm, None)?.to_dtype(x.dtype())?;
    }
    let (out_f, in_f) = w.dims()?;
    let (r, a_in) = a.dims2()?;
    if x.dim(D::Minus1)? != in_f || a_in != in_f || bm.dims2()? != (out_f, r) {
        bail!(
            "lora_linear: x {:?}, W {:?}, A {:?}, B {:?}",
            x.dims(),
            (out_f, in_f),
            a.dims(),
            bm.dims()
        );
    }
    let mask = match mask {
        Some(m) if m.dims() != x.dims() => {
            bail!("lora_linear: mask {:?} for x {:?}", m.dims(), x.dims())
        }
        Some(m) => Some(m.detach().to_dtype(x.dtype())?.contiguous()?),
        None => None,
    };
    let w = match w {
        Frozen::Dense(t) => Frozen::Dense(t.detach().contiguous()?),
        q => q.clone(),
    };
    let op = LoraLinear { w, s, mask };
    let y = x
        .contiguous()?
        .apply_op3(&a.contiguous()?, &bm.contiguous()?, op)?;
    match b {
        Some(b) => y.broadcast_add(&b.detach()),
        None => Ok(y),
    }
}

struct LoraLinear {
    /// The frozen base weight `(out, in)` (contiguous when dense).
    w: Frozen,
    /// The adapter scale.
    s: f64,
    /// The dropout mask on the adapter's input (x's shape), if any.
    mask: Option<Tensor>,
}

impl LoraLinear {
    /// The forward product for `rows` rows; `args` are (x, A, B) storages of dtype `T`.
    fn forward<T: Float>(&self, args: [(&CpuStorage, &Layout); 3], rows: usize) -> Result<Vec<T>> {
        let op = "lora_linear";
        let [x, a, bm] = args.map(|(s, l)| typed::<T>(s, l, op));
        let (x, a, bm) = (x?, a?, bm?);
        let (out_f, in_f) = self.w.dims()?;
        let r = a.len() / in_f.max(1);
        let w = self.w.tensor(T::DTYPE, &Device::Cpu)?;
        let (storage, layout) = w.storage_and_layout();
        let w = typed_tensor::<T>(&storage, layout, "lora_linear")?;
        let mut y = gemm_xwt(x, w, rows, in_f, out_f);
        let dropped: Vec<T>;
        let xa = match &self.mask {
            Some(m) => {
                let (ms, ml) = m.storage_and_layout();
                let m = typed_tensor::<T>(&ms, ml, "lora_linear")?;
                dropped = x.iter().zip(m).map(|(x, m)| *x * *m).collect();
                &dropped[..]
            }
            None => x,
        };
        let mut h = gemm_xwt(xa, a, rows, in_f, r);
        let s = T::of(self.s);
        h.iter_mut().for_each(|v| *v *= s);
        let d = gemm_xwt(&h, bm, rows, r, out_f);
        y.iter_mut().zip(&d).for_each(|(y, d)| *y += *d);
        Ok(y)
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (out_f, in_f) = self.w.dims()?;
        let rows = l1.shape().elem_count() / in_f.max(1);
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(args, rows)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(args, rows)?),
            _ => bail!("{}: unsupported dtype", self.name()),
        };
        Ok((out, with_last_dim(l1.shape(), out_f)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        bm: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out_f, in_f) = self.w.dims()?;
        let rows = x.elem_count() / in_f.max(1);
        let g = grad_res.reshape((rows, out_f))?;
        let m2 = match &self.mask {
            Some(m) => Some(m.reshape((rows, in_f))?),
            None => None,
        };
        let x2 = x.reshape((rows, in_f))?;
        let x2m = match &m2 {
            Some(m) => (&x2 * m)?,
            None => x2,
        };
        let h = x2m.matmul(&a.t()?)?.affine(self.s, 0.0)?;
        let d_b = g.t()?.matmul(&h)?;
        let dh = g.matmul(bm)?.affine(self.s, 0.0)?;
        let d_a = dh.t()?.matmul(&x2m)?;
        let d_adapter = match &m2 {
            Some(m) => (dh.matmul(a)? * m)?,
            None => dh.matmul(a)?,
        };
        let w = self.w.tensor(x.dtype(), x.device())?;
        let dx = (g.matmul(&w)? + d_adapter)?.reshape(x.shape())?;
        Ok((Some(dx), Some(d_a), Some(d_b)))
    }
}
