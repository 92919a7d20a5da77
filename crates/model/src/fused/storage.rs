//! Access to the contiguous host data of a custom op's arguments.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous slice a layout selects, or an error naming the op.
/// `shape` with its last dimension replaced by `last` (a product's output shape).
pub(super) fn with_last_dim(shape: &candle_core::Shape, last: usize) -> candle_core::Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(l) = dims.last_mut() {
        *l = last;
    }
    candle_core::Shape::from(dims)
}

pub(super) fn slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// The `T` data of a CPU storage with its layout applied (error naming `op` for another dtype
/// or a non-contiguous layout).
pub(super) fn typed<'a, T: Float>(s: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    slice(T::cpu_storage_as_slice(s)?, layout, op)
}

/// The `T` data of a tensor's storage guard (from `Tensor::storage_and_layout`), which must be
/// on the CPU.
pub(super) fn typed_tensor<'a, T: Float>(
    s: &'a candle_core::Storage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match s {
        candle_core::Storage::Cpu(c) => typed(c, layout, op),
        _ => bail!("{op}: tensor is not on the CPU"),
    }
}

/// The f32 or f64 data of a storage with its layout applied.
pub(super) enum Host<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// Borrows a storage as [`Host`] data.
pub(super) fn host<'a>(s: &'a CpuStorage, layout: &Layout, op: &str) -> Result<Host<'a>> {
    match s {
        CpuStorage::F32(v) => Ok(Host::F32(slice(v, layout, op)?)),
        CpuStorage::F64(v) => Ok(Host::F64(slice(v, layout, op)?)),
        other => bail!("{op}: unsupported dtype {:?}", other.dtype()),
    }
}

/// A kernel of two same-length-agnostic host arguments, written once for f32 and f64.
pub(super) trait Kernel2 {
    /// The result for contiguous arguments `a` and `b` of one dtype.
    fn apply<T: Float>(&self, a: &[T], b: &[T]) -> Vec<T>;
}

/// A kernel of three host arguments, written once for f32 and f64.
pub(super) trait Kernel3 {
    /// The result for contiguous arguments `a`, `b` and `c` of one dtype.
    fn apply<T: Float>(&self, a: &[T], b: &[T], c: &[T]) -> Vec<T>;
}

/// Runs `k` on two CPU storages of the same float dtype (error naming `op` otherwise).
pub(super) fn run2<K: Kernel2>(
    k: &K,
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(k.apply(slice(a, l1, op)?, slice(b, l2, op)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(k.apply(slice(a, l1, op)?, slice(b, l2, op)?))
        }
        _ => bail!("{op}: mixed or unsupported dtypes"),
    })
}

/// Runs `k` on three CPU storages of the same float dtype (error naming `op` otherwise).
pub(super) fn run3<K: Kernel3>(
    k: &K,
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => {
            CpuStorage::F32(k.apply(slice(a, l1, op)?, slice(b, l2, op)?, slice(c, l3, op)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => {
            CpuStorage::F64(k.apply(slice(a, l1, op)?, slice(b, l2, op)?, slice(c, l3, op)?))
        }
        _ => bail!("{op}: mixed or unsupported dtypes"),
    })
}

/// The float types the kernels are written for (f32 and f64).
pub(super) trait Float:
    num_traits::Float + candle_core::WithDType + std::iter::Sum + Send + Sync + Copy + 'static
{
    /// Converts from f64 (tables, scales).
    fn of(x: f64) -> Self;

    /// `e^x`: [`exp_f32`] for f32 (vectorisable, within 2 ulp), the libm `exp` for f64.
    fn exp_fast(self) -> Self;
}

impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }

    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
}

impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }

    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 without a libm call, so that loops over it vectorise: `x = n ln2 + r` with
/// `|r| <= ln2 / 2` (Cody-Waite split of ln2), `e^r` by its degree-7 Taylor polynomial
/// (truncation error below 2e-9 relative), times `2^n` built in the exponent bits. Inputs are
/// clamped to `[-87.3, 88.0]`, so the result is never subnormal or infinite: `e^-100` gives
/// 1.2e-38 instead of 3.7e-44 (irrelevant next to the softmax sums of 1 or more it feeds).
/// Measured against f64 `exp` over `[-87, 88]` in `crates/model/tests/fused.rs`: within 2 ulp.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `sum_j e^(x_j - shift)` over `xs`, in eight interleaved partial sums (so it vectorises;
/// the order is fixed, so the result is deterministic).
pub(super) fn sum_exp<T: Float>(xs: &[T], shift: T) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += (c[k] - shift).exp_fast();
        }
    }
    let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
    for &v in rest {
        s += (v - shift).exp_fast();
    }
    s
}

/// `sum_j x_j y_j` in eight interleaved partial sums (vectorises, fixed order; more accurate
/// in f32 than one running sum over thousands of terms).
pub(super) fn dot<T: Float>(xs: &[T], ys: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (cx, cy) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
    for (&a, &b) in rx.iter().zip(ry) {
        s += a * b;
    }
    s
}

/// The largest element (`-inf` for an empty slice).
pub(super) fn max<T: Float>(xs: &[T]) -> T {
    xs.iter()
        .copied()
        .fold(T::neg_infinity(), num_traits::Float::max)
}

/// A raw pointer that may cross threads; see [`for_rows`] for why the use is sound.
struct SharedMut<T>(*mut T);
// SAFETY: only used by `for_rows`, which hands every thread disjoint rows.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

/// Runs `f(r, row)` for every `row_len`-long row `r` of `out`, spread over candle's CPU thread
/// pool (the one its own ops use, so no second pool competes for the cores). Which thread runs
/// which row varies; each row's result depends only on `r`, so results are deterministic.
///
/// A panic in `f` is caught on the worker and re-raised here, after the pool is released:
/// unwinding through the pool would poison its lock and break every later candle op.
pub(super) fn for_rows<T: Send, F: Fn(usize, &mut [T]) + Sync>(
    out: &mut [T],
    row_len: usize,
    f: F,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let base = SharedMut(out.as_mut_ptr());
    let base = &base;
    let panicked: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>> =
        std::sync::Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for r in range {
                // SAFETY: `execute_chunked` hands out disjoint ranges of `0..rows`, so row `r`
                // (inside `out`, as `r < rows`) is borrowed by exactly one thread.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(base.0.add(r * row_len), row_len) };
                f(r, row);
            }
        }));
        if let Err(payload) = run {
            if let Ok(mut slot) = panicked.lock() {
                slot.get_or_insert(payload);
            }
        }
    });
    if let Some(payload) = panicked.into_inner().ok().flatten() {
        std::panic::resume_unwind(payload);
    }
}
