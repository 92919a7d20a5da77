//! [`Nccl`]: NCCL on one GPU per rank for the data, MPI for the control plane (feature `nccl`).
//!
//! Rank 0 creates the NCCL unique id and broadcasts it over MPI; every rank then joins the
//! NCCL communicator with the MPI rank and world, so the multi-rank logic (ranks, roots,
//! ordering, watchdog, abort) is the MPI backend's and is covered by the MPI tests. The GPU is
//! `local_rank % visible GPUs`; the CUDA driver already applies a pre-set
//! `CUDA_VISIBLE_DEVICES`, so a launcher that pins one GPU per task is respected.
//!
//! The [`Communicator`] methods take host slices and stage them through device memory;
//! [`Nccl::all_reduce_sum_device_f32`] reduces a device buffer without copies.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::ncclResult_t;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::communicator::{check_root, Backend, Communicator};
use crate::error::{Error, Result};
use crate::mpi_backend::Mpi;

/// The NCCL communicator (plus the MPI one it was bootstrapped from).
pub struct Nccl {
    // Field order is drop order: NCCL before the stream, MPI last.
    comm: Comm,
    stream: Arc<CudaStream>,
    ordinal: usize,
    device_name: String,
    mpi: Mpi,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("ordinal", &self.ordinal)
            .field("device_name", &self.device_name)
            .field("mpi", &self.mpi)
            .finish()
    }
}

/// An actionable explanation of an NCCL error code.
pub fn explain_nccl(error: &NcclError) -> String {
    let hint = match error.0 {
        ncclResult_t::ncclSystemError => {
            "a system call failed: most often /dev/shm is too small (containers: run with \
             --shm-size=1g or --ipc=host) or a network interface is unusable (set \
             NCCL_SOCKET_IFNAME); rerun with NCCL_DEBUG=INFO for details"
        }
        ncclResult_t::ncclUnhandledCudaError => {
            "a CUDA call failed inside NCCL: check that a GPU is visible (nvidia-smi, \
             CUDA_VISIBLE_DEVICES) and that the driver supports this CUDA version"
        }
        ncclResult_t::ncclInvalidUsage => {
            "invalid usage: two ranks on one GPU, or ranks calling collectives in different \
             orders or with different lengths"
        }
        ncclResult_t::ncclRemoteError => {
            "a peer rank failed or the network between ranks broke; check the other ranks' logs"
        }
        ncclResult_t::ncclInternalError => "NCCL internal error; rerun with NCCL_DEBUG=INFO",
        ncclResult_t::ncclInvalidArgument => "invalid argument passed to NCCL",
        _ => "rerun with NCCL_DEBUG=INFO for details",
    };
    format!("NCCL {:?}: {hint}", error.0)
}

fn explain_cuda(error: &DriverError) -> String {
    format!(
        "CUDA driver error {error}: check that a GPU is visible (nvidia-smi, \
         CUDA_VISIBLE_DEVICES={})",
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".to_owned())
    )
}

fn init_error(reason: String) -> Error {
    Error::Init {
        backend: "nccl",
        reason,
    }
}

impl Nccl {
    /// Initialise MPI, pick this rank's GPU and join the NCCL communicator.
    pub fn init(collective_timeout: Option<Duration>) -> Result<Self> {
        let mpi = Mpi::init(collective_timeout)?;
        // cudarc panics when libcuda / libnccl cannot be loaded: turn that into an error.
        let setup =
            catch_unwind(AssertUnwindSafe(|| Self::open_device(&mpi))).map_err(|_| {
                init_error(
                    "cannot load the CUDA driver or NCCL library (libcuda.so.1, libnccl.so.2): \
                     install the NVIDIA driver and NCCL, or add them to LD_LIBRARY_PATH"
                        .to_owned(),
                )
            })??;
        let (stream, ordinal, device_name) = setup;
        let mut id_bytes = if mpi.rank() == 0 {
            let id = catch_unwind(Id::new)
                .map_err(|_| init_error("cannot load NCCL (libnccl.so.2)".to_owned()))?
                .map_err(|e| init_error(explain_nccl(&e)))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        mpi.broadcast_bytes(&mut id_bytes, 0)?;
        let mut internal = [0 as std::os::raw::c_char; 128];
        if id_bytes.len() != internal.len() {
            return Err(init_error(format!(
                "received a {}-byte NCCL id, expected {}",
                id_bytes.len(),
                internal.len()
            )));
        }
        for (dst, src) in internal.iter_mut().zip(&id_bytes) {
            *dst = *src as std::os::raw::c_char;
        }
        let comm = Comm::from_rank(
            Arc::clone(&stream),
            mpi.rank(),
            mpi.world_size(),
            Id::uninit(internal),
        )
        .map_err(|e| init_error(explain_nccl(&e)))?;
        Ok(Self {
            comm,
            stream,
            ordinal,
            device_name,
            mpi,
        })
    }

    fn open_device(mpi: &Mpi) -> Result<(Arc<CudaStream>, usize, String)> {
        let count = CudaContext::device_count().map_err(|e| init_error(explain_cuda(&e)))?;
        let count = usize::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(init_error(format!(
                "no GPU visible (CUDA_VISIBLE_DEVICES={})",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".to_owned())
            )));
        }
        if mpi.local_world_size() > count {
            return Err(init_error(format!(
                "{} ranks on host {} but only {count} visible GPU(s); NCCL needs one GPU per \
                 rank: start fewer ranks per node or use the mpi backend",
                mpi.local_world_size(),
                mpi.host()
            )));
        }
        let ordinal = mpi.local_rank() % count;
        let ctx = CudaContext::new(ordinal).map_err(|e| init_error(explain_cuda(&e)))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_owned());
        Ok((ctx.default_stream(), ordinal, name))
    }

    /// The CUDA stream NCCL runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The MPI control-plane communicator.
    pub fn mpi(&self) -> &Mpi {
        &self.mpi
    }

    /// In-place sum of a device buffer over all ranks (no host staging); synchronises.
    pub fn all_reduce_sum_device_f32(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        let collective = "all_reduce_sum_device_f32";
        let _armed = self.mpi.guard(collective);
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(|e| self.failed(collective, explain_nccl(&e)))?;
        self.stream
            .synchronize()
            .map_err(|e| self.failed(collective, explain_cuda(&e)))
    }

    fn all_reduce_host<T: DeviceRepr + NcclType>(
        &self,
        collective: &'static str,
        buf: &mut [T],
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let _armed = self.mpi.guard(collective);
        let cuda = |e: DriverError| self.failed(collective, explain_cuda(&e));
        let mut device = self.stream.clone_htod(buf).map_err(cuda)?;
        self.comm
            .all_reduce_in_place(&mut device, &ReduceOp::Sum)
            .map_err(|e| self.failed(collective, explain_nccl(&e)))?;
        self.stream.memcpy_dtoh(&device, buf).map_err(cuda)?;
        self.stream.synchronize().map_err(cuda)
    }

    fn failed(&self, collective: &'static str, reason: String) -> Error {
        Error::Collective {
            collective,
            rank: self.mpi.rank(),
            step: self.mpi.step(),
            reason,
        }
    }
}

impl Communicator for Nccl {
    fn backend(&self) -> Backend {
        Backend::Nccl
    }
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn local_world_size(&self) -> usize {
        self.mpi.local_world_size()
    }
    fn host(&self) -> String {
        self.mpi.host()
    }
    fn device(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.device_name)
    }
    fn set_step(&self, step: u64) {
        self.mpi.set_step(step);
    }
    fn step(&self) -> u64 {
        self.mpi.step()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_host("all_reduce_sum_f32", buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce_host("all_reduce_sum_f64", buf)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        // Control-plane data: small, variable length, stays on MPI.
        self.mpi.broadcast_bytes(buf, root)
    }
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        let collective = "broadcast_f64";
        check_root(collective, root, self.rank(), self.world_size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let _armed = self.mpi.guard(collective);
        let cuda = |e: DriverError| self.failed(collective, explain_cuda(&e));
        let mut device = self.stream.clone_htod(buf).map_err(cuda)?;
        self.comm
            .broadcast_in_place(&mut device, root as i32)
            .map_err(|e| self.failed(collective, explain_nccl(&e)))?;
        self.stream.memcpy_dtoh(&device, buf).map_err(cuda)?;
        self.stream.synchronize().map_err(cuda)
    }
    fn barrier(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.failed("barrier", explain_cuda(&e)))?;
        self.mpi.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
