//! [`Nccl`]: NCCL on one GPU per rank for the data, MPI for the control plane (feature `nccl`).
//!
//! Rank 0 creates the NCCL unique id and broadcasts it over MPI; every rank then joins the
//! NCCL communicator with the MPI rank and world, so the multi-rank logic (ranks, roots,
//! ordering, watchdog, abort) is the MPI backend's and is covered by the MPI tests. The GPU is
//! `local_rank % visible GPUs`; the CUDA driver already applies a pre-set
//! `CUDA_VISIBLE_DEVICES`, so a launcher that pins one GPU per task is respected. The ranks'
//! GPU UUIDs are gathered at start: two ranks on one GPU (which NCCL refuses) stop the start
//! with both named, or under `runtime.backend = "auto"` leave the job on MPI.
//!
//! What runs where: device buffers (the gradient buckets, through
//! [`Communicator::all_reduce_sum_tensor`] on CUDA tensors, or [`Nccl::all_reduce_sum_slice`])
//! are reduced by NCCL on the CUDA stream that owns them (candle's stream), with no host copy
//! and no second CUDA context (cudarc and candle share the device's primary context). The NCCL
//! communicator is created on the first device collective, bound to that stream: every rank
//! reaches it at the same call, as collectives require. The host-slice collectives (per-task
//! loss sums and token counts, the weight broadcast, layout fingerprints: bytes, not
//! megabytes) stay on MPI.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::ncclResult_t;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::communicator::{Backend, Communicator};
use crate::error::{Error, Result};
use crate::mpi_backend::Mpi;

/// Where a rank's GPU is, and who else drives it ([`Nccl::place`]).
struct Placement {
    ordinal: usize,
    device_name: String,
    /// Why NCCL cannot run: two ranks on one GPU.
    shared: Option<String>,
}

/// The NCCL communicator (plus the MPI one it was bootstrapped from).
pub struct Nccl {
    // Field order is drop order: NCCL before MPI.
    comm: OnceLock<Comm>,
    id: [std::os::raw::c_char; 128],
    ordinal: usize,
    device_name: String,
    mpi: Mpi,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("ordinal", &self.ordinal)
            .field("device_name", &self.device_name)
            .field("joined", &self.comm.get().is_some())
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
    /// Initialise MPI, pick this rank's GPU, check that no other rank drives it (GPU UUIDs
    /// gathered over MPI) and share the NCCL id (the communicator itself is joined on the first
    /// device collective, on that buffer's stream).
    ///
    /// # Errors
    /// MPI, the CUDA driver or NCCL failing to start, no GPU visible, or two ranks on one GPU
    /// (both named, with the fixes).
    pub fn init(collective_timeout: Option<Duration>) -> Result<Self> {
        let mpi = Mpi::init(collective_timeout)?;
        let place = Self::place(&mpi)?;
        if let Some(clash) = place.shared {
            return Err(init_error(clash));
        }
        Self::join(mpi, place)
    }

    /// `runtime.backend = "auto"` on GPU ranks: NCCL when every rank has a GPU of its own,
    /// else the MPI communicator (gradients through host memory) and the reason, which rank 0
    /// prints. Every rank decides alike: the decision rests on the same gathered placement.
    ///
    /// # Errors
    /// MPI, the CUDA driver or NCCL failing to start.
    pub fn init_or_mpi(collective_timeout: Option<Duration>) -> Result<Box<dyn Communicator>> {
        let mpi = Mpi::init(collective_timeout)?;
        let place = Self::place(&mpi)?;
        Ok(match place.shared {
            Some(why) => {
                if mpi.rank() == 0 {
                    eprintln!("coba-dist: runtime.backend = \"auto\" uses MPI, not NCCL: {why}");
                }
                Box::new(mpi)
            }
            None => Box::new(Self::join(mpi, place)?),
        })
    }

    /// This rank's GPU (`local_rank % visible GPUs`) and, from every rank's host and GPU UUID
    /// gathered over MPI (one broadcast per rank, startup only), whether another rank drives
    /// the same GPU: NCCL refuses two ranks on one GPU. With one GPU pinned per task (Slurm's
    /// `--gpus-per-task=1`) every rank sees "its" GPU as device 0, and the UUIDs still differ.
    fn place(mpi: &Mpi) -> Result<Placement> {
        // cudarc panics when libcuda / libnccl cannot be loaded: turn that into an error.
        let (ordinal, device_name, visible, uuid) =
            catch_unwind(AssertUnwindSafe(|| Self::open_device(mpi))).map_err(|_| {
                init_error(
                    "cannot load the CUDA driver or NCCL library (libcuda.so.1, libnccl.so.2): \
                     install the NVIDIA driver and NCCL, or add them to LD_LIBRARY_PATH"
                        .to_owned(),
                )
            })??;
        let keys = crate::gather_lines(mpi, &format!("{} GPU-{uuid}", mpi.host()))?;
        let shared = crate::first_shared(&keys).map(|(a, b)| {
            format!(
                "ranks {a} and {b} both drive {} (each rank takes GPU local_rank % visible \
                 GPUs; rank {} sees {visible}): NCCL needs one GPU per rank; start at most as \
                 many ranks per host as GPUs, give each task its own GPU (srun \
                 --gpus-per-task=1), or set runtime.backend = \"mpi\"",
                keys[a],
                mpi.rank()
            )
        });
        Ok(Placement {
            ordinal,
            device_name,
            shared,
        })
    }

    /// Bootstraps the NCCL id over MPI (rank 0 creates it) for a placement without sharing.
    fn join(mpi: Mpi, place: Placement) -> Result<Self> {
        let Placement {
            ordinal,
            device_name,
            ..
        } = place;
        let mut id_bytes = if mpi.rank() == 0 {
            let id = catch_unwind(Id::new)
                .map_err(|_| init_error("cannot load NCCL (libnccl.so.2)".to_owned()))?
                .map_err(|e| init_error(explain_nccl(&e)))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        mpi.broadcast_bytes(&mut id_bytes, 0)?;
        let mut id = [0 as std::os::raw::c_char; 128];
        if id_bytes.len() != id.len() {
            return Err(init_error(format!(
                "received a {}-byte NCCL id, expected {}",
                id_bytes.len(),
                id.len()
            )));
        }
        for (dst, src) in id.iter_mut().zip(&id_bytes) {
            *dst = *src as std::os::raw::c_char;
        }
        Ok(Self {
            comm: OnceLock::new(),
            id,
            ordinal,
            device_name,
            mpi,
        })
    }

    /// `(ordinal, name, visible GPUs, UUID as hex)` of this rank's GPU.
    fn open_device(mpi: &Mpi) -> Result<(usize, String, usize, String)> {
        let count = CudaContext::device_count().map_err(|e| init_error(explain_cuda(&e)))?;
        let count = usize::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(init_error(format!(
                "no GPU visible (CUDA_VISIBLE_DEVICES={})",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".to_owned())
            )));
        }
        let ordinal = mpi.local_rank() % count;
        // The device's primary context: the one candle's CudaDevice retains too.
        let ctx = CudaContext::new(ordinal).map_err(|e| init_error(explain_cuda(&e)))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_owned());
        let uuid = ctx.uuid().map_err(|e| init_error(explain_cuda(&e)))?;
        let hex: String = uuid
            .bytes
            .iter()
            .map(|&b| format!("{:02x}", b as u8))
            .collect();
        Ok((ordinal, name, count, hex))
    }

    /// The MPI control-plane communicator.
    pub fn mpi(&self) -> &Mpi {
        &self.mpi
    }

    /// NCCL's version as `major.minor.patch` (e.g. `2.27.3`), from the loaded library.
    pub fn nccl_version() -> Result<String> {
        let code = catch_unwind(cudarc::nccl::result::get_nccl_version)
            .map_err(|_| init_error("cannot load NCCL (libnccl.so.2)".to_owned()))?
            .map_err(|e| init_error(explain_nccl(&e)))?;
        // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
        Ok(format!(
            "{}.{}.{}",
            code / 10000,
            (code % 10000) / 100,
            code % 100
        ))
    }

    /// The communicator, joined on `stream` the first time (a collective call: every rank
    /// gets here at the same point). Refuses a stream of another GPU, and a second stream:
    /// NCCL's kernels are ordered with the model's only on the stream it was joined on.
    fn comm_on(&self, collective: &'static str, stream: &Arc<CudaStream>) -> Result<&Comm> {
        if stream.context().ordinal() != self.ordinal {
            return Err(Error::InvalidArgument {
                collective,
                rank: self.mpi.rank(),
                reason: format!(
                    "buffer on cuda:{} but this rank's GPU is cuda:{}",
                    stream.context().ordinal(),
                    self.ordinal
                ),
            });
        }
        if self.comm.get().is_none() {
            let comm = Comm::from_rank(
                Arc::clone(stream),
                self.mpi.rank(),
                self.mpi.world_size(),
                Id::uninit(self.id),
            )
            .map_err(|e| self.failed(collective, explain_nccl(&e)))?;
            // Single-threaded use: nobody can have set it in between.
            let _ = self.comm.set(comm);
        }
        let comm = self
            .comm
            .get()
            .ok_or_else(|| self.failed(collective, "NCCL communicator missing".to_owned()))?;
        if comm.stream().cu_stream() != stream.cu_stream() {
            return Err(Error::InvalidArgument {
                collective,
                rank: self.mpi.rank(),
                reason: "buffer on another CUDA stream than the one NCCL joined on (one \
                         candle device per rank)"
                    .to_owned(),
            });
        }
        Ok(comm)
    }

    /// Sum over all ranks of the device buffer `send` (`len` elements from its start, all of
    /// it when `None`), into a new buffer on the same stream; NCCL runs on `stream`, which
    /// must be the stream that owns `send` (candle's device stream). Synchronises the stream,
    /// so that a hung peer trips the collective watchdog here rather than at a later copy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a buffer on another GPU or stream, [`Error::Collective`]
    /// when CUDA or NCCL fails (with a hint).
    pub fn all_reduce_sum_slice<
        T: NcclType + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
    >(
        &self,
        stream: &Arc<CudaStream>,
        send: &impl DevicePtr<T>,
    ) -> Result<CudaSlice<T>> {
        let collective = "all_reduce_sum_tensor";
        let comm = self.comm_on(collective, stream)?;
        let _armed = self.mpi.guard(collective);
        let cuda = |e: DriverError| self.failed(collective, explain_cuda(&e));
        let mut recv = stream.alloc_zeros::<T>(send.len()).map_err(cuda)?;
        if send.len() > 0 {
            comm.all_reduce(send, &mut recv, &ReduceOp::Sum)
                .map_err(|e| self.failed(collective, explain_nccl(&e)))?;
        }
        stream.synchronize().map_err(cuda)?;
        Ok(recv)
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
        self.mpi.all_reduce_sum_f32(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.mpi.all_reduce_sum_f64(buf)
    }
    #[cfg(feature = "candle-cuda")]
    fn all_reduce_sum_tensor(&self, buf: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        crate::nccl_tensor::all_reduce_sum_tensor(self, buf)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        self.mpi.broadcast_bytes(buf, root)
    }
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        self.mpi.broadcast_f64(buf, root)
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
