//! Splitting a projection into attention heads (with rotary embeddings) and merging heads
//! back, each as one graph node.

use super::fused_ok;
use super::rope::RopeTables;
use super::storage::{for_rows, host, Float, Host};
use crate::layers;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `(rows, seq, heads * head_dim)` to `(rows, heads, seq, head_dim)`, rotating the first
/// `tables.rot()` features of every head when `rope` is given (HF half-split RoPE:
/// `x * cos + rotate_half(x) * sin`). Differentiable.
///
/// On the CPU one node replaces reshape / transpose / contiguous / RoPE (each costing a
/// zero-filled gradient buffer and an add in candle's backward, RoPE seven ops more).
///
/// # Errors
/// A width not divisible by `heads`, tables not matching the batch, or a tensor failure.
pub fn split_heads(x: &Tensor, heads: usize, rope: Option<&RopeTables>) -> Result<Tensor> {
    let (b, s, width) = x.dims3()?;
    if heads == 0 || width % heads != 0 {
        bail!("split_heads: width {width} for {heads} heads");
    }
    let hd = width / heads;
    if let Some(t) = rope {
        if t.dims() != (b, s) || t.rot() > hd {
            bail!(
                "split_heads: tables {:?} x rot {} for input {:?}",
                t.dims(),
                t.rot(),
                x.dims()
            );
        }
    }
    if fused_ok(x) {
        let op = Heads {
            merge: false,
            heads,
            rope: rope.cloned(),
            inverse: false,
        };
        return x.contiguous()?.apply_op1(op);
    }
    let y = x
        .reshape((b, s, heads, hd))?
        .transpose(1, 2)?
        .contiguous()?;
    match rope {
        Some(t) => {
            let (cos, sin) = t.tensors()?;
            layers::partial_rope(&y, t.rot(), cos, sin)
        }
        None => Ok(y),
    }
}

/// `(rows, heads, seq, head_dim)` to `(rows, seq, heads * head_dim)` (the attention output
/// before the output projection). Differentiable; one node on the CPU.
///
/// # Errors
/// A tensor failure.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, s, hd) = x.dims4()?;
    if fused_ok(x) {
        let op = Heads {
            merge: true,
            heads: h,
            rope: None,
            inverse: false,
        };
        return x.contiguous()?.apply_op1(op);
    }
    x.transpose(1, 2)?.contiguous()?.reshape((b, s, h * hd))
}

/// Moves head vectors between the `(b, s, h, hd)` and `(b, h, s, hd)` layouts, rotating each
/// head vector by its position's angle (or minus it, `inverse`) when `rope` is set.
#[derive(Clone)]
struct Heads {
    /// `(b, h, s, hd)` to `(b, s, h * hd)`; otherwise the reverse.
    merge: bool,
    heads: usize,
    rope: Option<RopeTables>,
    /// Rotate by `-angle` (the backward of a rotating split).
    inverse: bool,
}

impl Heads {
    /// `x` is `(b, s, h, hd)` (split) or `(b, h, s, hd)` (merge), contiguous.
    fn apply<T: Float>(&self, x: &[T], s: usize, hd: usize) -> Vec<T> {
        let h = self.heads;
        let mut out = vec![T::zero(); x.len()];
        for_rows(&mut out, hd, |r, y| {
            // Output row r: merge -> (b, s, h); split -> (b, h, s).
            let (bi, si, hi) = if self.merge {
                (r / (s * h), (r / h) % s, r % h)
            } else {
                (r / (h * s), r % s, (r / s) % h)
            };
            let src = if self.merge {
                ((bi * h + hi) * s + si) * hd
            } else {
                ((bi * s + si) * h + hi) * hd
            };
            y.copy_from_slice(&x[src..src + hd]);
            if let Some(t) = &self.rope {
                t.rotate(y, bi, si, self.inverse);
            }
        });
        out
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        if self.merge {
            "merge-heads"
        } else {
            "split-heads"
        }
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = self.heads;
        let (s, hd, out_shape) = if self.merge {
            let (b, _, s, hd) = l.shape().dims4()?;
            (s, hd, Shape::from((b, s, h * hd)))
        } else {
            let (b, s, w) = l.shape().dims3()?;
            (s, w / h, Shape::from((b, h, s, w / h)))
        };
        let out = match host(st, l, self.name())? {
            Host::F32(x) => CpuStorage::F32(self.apply(x, s, hd)),
            Host::F64(x) => CpuStorage::F64(self.apply(x, s, hd)),
        };
        Ok((out, out_shape))
    }

    /// The inverse move with the inverse rotation: a rotation acts within one head vector,
    /// so it commutes with moving the vector, and one pass does both.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let back = Heads {
            merge: !self.merge,
            heads: self.heads,
            rope: self.rope.clone(),
            inverse: !self.inverse,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
