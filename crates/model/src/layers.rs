//! Differentiable building blocks, composed only of candle ops that have a backward pass.
//!
//! candle's fused kernels (`candle_nn::ops::softmax_last_dim`, `rms_norm`, `rotary_emb::rope`)
//! have no backward; everything here is written with basic ops instead and is checked against
//! finite differences in `crates/model/tests/gradcheck.rs`.

use candle_core::{DType, Device, Result, Tensor, Var, D};

/// A parameter as a graph leaf (`track`: its gradient is wanted) or a detached view sharing
/// its storage (evaluation, frozen weights).
pub fn param(v: &Var, track: bool) -> Tensor {
    if track {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

/// `x @ w^T (+ b)`: `x` is `(.., in)`, `w` is `(out, in)` (HF/PyTorch layout), `b` is `(out)`.
/// Returns `(.., out)`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = crate::matmul::matmul(&x.reshape((rows, inner))?, &w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    y.reshape(out)
}

/// The dtype statistics are computed in: f32 for 16-bit inputs (whose sums of squares and
/// exponentials lose too much in 16 bits), the input's own dtype otherwise.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// RMSNorm over the last dim: `x / sqrt(mean(x^2) + eps) * w` (Zhang & Sennrich 2019; HF
/// `LlamaRMSNorm`). `x` is `(.., d)`, `w` is `(d)`. A 16-bit `x` is normalised in f32 and
/// rounded back before the weight multiplies it, as HF does
/// (`weight * hidden_states.to(input_dtype)`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(compute_dtype(x.dtype()))?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = ms.affine(1.0, eps)?.sqrt()?.recip()?;
    xf.broadcast_mul(&inv)?
        .to_dtype(x.dtype())?
        .broadcast_mul(w)
}

/// Softmax over the last dim, composed: the reference for [`crate::softmax_node::softmax_last`]
/// (one graph node, which attention uses). The row maximum is subtracted (detached: softmax is
/// invariant to the shift, so this changes no gradient). A 16-bit `x` is computed in f32 and the
/// probabilities rounded back (HF's eager attention: `softmax(.., dtype=float32).to(dtype)`).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let xf = x.to_dtype(compute_dtype(x.dtype()))?;
    let max = xf.max_keepdim(D::Minus1)?.detach();
    let e = xf.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)?.to_dtype(x.dtype())
}

/// Log-softmax over the last dim (same shift as [`softmax_last`]). A 16-bit `x` gives f32
/// log-probabilities (a loss is never rounded to 16 bits).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(compute_dtype(x.dtype()))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RoPE tables for the given positions, HF half-split layout: `cos`/`sin` of shape
/// `(batch, 1, seq, head_dim)` where column `i` and `i + head_dim/2` share frequency
/// `theta^(-2i/head_dim)`. Computed in f64 on the host, then cast to `dtype`.
/// `positions` is row-major `(batch, seq)`.
pub fn rope_tables(
    positions: &[u32],
    batch: usize,
    seq: usize,
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let shape = (batch, 1, seq, head_dim);
    let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Applies rotary embeddings (Su et al. 2021) in HF's half-split layout:
/// `x * cos + rotate_half(x) * sin`, `rotate_half([a, b]) = [-b, a]`.
/// `x` is `(batch, heads, seq, head_dim)`; tables from [`rope_tables`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// Repeats each key/value head `rep` times (grouped-query attention, HF `repeat_kv`):
/// `(batch, kv_heads, seq, hd)` to `(batch, kv_heads * rep, seq, hd)`; query head `h` uses
/// key/value head `h / rep`.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, rep, s, hd))?
        .reshape((b, kv * rep, s, hd))
}

/// Additive attention mask `(batch, 1, seq, seq)`: 0 where query `i` may attend key `j`
/// (`j <= i` and both in the same segment), `-inf` elsewhere. `segments` is row-major
/// `(batch, seq)`; an empty slice means one segment per row.
pub fn attention_mask(
    segments: &[u32],
    batch: usize,
    seq: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; batch * seq * seq];
    for b in 0..batch {
        for i in 0..seq {
            for j in 0..seq {
                let same = segments.is_empty() || segments[b * seq + i] == segments[b * seq + j];
                if j > i || !same {
                    m[(b * seq + i) * seq + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_vec(m, (batch, 1, seq, seq), device)?.to_dtype(dtype)
}

/// LayerNorm over the last dim (Ba et al. 2016): `(x - mean) / sqrt(var + eps) * w + b`,
/// biased variance as PyTorch. `x` is `(.., d)`, `w` and `b` are `(d)`. A 16-bit `x` is
/// normalised in f32 (mean and variance) and rounded back before the affine part.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(compute_dtype(x.dtype()))?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = var.affine(1.0, eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .to_dtype(x.dtype())?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// Rotary embeddings on the first `rot` features of the last dim only (partial rotary, as
/// Phi and GPT-NeoX); the rest pass through. Tables from [`rope_tables`] built with
/// `head_dim = rot`.
pub fn partial_rope(x: &Tensor, rot: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    if rot == hd {
        return rope(x, cos, sin);
    }
    let r = rope(&x.narrow(D::Minus1, 0, rot)?, cos, sin)?;
    let pass = x.narrow(D::Minus1, rot, hd - rot)?;
    Tensor::cat(&[&r, &pass], D::Minus1)
}
