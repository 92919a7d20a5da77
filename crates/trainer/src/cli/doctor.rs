//! `coba-dist doctor`: one line per rank, collective correctness checks and all-reduce bus
//! bandwidth (see `collectives::doctor`). Run it under the same launcher as training, e.g.
//! `mpirun -n 4 coba-dist doctor`. Exit status 0 only if every check passed on every rank.

use super::model_path::bad_input;
use super::ExitError;
use crate::train::config::DeviceChoice;
use crate::train::device::{gpu_environment, select};
use anyhow::anyhow;
use clap::Args;
use collectives::{doctor, exit_on_error, BackendChoice, InitOptions};
use std::io::Write;

/// Check the data-parallel setup: ranks, hosts, devices, collectives and bandwidth.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Communicator backend: auto (MPI under a launcher, else local), local, mpi or nccl.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Smallest all-reduce payload of the bandwidth table, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 10)]
    min_bytes: usize,
    /// Largest all-reduce payload of the bandwidth table, in bytes (256 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    max_bytes: usize,
    /// Device of the bucketed device check and the bandwidth table: auto (this rank's GPU
    /// in a CUDA build with one visible, else the CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Seconds one collective may take before the job is aborted (0: never).
    #[arg(long, value_name = "S", default_value_t = collectives::DEFAULT_COLLECTIVE_TIMEOUT_S)]
    collective_timeout_s: u64,
}

/// Runs the doctor on this rank; every rank of the job must run it.
pub fn run(args: &DoctorArgs) -> Result<(), ExitError> {
    // Bad input fails here, before any rank starts a collective (exit 2, no MPI abort).
    const MAX_BYTES: usize = 4 << 30;
    if args.min_bytes < 4 || args.max_bytes < args.min_bytes || args.max_bytes > MAX_BYTES {
        return Err(bad_input(anyhow!(
            "--min-bytes {} / --max-bytes {}: need 4 <= min <= max <= {MAX_BYTES} (4 GiB; \
             each payload is allocated on every rank)",
            args.min_bytes,
            args.max_bytes
        )));
    }
    if args.device == DeviceChoice::Cuda {
        select(DeviceChoice::Cuda, 0).map_err(bad_input)?;
    }
    let options = InitOptions {
        backend: args.backend,
        collective_timeout_s: args.collective_timeout_s,
        gpu_ranks: crate::train::device::gpu_ranks(args.device),
    };
    let comm = collectives::init(&options).map_err(|e| ExitError {
        code: 1,
        error: e.into(),
    })?;
    let comm: &dyn collectives::Communicator = &*comm;
    // A rank that fails here must take the job down, or its peers wait forever.
    let (device, _) = exit_on_error(comm, select(args.device, comm.local_rank()));
    let options = doctor::DoctorOptions {
        min_bytes: args.min_bytes,
        max_bytes: args.max_bytes,
        threads: collectives::launch::default_threads(comm),
        environment: std::iter::once(crate::train::device::build_line())
            .chain(gpu_environment(&device))
            .collect(),
        device,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let report = exit_on_error(comm, doctor::run(comm, &options, &mut out));
    let _ = out.flush();
    if report.passed() {
        Ok(())
    } else {
        Err(ExitError {
            code: 1,
            error: anyhow!("doctor: a collective check failed (see the report above)"),
        })
    }
}
