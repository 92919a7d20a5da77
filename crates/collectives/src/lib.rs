//! Collective communication for data-parallel training.
//!
//! One [`Communicator`] trait with three backends: [`Local`] (a world of one, always built),
//! `Mpi` (feature `mpi`, rsmpi over the system MPI, host memory) and `Nccl` (feature `nccl`,
//! GPU data plane bootstrapped and controlled over MPI). [`init`] picks the backend from the
//! build and the launch environment. On top of the trait: the bucketed all-reduce of named
//! candle tensors ([`bucket`]), the collective [`watchdog`], launch detection and thread
//! sizing ([`launch`]) and the `doctor` diagnostics ([`doctor`]).
//!
//! Failure policy: a rank that cannot continue calls [`Communicator::abort`] (see
//! [`exit_on_error`]; MPI backends also abort on panic), and a collective that runs longer than
//! `collective_timeout_s` aborts the job naming the collective and the step.
#![warn(missing_docs)]

pub mod bucket;
mod communicator;
pub mod doctor;
mod error;
pub mod launch;
mod local;
#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl_backend;
#[cfg(all(feature = "nccl", feature = "candle-cuda"))]
mod nccl_tensor;
pub mod watchdog;

use std::str::FromStr;
use std::time::Duration;

pub use bucket::{
    all_reduce_grads, all_reduce_map, all_reduce_named, BucketOptions, DEFAULT_BUCKET_BYTES,
};
pub use communicator::{
    exit_on_error, gather_lines, host_all_reduce_tensor, host_name, Backend, Communicator,
    EXIT_COLLECTIVE_TIMEOUT, EXIT_RANK_FAILED,
};
pub use error::{Error, Result};
pub use local::Local;
#[cfg(feature = "mpi")]
pub use mpi_backend::{install_panic_abort, Mpi};
#[cfg(feature = "nccl")]
pub use nccl_backend::{explain_nccl, Nccl};
pub use watchdog::DEFAULT_COLLECTIVE_TIMEOUT_S;

/// Which backend [`init`] should create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// MPI when started by a launcher with more than one process (and built with `mpi`),
    /// otherwise [`Local`].
    #[default]
    Auto,
    /// [`Local`]; refused under a multi-process launcher.
    Local,
    /// MPI, also for a single process.
    Mpi,
    /// NCCL (GPU) with MPI as the control plane.
    Nccl,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "local" => Ok(Self::Local),
            "mpi" => Ok(Self::Mpi),
            "nccl" => Ok(Self::Nccl),
            other => Err(format!(
                "unknown backend `{other}` (expected auto, local, mpi or nccl)"
            )),
        }
    }
}

/// Options for [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Backend to create.
    pub backend: BackendChoice,
    /// Seconds one collective may take before the job is aborted; 0 disables the watchdog.
    pub collective_timeout_s: u64,
    /// The ranks will compute on GPUs: under a launcher, [`BackendChoice::Auto`] then takes
    /// NCCL in a build with it when every rank has a GPU of its own (checked by GPU UUID), MPI
    /// otherwise (saying why). Default false: auto is MPI under a launcher.
    pub gpu_ranks: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            collective_timeout_s: DEFAULT_COLLECTIVE_TIMEOUT_S,
            gpu_ranks: false,
        }
    }
}

/// The first two ranks whose placement keys (`"host GPU-uuid"`, one per rank, gathered in rank
/// order) are equal: two ranks driving one GPU, which NCCL refuses. `None` when all differ.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn first_shared(keys: &[String]) -> Option<(usize, usize)> {
    let mut seen = std::collections::HashMap::new();
    for (rank, key) in keys.iter().enumerate() {
        if let Some(&first) = seen.get(key) {
            return Some((first, rank));
        }
        seen.insert(key, rank);
    }
    None
}

/// Whether this build contains the MPI backend.
pub const MPI_COMPILED: bool = cfg!(feature = "mpi");
/// Whether this build contains the NCCL backend.
pub const NCCL_COMPILED: bool = cfg!(feature = "nccl");

/// The loaded NCCL library's version (`2.27.3`), or why there is none: a build without the
/// `nccl` feature, or libnccl.so.2 not found.
pub fn nccl_version() -> std::result::Result<String, String> {
    #[cfg(feature = "nccl")]
    {
        Nccl::nccl_version().map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "nccl"))]
    {
        Err("not built with the nccl feature".to_owned())
    }
}

/// Create the communicator for this process (call once, before any other MPI use).
///
/// Fails with [`Error::MpiNotCompiled`] when a launcher started several processes but the
/// binary was built without `mpi`, and with [`Error::Init`] when MPI sees a world of one
/// while the launcher announced more (a binary linked against another MPI than the launcher's).
pub fn init(options: &InitOptions) -> Result<Box<dyn Communicator>> {
    let launch = launch::detect();
    let timeout = (options.collective_timeout_s > 0)
        .then(|| Duration::from_secs(options.collective_timeout_s));
    let backend = match options.backend {
        BackendChoice::Auto if launch.is_some() && options.gpu_ranks && NCCL_COMPILED => {
            BackendChoice::Nccl
        }
        BackendChoice::Auto if launch.is_some() => BackendChoice::Mpi,
        BackendChoice::Auto => BackendChoice::Local,
        explicit => explicit,
    };
    let comm: Box<dyn Communicator> = match backend {
        BackendChoice::Local | BackendChoice::Auto => match &launch {
            Some(l) if options.backend == BackendChoice::Local && MPI_COMPILED => {
                return Err(Error::Init {
                    backend: "local",
                    reason: format!(
                        "{l} started {} processes, but the local backend is a world of one: \
                         use backend auto or mpi under a launcher",
                        l.world_size
                    ),
                })
            }
            Some(l) => {
                return Err(Error::MpiNotCompiled {
                    launcher: l.to_string(),
                    world_size: l.world_size,
                })
            }
            None => Box::new(Local::new()),
        },
        BackendChoice::Mpi => init_mpi(timeout, launch.as_ref())?,
        BackendChoice::Nccl if options.backend == BackendChoice::Auto => init_nccl_or_mpi(timeout)?,
        BackendChoice::Nccl => init_nccl(timeout)?,
    };
    if let Some(l) = &launch {
        if comm.world_size() == 1 && l.variable != "SLURM_NTASKS" {
            return Err(Error::Init {
                backend: "mpi",
                reason: format!(
                    "{l} announced {} processes but MPI sees a world of 1: the binary is linked \
                     against a different MPI than the launcher (or srun lacks --mpi=pmix)",
                    l.world_size
                ),
            });
        }
    }
    Ok(comm)
}

#[cfg(feature = "mpi")]
fn init_mpi(
    timeout: Option<Duration>,
    _launch: Option<&launch::Launch>,
) -> Result<Box<dyn Communicator>> {
    let comm = Mpi::init(timeout)?;
    install_panic_abort(comm.rank());
    Ok(Box::new(comm))
}

#[cfg(not(feature = "mpi"))]
fn init_mpi(
    _timeout: Option<Duration>,
    launch: Option<&launch::Launch>,
) -> Result<Box<dyn Communicator>> {
    Err(match launch {
        Some(l) => Error::MpiNotCompiled {
            launcher: l.to_string(),
            world_size: l.world_size,
        },
        None => Error::BackendNotCompiled {
            backend: "mpi",
            feature: "mpi",
        },
    })
}

#[cfg(feature = "nccl")]
fn init_nccl(timeout: Option<Duration>) -> Result<Box<dyn Communicator>> {
    let comm = Nccl::init(timeout)?;
    install_panic_abort(comm.rank());
    Ok(Box::new(comm))
}

#[cfg(feature = "nccl")]
fn init_nccl_or_mpi(timeout: Option<Duration>) -> Result<Box<dyn Communicator>> {
    let comm = Nccl::init_or_mpi(timeout)?;
    install_panic_abort(comm.rank());
    Ok(comm)
}

#[cfg(not(feature = "nccl"))]
fn init_nccl_or_mpi(timeout: Option<Duration>) -> Result<Box<dyn Communicator>> {
    init_nccl(timeout)
}

#[cfg(not(feature = "nccl"))]
fn init_nccl(_timeout: Option<Duration>) -> Result<Box<dyn Communicator>> {
    Err(Error::BackendNotCompiled {
        backend: "nccl",
        feature: "nccl",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_sharing_a_gpu_are_found_by_host_and_uuid() {
        let keys = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // One GPU per task: every rank sees device 0, the UUIDs differ.
        assert_eq!(
            first_shared(&keys(&["a GPU-01", "a GPU-02", "b GPU-01"])),
            None
        );
        // Two ranks on one GPU of host a (ranks 1 and 3); the same UUID on two hosts cannot
        // happen, but the host is part of the key anyway.
        assert_eq!(
            first_shared(&keys(&["a GPU-01", "a GPU-02", "b GPU-03", "a GPU-02"])),
            Some((1, 3))
        );
        assert_eq!(first_shared(&[]), None);
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("nccl".parse::<BackendChoice>(), Ok(BackendChoice::Nccl));
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert!("tcp".parse::<BackendChoice>().unwrap_err().contains("tcp"));
    }

    #[test]
    fn not_compiled_errors_say_how_to_rebuild() {
        let e = Error::MpiNotCompiled {
            launcher: "mpirun (Open MPI) (OMPI_COMM_WORLD_SIZE=2)".to_owned(),
            world_size: 2,
        };
        let text = e.to_string();
        assert!(
            text.contains("--features mpi") && text.contains("libopenmpi-dev"),
            "{text}"
        );
    }
}
