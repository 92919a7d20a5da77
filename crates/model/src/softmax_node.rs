//! Softmax over the last dim as one graph node on every device: the attention probabilities
//! of the composed (GPU) path.
//!
//! The composed form ([`crate::layers::softmax_last`]: upcast, max, subtract, exp, sum,
//! divide, round) keeps five f32 tensors of the input's size in the graph until the backward;
//! for attention that is `(rows, heads, seq, seq)` each, about 20 bytes per score and layer
//! next to the 2 of the bf16 probabilities. This node keeps only its output: the backward
//! needs nothing else (`dx = p * (g - sum_j g_j p_j)`). Values are those of the composed form:
//! 16-bit inputs are computed in f32 and rounded once (HF eager attention's
//! `softmax(scores, dtype=float32).to(dtype)`), f32/f64 in their own dtype.
//!
//! On a GPU the forward upcasts, runs candle's own row-softmax kernel (`softmax_f32` of
//! candle-kernels' reduce module, one warp per row, f32 accumulation) and rounds back; on the
//! CPU it is a plain row loop. The backward is composed candle ops in f32, so it runs on any
//! device.

use crate::layers::compute_dtype;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType, D};

/// `softmax(x)` over the last dim, differentiable, same dtype and shape as `x` (any rank >= 1,
/// f32/f64/bf16/f16). Rows whose every entry is `-inf` give NaN, as in the composed form.
///
/// # Errors
/// An integer dtype, or a tensor failure.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.dtype().is_float() {
        bail!("softmax: dtype {:?} is not a float type", x.dtype());
    }
    if x.elem_count() == 0 {
        // Nothing to launch (a zero-size grid is refused on CUDA).
        return crate::layers::softmax_last(x);
    }
    if !x.device().is_cpu() && x.elem_count() > KERNEL_MAX_ELEMS {
        return in_parts(x, KERNEL_MAX_ELEMS);
    }
    x.contiguous()?.apply_op1(SoftmaxLast)
}

/// candle-kernels' softmax indexes `row * n_cols + col` in a C `int`: one launch must stay
/// below 2^31 elements (e.g. 15 rows x 9 heads x 4096^2 scores in an evaluation would not).
const KERNEL_MAX_ELEMS: usize = i32::MAX as usize;

/// The softmax of `x` over groups of whole rows of at most `max_elems` elements each, joined
/// again (rows are independent, so the values are those of one node; the join costs one copy).
fn in_parts(x: &Tensor, max_elems: usize) -> Result<Tensor> {
    let cols = x.dim(D::Minus1)?;
    let rows = x.elem_count() / cols;
    let per = (max_elems / cols).max(1);
    let flat = x.reshape((rows, cols))?;
    let mut parts = Vec::with_capacity(rows.div_ceil(per));
    let mut start = 0;
    while start < rows {
        let n = per.min(rows - start);
        parts.push(
            flat.narrow(0, start, n)?
                .contiguous()?
                .apply_op1(SoftmaxLast)?,
        );
        start += n;
    }
    Tensor::cat(&parts, 0)?.reshape(x.shape())
}

struct SoftmaxLast;

/// Row softmax of contiguous `src` (`cols` per row) in `W` (the compute dtype), written to
/// `T` with one rounding.
fn rows<T: WithDType, W: num_traits::Float>(src: &[T], cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len());
    let mut e = vec![W::zero(); cols];
    for row in src.chunks(cols) {
        let wide = |v: T| W::from(v.to_f64()).unwrap_or_else(W::nan);
        let max = row.iter().map(|&v| wide(v)).fold(W::neg_infinity(), W::max);
        let mut sum = W::zero();
        for (d, &v) in e.iter_mut().zip(row) {
            *d = (wide(v) - max).exp();
            sum = sum + *d;
        }
        out.extend(
            e.iter()
                .map(|&d| T::from_f64((d / sum).to_f64().unwrap_or(f64::NAN))),
        );
    }
    out
}

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((o1, o2)) = l.contiguous_offsets() else {
            bail!("softmax: input not contiguous");
        };
        let cols = l.dims().last().copied().unwrap_or(1).max(1);
        let out = match s {
            CpuStorage::BF16(v) => CpuStorage::BF16(rows::<_, f32>(&v[o1..o2], cols)),
            CpuStorage::F16(v) => CpuStorage::F16(rows::<_, f32>(&v[o1..o2], cols)),
            CpuStorage::F32(v) => CpuStorage::F32(rows::<_, f32>(&v[o1..o2], cols)),
            CpuStorage::F64(v) => CpuStorage::F64(rows::<_, f64>(&v[o1..o2], cols)),
            _ => bail!("softmax: unsupported dtype"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax(s, l)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let wide = compute_dtype(res.dtype());
        let p = res.to_dtype(wide)?;
        let g = grad_res.to_dtype(wide)?;
        let dot = (&g * &p)?.sum_keepdim(D::Minus1)?;
        let dx = (p * g.broadcast_sub(&dot)?)?;
        Ok(Some(dx.to_dtype(res.dtype())?))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{kernel_name, kernels, Map1, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, WithDType};

    /// candle-kernels' `softmax_<dtype>(src, dst, n_cols)`: one row per block of one warp
    /// (`grid (rows, 1, 1)`, `block (1, 32, 1)`), as candle-nn launches it.
    struct Rows;

    impl Map1 for Rows {
        fn f<T: DeviceRepr + WithDType>(
            &self,
            src: &CudaSlice<T>,
            dev: &CudaDevice,
            layout: &Layout,
        ) -> Result<CudaSlice<T>> {
            let Some((o1, o2)) = layout.contiguous_offsets() else {
                bail!("softmax: input not contiguous");
            };
            let src = src.slice(o1..o2);
            let n = layout.shape().elem_count();
            let cols = layout.dims().last().copied().unwrap_or(1).max(1);
            let grid = u32::try_from(n / cols)
                .map_err(|_| candle_core::Error::Msg(format!("softmax: {} rows", n / cols)))?;
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (1, 32, 1),
                shared_mem_bytes: 0,
            };
            let func = dev.get_or_load_func(&kernel_name::<T>("softmax"), &kernels::REDUCE)?;
            // SAFETY: every element is written by the kernel before it is read.
            let dst = unsafe { dev.alloc::<T>(n)? };
            let mut b = func.builder();
            b.arg(&src);
            b.arg(&dst);
            candle_core::builder_arg!(b, cols as i32);
            // SAFETY: the argument list matches the kernel's signature; `src` and `dst` hold
            // `rows * cols` elements.
            unsafe { b.launch(cfg) }.w()?;
            Ok(dst)
        }
    }

    /// The forward on the GPU: f32/f64 directly; a 16-bit input upcast to f32 first and the
    /// probabilities rounded back once (the temporaries are freed before the node returns).
    pub(super) fn softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let shape = l.shape().clone();
        let run = |s: &CudaStorage, l: &Layout| -> Result<CudaStorage> {
            Ok(CudaStorage {
                slice: Rows.map(&s.slice, &dev, l)?,
                device: dev.clone(),
            })
        };
        match s.dtype() {
            DType::F32 | DType::F64 => Ok((run(s, l)?, shape)),
            dtype @ (DType::BF16 | DType::F16) => {
                let contiguous = Layout::contiguous(&shape);
                let wide = s.to_dtype(l, DType::F32)?;
                let p = run(&wide, &contiguous)?;
                Ok((p.to_dtype(&contiguous, dtype)?, shape))
            }
            other => bail!("softmax: unsupported dtype {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn ramp(dims: &[usize], dtype: DType) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|i| 3.0 * (i as f64 * 0.731).sin()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn values_equal_the_composed_form_in_every_float_dtype() {
        for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
            // A masked entry (-inf) and a non-contiguous input.
            let x = ramp(&[3, 7, 5], dtype).transpose(1, 2).unwrap();
            let mask = Tensor::from_vec(
                vec![0f64, 0., f64::NEG_INFINITY, 0., 0., 0., 0.],
                7,
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let x = x.broadcast_add(&mask).unwrap();
            let got = softmax_last(&x).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = crate::layers::softmax_last(&x).unwrap();
            let (g, w) = (values(&got), values(&want));
            // f64/f32: the same sums up to their order; 16-bit: the same f32 value rounded
            // once (rows this short round alike; long rows can differ by an ulp where the two
            // summation orders straddle a rounding boundary).
            let tol = match dtype {
                DType::F64 => 1e-15,
                DType::F32 => 1e-7,
                _ => 0.0,
            };
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!((a - b).abs() <= tol, "{dtype:?} [{i}]: {a} vs {b}");
            }
            assert!(
                g.iter().skip(2).step_by(7).all(|&p| p == 0.0),
                "{dtype:?}: masked"
            );
        }
    }

    #[test]
    fn parts_of_whole_rows_give_the_one_node_values_and_gradients() {
        let x = Var::from_tensor(&ramp(&[3, 5, 7], DType::F64)).unwrap();
        let w = ramp(&[3, 5, 7], DType::F64).cos().unwrap();
        // 20 elements per part: 2 rows of 7 (the last part 1 row); 3: one row per part.
        for max in [20, 3, 1000] {
            let got = in_parts(x.as_tensor(), max).unwrap();
            let want = softmax_last(x.as_tensor()).unwrap();
            assert_eq!(values(&got), values(&want), "max {max}");
            let g = (got * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let h = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (g, h) = (g.get(x.as_tensor()).unwrap(), h.get(x.as_tensor()).unwrap());
            assert_eq!(values(g), values(h), "max {max}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = Var::from_tensor(&ramp(&[2, 3, 6], DType::F64)).unwrap();
        let w = ramp(&[2, 3, 6], DType::F64).cos().unwrap();
        let f = |x: &Tensor| (softmax_last(x).unwrap() * &w).unwrap().sum_all().unwrap();
        let g = f(x.as_tensor()).backward().unwrap();
        let g = values(g.get(x.as_tensor()).unwrap());
        let base = values(x.as_tensor());
        let h = 1e-6;
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] += h;
            let up = f(&Tensor::from_vec(v.clone(), (2, 3, 6), &Device::Cpu).unwrap());
            v[i] -= 2.0 * h;
            let down = f(&Tensor::from_vec(v, (2, 3, 6), &Device::Cpu).unwrap());
            let fd =
                (up.to_scalar::<f64>().unwrap() - down.to_scalar::<f64>().unwrap()) / (2.0 * h);
            assert!((g[i] - fd).abs() < 1e-8, "[{i}]: {} vs {fd}", g[i]);
        }
    }

    #[test]
    fn bf16_gradient_is_the_f32_gradient_rounded() {
        let x = ramp(&[4, 9], DType::BF16);
        let gy = ramp(&[4, 9], DType::BF16).cos().unwrap();
        let grad = |x: &Tensor| {
            let v = Var::from_tensor(x).unwrap();
            let g = (softmax_last(v.as_tensor()).unwrap() * &gy.to_dtype(x.dtype()).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            values(g.get(v.as_tensor()).unwrap())
        };
        let (got, want) = (grad(&x), grad(&x.to_dtype(DType::F32).unwrap()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // The f32 probabilities vs bf16-rounded ones, then one rounding: a few bf16 ulps.
            assert!(
                (a - b).abs() <= 4.0 / 256.0 * b.abs() + 1e-3,
                "[{i}]: {a} vs {b}"
            );
        }
    }
}
