//! The [`Communicator`] trait every backend implements, and small shared pieces.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Which engine moves the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A world of one process; collectives are identities.
    Local,
    /// MPI (rsmpi over the system's Open MPI / MPICH), host memory.
    Mpi,
    /// NCCL on a GPU for the data, MPI for the control plane.
    Nccl,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Mpi => "mpi",
            Backend::Nccl => "nccl",
        })
    }
}

/// A group of cooperating processes (ranks) that run the same program.
///
/// All collectives are blocking and must be called by every rank in the same order with the
/// same lengths (and, for broadcasts, the same root). A rank that cannot continue must call
/// [`Communicator::abort`] so that no other rank is left waiting forever.
pub trait Communicator {
    /// The engine behind this communicator.
    fn backend(&self) -> Backend;
    /// This process's rank in the world, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of processes in the world (>= 1).
    fn world_size(&self) -> usize;
    /// Rank among the processes on this host (from MPI's shared-memory split).
    fn local_rank(&self) -> usize;
    /// Number of processes on this host.
    fn local_world_size(&self) -> usize;
    /// Host name of this process, for diagnostics.
    fn host(&self) -> String;
    /// Device the data collectives run on, e.g. `cpu` or `cuda:0 (NVIDIA H200)`.
    fn device(&self) -> String;
    /// Record the current training step; it is named in errors and watchdog messages.
    fn set_step(&self, step: u64);
    /// The step last given to [`Communicator::set_step`] (0 initially).
    fn step(&self) -> u64;
    /// Element-wise sum of `buf` over all ranks, written back into `buf` on every rank.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum of `buf` over all ranks, written back into `buf` on every rank.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Element-wise sum over all ranks of one buffer held in a tensor of any shape, `f32`,
    /// `bf16` or `f64`, on this rank's device: the primitive the bucketed all-reduce
    /// ([`crate::all_reduce_named`]) calls once per bucket. Returns the sum with the input's
    /// shape, dtype and device; every rank passes the same element count and dtype.
    ///
    /// The default stages through host memory with [`Communicator::all_reduce_sum_f32`] /
    /// [`Communicator::all_reduce_sum_f64`] (`bf16` and `f16` are summed in `f32` and rounded
    /// once). NCCL overrides it for CUDA tensors: the device buffer is reduced by NCCL on the
    /// tensor's own CUDA stream, without host copies, in the tensor's dtype.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for other dtypes, [`Error::Tensor`] when a copy fails, and
    /// the backend's errors.
    fn all_reduce_sum_tensor(&self, buf: &Tensor) -> Result<Tensor> {
        host_all_reduce_tensor(self, buf)
    }
    /// Replace `buf` on every rank by the bytes of `root`'s `buf` (any length; receivers'
    /// buffers are resized).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Replace `buf` on every rank by `root`'s `buf`; all ranks pass the same length.
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()>;
    /// Block until every rank has reached the barrier.
    fn barrier(&self) -> Result<()>;
    /// Terminate every rank of the job with exit status `code`. Never returns.
    fn abort(&self, code: i32) -> !;
}

/// Refuses a dtype the tensor collectives do not reduce (every backend reduces f16, bf16, f32
/// and f64).
pub(crate) fn check_float(collective: &'static str, rank: usize, dtype: DType) -> Result<()> {
    match dtype {
        DType::F64 | DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(Error::InvalidArgument {
            collective,
            rank,
            reason: format!("dtype {other:?}; only f16, bf16, f32 and f64 are reduced"),
        }),
    }
}

/// One text line from every rank, in rank order, on every rank (one `broadcast_bytes` per
/// rank: for start-up reports and checks, not the training step). Every rank must call it at
/// the same point.
///
/// # Errors
/// A failed broadcast.
pub fn gather_lines(comm: &dyn Communicator, own: &str) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(comm.world_size());
    for root in 0..comm.world_size() {
        let mut buf = if root == comm.rank() {
            own.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut buf, root)?;
        lines.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(lines)
}

/// [`Communicator::all_reduce_sum_tensor`] through host memory: copy out (16-bit floats as
/// `f32`), sum with the host-slice collective, copy back in the input's dtype and device.
pub fn host_all_reduce_tensor<C: Communicator + ?Sized>(comm: &C, buf: &Tensor) -> Result<Tensor> {
    const WHAT: &str = "all_reduce_sum_tensor";
    let err = |source| Error::Tensor {
        name: WHAT.to_owned(),
        source,
    };
    check_float(WHAT, comm.rank(), buf.dtype())?;
    // candle copies a device tensor's whole storage to the host before slicing out a view
    // (`Tensor::to_vec1`), and a bucket is a view into the flat gradient buffer: copy the view
    // out on the device first, so one bucket crosses PCIe, not the whole buffer per bucket.
    let owned;
    let buf = if buf.device().is_cpu() {
        buf
    } else {
        owned = buf.force_contiguous().map_err(err)?;
        &owned
    };
    let reduced = if buf.dtype() == DType::F64 {
        let mut host = buf
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(err)?;
        comm.all_reduce_sum_f64(&mut host)?;
        Tensor::from_vec(host, buf.shape(), buf.device()).map_err(err)?
    } else {
        let mut host = buf
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        comm.all_reduce_sum_f32(&mut host)?;
        Tensor::from_vec(host, buf.shape(), buf.device())
            .and_then(|t| t.to_dtype(buf.dtype()))
            .map_err(err)?
    };
    Ok(reduced)
}

/// Exit status used when a collective exceeds `collective_timeout_s`.
pub const EXIT_COLLECTIVE_TIMEOUT: i32 = 124;
/// Exit status used by [`exit_on_error`] and the panic hook.
pub const EXIT_RANK_FAILED: i32 = 1;

/// Unwrap `result`, or print the error with this rank's identity to stderr and abort the
/// whole job with [`EXIT_RANK_FAILED`], so that no peer waits forever on a dead rank.
pub fn exit_on_error<T, E: fmt::Display>(comm: &dyn Communicator, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => {
            eprintln!(
                "coba-dist: rank {} of {} failed at step {}: {err:#}; aborting the job",
                comm.rank(),
                comm.world_size(),
                comm.step()
            );
            comm.abort(EXIT_RANK_FAILED)
        }
    }
}

/// A step counter shared between a backend and its watchdog.
#[derive(Debug, Default)]
pub(crate) struct StepCounter(AtomicU64);

impl StepCounter {
    pub(crate) fn set(&self, step: u64) {
        self.0.store(step, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reject a root outside the world.
pub(crate) fn check_root(
    collective: &'static str,
    root: usize,
    rank: usize,
    world_size: usize,
) -> Result<()> {
    if root < world_size {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            collective,
            rank,
            reason: format!("root {root} is not a rank of a world of {world_size}"),
        })
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
