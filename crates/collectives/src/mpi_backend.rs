//! [`Mpi`]: the MPI backend (feature `mpi`), over rsmpi and the system MPI library.
//!
//! Host memory only. Rank and world come from `MPI_COMM_WORLD`; the local rank and local world
//! from `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`, so mpirun and srun agree. MPI is
//! initialised with `MPI_THREAD_MULTIPLE` so the watchdog thread may call `MPI_Abort`.

use std::os::raw::{c_int, c_void};
use std::time::Duration;

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::AsRaw;
use mpi::Threading;

use crate::communicator::{check_root, Backend, Communicator, StepCounter};
use crate::error::{Error, Result};
use crate::watchdog::{TimeoutAction, Watchdog};

/// Largest element count handed to one MPI call (MPI counts are `int`).
const MAX_COUNT: usize = 1 << 30;

/// The MPI communicator over `MPI_COMM_WORLD`.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    local_world_size: usize,
    host: String,
    library: String,
    thread_multiple: bool,
    /// Address of the linked library's `MPI_IN_PLACE`, if known (a macro, not a symbol).
    in_place: Option<usize>,
    step: StepCounter,
    watchdog: Option<Watchdog>,
    // Declared last: finalises MPI after everything above is dropped.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("local_rank", &self.local_rank)
            .field("local_world_size", &self.local_world_size)
            .field("library", &self.library)
            .finish()
    }
}

/// `MPI_Abort(MPI_COMM_WORLD, code)`; usable from any thread under `MPI_THREAD_MULTIPLE`.
fn abort_world(code: i32) -> ! {
    // SAFETY: MPI is initialised (only an `Mpi` hands this out) and MPI_Abort takes no
    // pointers; RSMPI_COMM_WORLD is a constant handle exported by rsmpi's C shim.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::abort()
}

/// `MPI_IN_PLACE` is a C macro whose value depends on the implementation; recognise the two
/// families whose value is part of their stable ABI.
fn in_place_sentinel(library_version: &str) -> Option<usize> {
    if std::env::var_os("COBA_MPI_NO_IN_PLACE").is_some() {
        return None;
    }
    if library_version.starts_with("Open MPI") {
        Some(1) // ompi/include/mpi.h: ((void *) 1)
    } else if ["MPICH", "Intel(R) MPI", "MVAPICH", "CRAY MPICH"]
        .iter()
        .any(|family| library_version.contains(family))
    {
        Some(usize::MAX) // mpich mpi.h: (void *) -1
    } else {
        None
    }
}

impl Mpi {
    /// Initialise MPI (once per process) with a collective watchdog of `collective_timeout`
    /// (`None`: no watchdog).
    pub fn init(collective_timeout: Option<Duration>) -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Init {
                backend: "mpi",
                reason: "MPI is already initialised in this process".to_owned(),
            })?;
        let world = universe.world();
        let rank = usize::try_from(world.rank()).unwrap_or(0);
        let world_size = usize::try_from(world.size()).unwrap_or(1);
        let local = world.split_shared(world.rank());
        let local_rank = usize::try_from(local.rank()).unwrap_or(0);
        let local_world_size = usize::try_from(local.size()).unwrap_or(1);
        let host =
            mpi::environment::processor_name().unwrap_or_else(|_| crate::communicator::host_name());
        let library = mpi::environment::library_version()
            .map(|v| v.trim_end_matches('\0').trim().to_owned())
            .unwrap_or_default();
        let thread_multiple = threading == Threading::Multiple;
        let watchdog = match collective_timeout {
            None => None,
            Some(timeout) => {
                let action: TimeoutAction = Box::new(move |message: &str| {
                    eprintln!("{message}");
                    if thread_multiple {
                        abort_world(crate::EXIT_COLLECTIVE_TIMEOUT)
                    } else {
                        // Without MPI_THREAD_MULTIPLE only the main thread may call MPI; a
                        // rank that exits without MPI_Finalize makes the launcher end the job.
                        std::process::exit(crate::EXIT_COLLECTIVE_TIMEOUT)
                    }
                });
                Some(
                    Watchdog::new(timeout, rank, action).map_err(|e| Error::Init {
                        backend: "mpi",
                        reason: format!("cannot start the watchdog thread: {e}"),
                    })?,
                )
            }
        };
        let in_place = in_place_sentinel(&library);
        Ok(Self {
            world,
            rank,
            world_size,
            local_rank,
            local_world_size,
            host,
            library,
            thread_multiple,
            in_place,
            step: StepCounter::default(),
            watchdog,
            _universe: universe,
        })
    }

    /// The rsmpi world communicator, for code (benchmarks) that calls rsmpi directly.
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// The MPI library's version string, e.g. `Open MPI v4.1.4, ...`.
    pub fn library_version(&self) -> &str {
        &self.library
    }

    /// Whether MPI granted `MPI_THREAD_MULTIPLE` (the watchdog then aborts with `MPI_Abort`).
    pub fn thread_multiple(&self) -> bool {
        self.thread_multiple
    }

    pub(crate) fn guard(
        &self,
        collective: &'static str,
    ) -> Option<crate::watchdog::WatchGuard<'_>> {
        self.watchdog
            .as_ref()
            .map(|dog| dog.arm(collective, self.step.get()))
    }

    fn all_reduce_sum<T>(&self, collective: &'static str, buf: &mut [T]) -> Result<()>
    where
        T: mpi::datatype::Equivalence + Copy + Default,
    {
        let _armed = self.guard(collective);
        let datatype = T::equivalent_datatype().as_raw();
        match self.in_place {
            Some(address) => {
                let in_place = std::ptr::without_provenance_mut::<c_void>(address);
                for chunk in buf.chunks_mut(MAX_COUNT) {
                    let count = c_int::try_from(chunk.len()).unwrap_or(c_int::MAX);
                    // SAFETY: `chunk` is a valid, exclusively borrowed buffer of `count`
                    // elements of `datatype`; `in_place` is this library's MPI_IN_PLACE.
                    let code = unsafe {
                        mpi::ffi::MPI_Allreduce(
                            in_place,
                            chunk.as_mut_ptr().cast::<c_void>(),
                            count,
                            datatype,
                            mpi::ffi::RSMPI_SUM,
                            self.world.as_raw(),
                        )
                    };
                    if code != 0 {
                        return Err(self.failed(collective, format!("MPI error code {code}")));
                    }
                }
            }
            None => {
                let mut recv = vec![T::default(); buf.len().min(MAX_COUNT)];
                for chunk in buf.chunks_mut(MAX_COUNT) {
                    let recv = &mut recv[..chunk.len()];
                    self.world.all_reduce_into(
                        &*chunk,
                        recv,
                        mpi::collective::SystemOperation::sum(),
                    );
                    chunk.copy_from_slice(recv);
                }
            }
        }
        Ok(())
    }

    fn failed(&self, collective: &'static str, reason: String) -> Error {
        Error::Collective {
            collective,
            rank: self.rank,
            step: self.step.get(),
            reason,
        }
    }
}

impl Communicator for Mpi {
    fn backend(&self) -> Backend {
        Backend::Mpi
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_world_size(&self) -> usize {
        self.local_world_size
    }
    fn host(&self) -> String {
        self.host.clone()
    }
    fn device(&self) -> String {
        "cpu".to_owned()
    }
    fn set_step(&self, step: u64) {
        self.step.set(step);
    }
    fn step(&self) -> u64 {
        self.step.get()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum("all_reduce_sum_f32", buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce_sum("all_reduce_sum_f64", buf)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root("broadcast_bytes", root, self.rank, self.world_size)?;
        let _armed = self.guard("broadcast_bytes");
        let root_process = self.world.process_at_rank(root as mpi::Rank);
        let mut len = buf.len() as u64;
        root_process.broadcast_into(&mut len);
        let len = usize::try_from(len).map_err(|_| {
            self.failed(
                "broadcast_bytes",
                format!("{len} bytes do not fit in memory"),
            )
        })?;
        buf.resize(len, 0);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            root_process.broadcast_into(chunk);
        }
        Ok(())
    }
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        check_root("broadcast_f64", root, self.rank, self.world_size)?;
        let _armed = self.guard("broadcast_f64");
        let root_process = self.world.process_at_rank(root as mpi::Rank);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            root_process.broadcast_into(chunk);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let _armed = self.guard("barrier");
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        abort_world(code)
    }
}

/// Install a panic hook that, after the usual panic message, aborts the whole MPI job, so a
/// panicking rank cannot leave its peers blocked in a collective. Call once MPI is up.
pub fn install_panic_abort(rank: usize) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("coba-dist: rank {rank} panicked; aborting the job");
        abort_world(crate::EXIT_RANK_FAILED)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_sentinel_matches_the_families() {
        if std::env::var_os("COBA_MPI_NO_IN_PLACE").is_some() {
            return;
        }
        assert_eq!(
            in_place_sentinel("Open MPI v4.1.4, package: Debian OpenMPI"),
            Some(1)
        );
        assert_eq!(in_place_sentinel("MPICH Version:\t4.0"), Some(usize::MAX));
        assert_eq!(in_place_sentinel("Some Other MPI 1.0"), None);
    }
}
