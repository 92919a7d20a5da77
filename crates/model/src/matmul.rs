//! Matrix products whose operand layouts every candle backend accepts.
//!
//! candle's CPU matmul (the `gemm` crate) takes any row and column strides, but its CUDA matmul
//! hands the operands to cuBLAS' strided-batched GEMM, which needs each operand's last two dims
//! row-major (`(rows, cols)` strides `(cols, 1)`) or column-major (`(1, rows)`), and fails with
//! `MatMulNonContiguous` otherwise (candle-core 0.11.1 `cuda_backend::gemm_config`). A view such
//! as the last position of every row of `(rows, seq, d)` hidden states (`narrow` + `squeeze`:
//! strides `(seq * d, 1)`) therefore works on the CPU and fails on a GPU. [`matmul`] copies
//! such an operand first, on every device, so the CPU tests run the layouts the GPU gets.

use candle_core::{Result, Tensor};

/// `lhs @ rhs` as [`Tensor::matmul`] (`lhs (.., m, k)`, `rhs (.., k, n)`, same batch dims and
/// dtype; returns `(.., m, n)`, differentiable in both), after making contiguous an operand
/// whose layout cuBLAS would reject (see [`cublas_accepts`]). Operands that are contiguous or
/// transposed views (`w.t()`) are used as they are.
///
/// # Errors
/// Those of [`Tensor::matmul`]: mismatched shapes, dtypes or devices.
pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let lhs = gemm_operand(lhs)?;
    let rhs = gemm_operand(rhs)?;
    lhs.matmul(&rhs)
}

/// The tensor itself when cuBLAS accepts its layout as a GEMM operand, else a contiguous copy.
fn gemm_operand(t: &Tensor) -> Result<Tensor> {
    if cublas_accepts(t.dims(), t.stride()) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Whether candle's CUDA matmul accepts a rank >= 2 operand with these `dims` and `stride`
/// (in elements), as `candle-core` 0.11.1 `cuda_backend::gemm_config` decides for either side:
/// - the last two dims `(r, c)` with strides `(s2, s1)` are row-major (`s1 == 1` or `c == 1`,
///   and `s2 == c` or `r == 1`) or column-major (`s1 == r` or `c == 1`, and `s2 == 1` or
///   `r == 1`);
/// - the batch dims form one stride: none, one, or two with `s_0 == s_1 * dims_1` (or one of
///   the two of size 1).
///
/// A rank below 2 returns `false`.
pub fn cublas_accepts(dims: &[usize], stride: &[usize]) -> bool {
    let rank = dims.len();
    if rank < 2 || stride.len() != rank {
        return false;
    }
    let (r, c) = (dims[rank - 2], dims[rank - 1]);
    let (s2, s1) = (stride[rank - 2], stride[rank - 1]);
    let row_major = (s1 == 1 || c == 1) && (s2 == c || r == 1);
    let col_major = (s1 == r || c == 1) && (s2 == 1 || r == 1);
    let batch = match stride[..rank - 2] {
        [] | [_] => true,
        [s0, s] => s0 == s * dims[1] || dims[0] == 1 || dims[1] == 1,
        _ => false,
    };
    (row_major || col_major) && batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn ramp(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn layouts_cublas_takes_and_refuses() {
        let x = ramp(&[3, 5, 4]);
        // Contiguous and a transposed view: taken.
        assert!(cublas_accepts(x.dims(), x.stride()));
        let xt = x.t().unwrap();
        assert!(cublas_accepts(xt.dims(), xt.stride()));
        // The last position of each row: (3, 4) with strides (20, 1): refused.
        let last = x.narrow(1, 4, 1).unwrap().squeeze(1).unwrap();
        assert_eq!(last.stride(), &[20, 1]);
        assert!(!cublas_accepts(last.dims(), last.stride()));
        // A single row of it is fine (r == 1), as is a range of rows; one column of a wider
        // matrix is not (row stride 4 for a width of 1).
        let one = last.narrow(0, 0, 1).unwrap();
        assert!(cublas_accepts(one.dims(), one.stride()));
        let rows = x.narrow(1, 1, 3).unwrap();
        assert!(cublas_accepts(rows.dims(), rows.stride()));
        let col = x.narrow(D::Minus1, 1, 1).unwrap();
        assert!(!cublas_accepts(col.dims(), col.stride()));
        // A head split without the copy: (b, t, h, d) -> (b, h, t, d) strides (t h d, d, h d, 1).
        let heads = ramp(&[2, 5, 3, 4]).transpose(1, 2).unwrap();
        assert!(!cublas_accepts(heads.dims(), heads.stride()));
        // A weight broadcast over a batch (stride 0) is taken; rank 1 is not an operand.
        let w = ramp(&[4, 6]).broadcast_as((3, 4, 6)).unwrap();
        assert!(cublas_accepts(w.dims(), w.stride()));
        assert!(!cublas_accepts(&[4], &[1]));
    }

    #[test]
    fn matmul_copies_refused_operands_and_agrees() -> Result<()> {
        let h = ramp(&[3, 5, 4]);
        let last = h.narrow(1, 4, 1)?.squeeze(1)?;
        let w = ramp(&[6, 4]);
        let got = matmul(&last, &w.t()?)?;
        let want = last.contiguous()?.matmul(&w.t()?)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        // Batched with a transposed rhs view, and gradients through the copy.
        let q = candle_core::Var::from_tensor(&ramp(&[2, 3, 5, 4]))?;
        let k = ramp(&[2, 3, 5, 4]);
        let s = matmul(&q.as_tensor().transpose(1, 2)?.transpose(1, 2)?, &k.t()?)?;
        let g = s.sum_all()?.backward()?;
        let dq = g.get(q.as_tensor()).expect("q has a gradient");
        // d(sum(q k^T))/dq = sum of k's rows over the key axis, broadcast to each query row.
        let want = k.sum_keepdim(2)?.broadcast_as(q.dims())?;
        let diff = (dq - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }
}
