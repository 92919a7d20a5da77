//! Bucketed all-reduce of named candle tensors (gradients).
//!
//! Tensors are visited in name order (never in HashMap order, which differs between
//! processes), flattened into one buffer per reduction precision on their own device and
//! all-reduced in buckets of at most [`BucketOptions::bucket_bytes`] through the backend's
//! one primitive, [`Communicator::all_reduce_sum_tensor`] (host staging for MPI, NCCL on the
//! CUDA buffer itself); a tensor larger than a bucket simply spans several. Results are
//! written back with each tensor's shape, dtype and device. `f64` tensors are reduced in
//! `f64`; `f32`, `f16` and `bf16` tensors in `f32` (gradients are summed in f32 on every
//! backend, so N ranks give the same sums whatever the parameters' dtype).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::communicator::Communicator;
use crate::error::{Error, Result};

/// Default bucket size: 25 MiB (PyTorch DDP's default).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// How [`all_reduce_named`] batches and post-processes the reduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketOptions {
    /// Largest payload of one all-reduce call, in bytes (at least one element is sent).
    pub bucket_bytes: usize,
    /// Divide the sums by the world size (gradient averaging) instead of returning sums.
    pub average: bool,
    /// Verify with one small extra all-reduce per call that every rank passed the same
    /// names, shapes and dtypes; a mismatch otherwise corrupts data silently or hangs.
    pub check_layout: bool,
}

impl Default for BucketOptions {
    fn default() -> Self {
        Self {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            average: false,
            check_layout: true,
        }
    }
}

/// Precision a tensor is reduced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    F32,
    F64,
}

fn precision(collective: &'static str, rank: usize, name: &str, t: &Tensor) -> Result<Precision> {
    match t.dtype() {
        DType::F64 => Ok(Precision::F64),
        DType::F32 | DType::F16 | DType::BF16 => Ok(Precision::F32),
        other => Err(Error::InvalidArgument {
            collective,
            rank,
            reason: format!(
                "tensor `{name}` has dtype {other:?}; only f16, bf16, f32 and f64 are reduced"
            ),
        }),
    }
}

fn tensor_err(name: &str) -> impl FnOnce(candle_core::Error) -> Error + '_ {
    move |source| Error::Tensor {
        name: name.to_owned(),
        source,
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hasher is randomly seeded per process).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Compare a fingerprint of the sorted layout across ranks: every component is an integer
/// below 2^26, so the f64 sums are exact for worlds up to 2^27 ranks.
fn check_layout(comm: &dyn Communicator, sorted: &[(&str, &Tensor)]) -> Result<()> {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut elements = 0u64;
    for (name, t) in sorted {
        fnv1a(&mut hash, name.as_bytes());
        fnv1a(&mut hash, &[0]);
        for d in t.dims() {
            fnv1a(&mut hash, &(*d as u64).to_le_bytes());
        }
        fnv1a(&mut hash, t.dtype().as_str().as_bytes());
        elements += t.elem_count() as u64;
    }
    const LOW: u64 = (1 << 26) - 1;
    let own = [
        sorted.len() as f64,
        (elements & LOW) as f64,
        (hash & LOW) as f64,
        ((hash >> 26) & LOW) as f64,
    ];
    let mut sum = own;
    comm.all_reduce_sum_f64(&mut sum)?;
    let n = comm.world_size() as f64;
    let labels = [
        "tensor count",
        "element count",
        "name/shape hash",
        "name/shape hash",
    ];
    for ((s, o), label) in sum.iter().zip(own).zip(labels) {
        if *s != o * n {
            return Err(Error::LayoutMismatch {
                rank: comm.rank(),
                step: comm.step(),
                reason: format!("{label} differs"),
            });
        }
    }
    Ok(())
}

/// Sum (or average) each named tensor over all ranks, in place. Every rank must pass the same
/// names with the same shapes and dtypes, in any order; names must be unique.
pub fn all_reduce_named(
    comm: &dyn Communicator,
    tensors: &mut [(String, Tensor)],
    options: &BucketOptions,
) -> Result<()> {
    const WHAT: &str = "all_reduce_named";
    let rank = comm.rank();
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.cmp(&tensors[b].0));
    if let Some(pair) = order
        .windows(2)
        .find(|w| tensors[w[0]].0 == tensors[w[1]].0)
    {
        return Err(Error::InvalidArgument {
            collective: WHAT,
            rank,
            reason: format!("tensor name `{}` appears twice", tensors[pair[0]].0),
        });
    }
    let sorted: Vec<(&str, &Tensor)> = order
        .iter()
        .map(|&i| (tensors[i].0.as_str(), &tensors[i].1))
        .collect();
    let mut precisions = Vec::with_capacity(sorted.len());
    for (name, t) in &sorted {
        precisions.push(precision(WHAT, rank, name, t)?);
    }
    if options.check_layout && comm.world_size() > 1 {
        check_layout(comm, &sorted)?;
    }
    let f32_results = reduce_group(comm, &sorted, &precisions, Precision::F32, options)?;
    let f64_results = reduce_group(comm, &sorted, &precisions, Precision::F64, options)?;
    let mut results: Vec<Option<Tensor>> = vec![None; sorted.len()];
    for (pos, t) in f32_results.into_iter().chain(f64_results) {
        results[pos] = Some(t);
    }
    for (pos, &index) in order.iter().enumerate() {
        if let Some(t) = results[pos].take() {
            tensors[index].1 = t;
        }
    }
    Ok(())
}

/// Flatten the tensors of one precision (in the given, sorted order) into one buffer on their
/// device, reduce it bucket by bucket with [`Communicator::all_reduce_sum_tensor`], and return
/// `(position in sorted, reduced tensor)`. A tensor that spans buckets is stitched back from
/// its pieces; the others are views of their bucket.
fn reduce_group(
    comm: &dyn Communicator,
    sorted: &[(&str, &Tensor)],
    precisions: &[Precision],
    which: Precision,
    options: &BucketOptions,
) -> Result<Vec<(usize, Tensor)>> {
    let members: Vec<usize> = (0..sorted.len())
        .filter(|&i| precisions[i] == which)
        .collect();
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let dtype = match which {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let mut parts = Vec::with_capacity(members.len());
    for &i in &members {
        let (name, t) = sorted[i];
        parts.push(
            t.to_dtype(dtype)
                .and_then(|t| t.flatten_all())
                .map_err(tensor_err(name))?,
        );
    }
    let flat = Tensor::cat(&parts, 0).map_err(tensor_err(sorted[members[0]].0))?;
    drop(parts);
    let total = flat.elem_count();
    let bucket_elems = (options.bucket_bytes / dtype.size_in_bytes()).max(1);
    let world = comm.world_size();
    let mut buckets = Vec::with_capacity(total.div_ceil(bucket_elems));
    for start in (0..total).step_by(bucket_elems) {
        let len = bucket_elems.min(total - start);
        let chunk = flat.narrow(0, start, len).map_err(tensor_err("bucket"))?;
        let mut reduced = comm.all_reduce_sum_tensor(&chunk)?;
        if options.average && world > 1 {
            reduced = reduced
                .affine(1.0 / world as f64, 0.0)
                .map_err(tensor_err("bucket"))?;
        }
        buckets.push(reduced);
    }
    drop(flat);
    let mut out = Vec::with_capacity(members.len());
    let mut offset = 0;
    for &i in &members {
        let (name, t) = sorted[i];
        let n = t.elem_count();
        let reduced = if n == 0 {
            t.zeros_like()
        } else {
            elements(&buckets, bucket_elems, offset, n)
                .and_then(|r| r.reshape(t.shape()))
                .and_then(|r| r.to_dtype(t.dtype()))
        }
        .map_err(tensor_err(name))?;
        offset += n;
        out.push((i, reduced));
    }
    Ok(out)
}

/// Elements `start..start + len` of the concatenation of `buckets` (each `bucket_elems` long but
/// the last), as one 1-D tensor: a view when they lie in one bucket.
fn elements(
    buckets: &[Tensor],
    bucket_elems: usize,
    start: usize,
    len: usize,
) -> candle_core::Result<Tensor> {
    let mut pieces = Vec::new();
    let mut at = start;
    let end = start + len;
    while at < end {
        let (b, within) = (at / bucket_elems, at % bucket_elems);
        let take = (bucket_elems - within).min(end - at);
        pieces.push(buckets[b].narrow(0, within, take)?);
        at += take;
    }
    if pieces.len() == 1 {
        Ok(pieces.swap_remove(0))
    } else {
        Tensor::cat(&pieces, 0)
    }
}

/// [`all_reduce_named`] over a map (the map's iteration order does not matter).
pub fn all_reduce_map(
    comm: &dyn Communicator,
    tensors: &mut HashMap<String, Tensor>,
    options: &BucketOptions,
) -> Result<()> {
    let mut list: Vec<(String, Tensor)> = tensors.drain().collect();
    let result = all_reduce_named(comm, &mut list, options);
    tensors.extend(list);
    result
}

/// All-reduce the gradients of named variables (e.g. from `VarMap::data()`), in place in
/// `grads`. A variable without a gradient on this rank contributes zeros, so every rank sends
/// the same layout; afterwards every variable has a gradient.
pub fn all_reduce_grads(
    comm: &dyn Communicator,
    vars: &[(String, Var)],
    grads: &mut GradStore,
    options: &BucketOptions,
) -> Result<()> {
    let mut list = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let grad = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => var.as_tensor().zeros_like().map_err(tensor_err(name))?,
        };
        list.push((name.clone(), grad));
    }
    all_reduce_named(comm, &mut list, options)?;
    for ((_, var), (_, grad)) in vars.iter().zip(list) {
        grads.insert(var.as_tensor(), grad);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Local;
    use candle_core::Device;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn world_of_one_keeps_values_shapes_and_dtypes() {
        let comm = Local::new();
        let mut list = vec![
            ("b".to_owned(), t(&[1., 2., 3., 4., 5., 6.], &[2, 3])),
            ("a".to_owned(), t(&[7.], &[1]).to_dtype(DType::F64).unwrap()),
            (
                "c".to_owned(),
                t(&[0.5, -1.5], &[2]).to_dtype(DType::BF16).unwrap(),
            ),
        ];
        let opts = BucketOptions {
            bucket_bytes: 8,
            average: true,
            check_layout: true,
        };
        all_reduce_named(&comm, &mut list, &opts).unwrap();
        assert_eq!(list[0].0, "b");
        assert_eq!(list[0].1.dims(), [2, 3]);
        assert_eq!(
            list[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1., 2., 3., 4., 5., 6.]
        );
        assert_eq!(list[1].1.dtype(), DType::F64);
        assert_eq!(list[1].1.to_vec1::<f64>().unwrap(), [7.0]);
        assert_eq!(list[2].1.dtype(), DType::BF16);
        let c = list[2]
            .1
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(c, [0.5, -1.5]);
    }

    /// Two identical ranks, seen from one: every sum doubles; records each host call's length.
    struct Twins {
        calls: std::cell::RefCell<Vec<usize>>,
    }

    impl Communicator for Twins {
        fn backend(&self) -> crate::Backend {
            crate::Backend::Local
        }
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn local_rank(&self) -> usize {
            0
        }
        fn local_world_size(&self) -> usize {
            2
        }
        fn host(&self) -> String {
            "twins".to_owned()
        }
        fn device(&self) -> String {
            "cpu".to_owned()
        }
        fn set_step(&self, _step: u64) {}
        fn step(&self) -> u64 {
            0
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            self.calls.borrow_mut().push(buf.len());
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn broadcast_bytes(&self, _buf: &mut Vec<u8>, _root: usize) -> Result<()> {
            Ok(())
        }
        fn broadcast_f64(&self, _buf: &mut [f64], _root: usize) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
    }

    #[test]
    fn buckets_split_and_stitch_tensors_across_bucket_boundaries() {
        let comm = Twins {
            calls: Default::default(),
        };
        // Name order: a (5 elements), b (0), c (2x3 transposed view: not contiguous), d (4).
        let c = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]).t().unwrap();
        let mut list = vec![
            ("d".to_owned(), t(&[7., 8., 9., 10.], &[4])),
            ("c".to_owned(), c.clone()),
            ("b".to_owned(), t(&[], &[0, 3])),
            ("a".to_owned(), t(&[0.25, 0.5, 0.75, 1.0, 1.25], &[5])),
        ];
        let opts = BucketOptions {
            bucket_bytes: 4 * 4,
            average: false,
            check_layout: false,
        };
        all_reduce_named(&comm, &mut list, &opts).unwrap();
        // 5 + 0 + 6 + 4 = 15 f32 in buckets of 4.
        assert_eq!(*comm.calls.borrow(), [4, 4, 4, 3]);
        let values = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&list[0].1), [14., 16., 18., 20.]);
        assert_eq!(list[1].1.dims(), [3, 2]);
        let want_c: Vec<f32> = values(&c).iter().map(|x| x * 2.0).collect();
        assert_eq!(values(&list[1].1), want_c);
        assert_eq!(list[2].1.dims(), [0, 3]);
        assert_eq!(values(&list[3].1), [0.5, 1.0, 1.5, 2.0, 2.5]);
        // Averaging over the two ranks gives the inputs back.
        let mut list = vec![("a".to_owned(), t(&[0.25, 0.5, 0.75], &[3]))];
        let opts = BucketOptions {
            average: true,
            ..opts
        };
        all_reduce_named(&comm, &mut list, &opts).unwrap();
        assert_eq!(values(&list[0].1), [0.25, 0.5, 0.75]);
    }

    #[test]
    fn host_tensor_reduction_keeps_dtype_and_sums_16_bit_floats_in_f32() {
        let comm = Twins {
            calls: Default::default(),
        };
        let x = t(&[1.5, -3.0, 0.1], &[3]).to_dtype(DType::BF16).unwrap();
        let sum = comm.all_reduce_sum_tensor(&x).unwrap();
        assert_eq!(sum.dtype(), DType::BF16);
        let want = x.to_dtype(DType::F32).unwrap().affine(2.0, 0.0).unwrap();
        let got = sum.to_dtype(DType::F32).unwrap();
        assert_eq!(
            got.to_vec1::<f32>().unwrap(),
            want.to_vec1::<f32>().unwrap()
        );
        let ids = Tensor::from_slice(&[1u32], 1, &Device::Cpu).unwrap();
        let err = comm.all_reduce_sum_tensor(&ids).unwrap_err();
        assert!(err.to_string().contains("dtype U32"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let comm = Local::new();
        let mut list = vec![
            ("w".to_owned(), t(&[1.], &[1])),
            ("w".to_owned(), t(&[2.], &[1])),
        ];
        let err = all_reduce_named(&comm, &mut list, &BucketOptions::default()).unwrap_err();
        assert!(err.to_string().contains("`w` appears twice"), "{err}");
    }

    #[test]
    fn integer_tensors_are_rejected() {
        let comm = Local::new();
        let ids = Tensor::from_slice(&[1u32, 2], 2, &Device::Cpu).unwrap();
        let mut list = vec![("ids".to_owned(), ids)];
        let err = all_reduce_named(&comm, &mut list, &BucketOptions::default()).unwrap_err();
        assert!(err.to_string().contains("dtype U32"), "{err}");
    }

    #[test]
    fn missing_gradients_become_zeros() {
        let comm = Local::new();
        let w = Var::from_tensor(&t(&[1., 2.], &[2])).unwrap();
        let v = Var::from_tensor(&t(&[3.], &[1])).unwrap();
        let loss = (w.as_tensor() * 3.0).unwrap().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = vec![("w".to_owned(), w.clone()), ("v".to_owned(), v.clone())];
        all_reduce_grads(&comm, &vars, &mut grads, &BucketOptions::default()).unwrap();
        let gw = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gw, [3.0, 3.0]);
        let gv = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gv, [0.0]);
    }
}
