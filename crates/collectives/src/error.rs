//! The crate's error type: every variant names what failed and, for collectives, on which rank
//! and at which training step, so a log line from any rank is actionable on its own.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, Error)]
pub enum Error {
    /// A collective call failed (the underlying library returned an error).
    #[error("collective `{collective}` failed on rank {rank} at step {step}: {reason}")]
    Collective {
        /// Name of the collective, e.g. `all_reduce_sum_f32`.
        collective: &'static str,
        /// Rank (in the world communicator) that observed the failure.
        rank: usize,
        /// Training step set with [`crate::Communicator::set_step`] (0 before training).
        step: u64,
        /// What the backend reported, with a hint where one is known.
        reason: String,
    },
    /// A collective was called with arguments that cannot work (e.g. a root out of range).
    #[error("invalid call to `{collective}` on rank {rank}: {reason}")]
    InvalidArgument {
        /// Name of the collective or helper.
        collective: &'static str,
        /// Calling rank.
        rank: usize,
        /// Why the arguments were rejected.
        reason: String,
    },
    /// The ranks disagree on the set of tensors given to a bucketed all-reduce.
    #[error(
        "rank {rank} at step {step}: tensor layout differs between ranks ({reason}); every rank \
         must pass the same names, shapes and dtypes"
    )]
    LayoutMismatch {
        /// Rank that detected the mismatch.
        rank: usize,
        /// Training step.
        step: u64,
        /// Which fingerprint component differed.
        reason: String,
    },
    /// A candle tensor operation failed while packing or unpacking a named tensor.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// Name of the tensor.
        name: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// The process was started by a multi-process launcher, but this build cannot join it.
    #[error(
        "started by {launcher} as one of {world_size} processes, but this binary was built \
         without the `mpi` feature, so every process would train alone; rebuild with \
         `cargo build --release --features mpi` (needs the system packages libopenmpi-dev and \
         libclang-dev), or run a single process without a launcher"
    )]
    MpiNotCompiled {
        /// Launcher detected from the environment (e.g. `mpirun (Open MPI)`).
        launcher: String,
        /// World size announced by the launcher.
        world_size: usize,
    },
    /// A backend was requested that this build does not contain.
    #[error(
        "the `{backend}` backend is not compiled in; rebuild with `--features {feature}`{}",
        if *backend == "nccl" { " (for GPUs: scripts/build-cuda.sh, which also builds CUDA)" } else { "" }
    )]
    BackendNotCompiled {
        /// Requested backend.
        backend: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend could not be initialised.
    #[error("initialising the {backend} backend failed: {reason}")]
    Init {
        /// Backend being initialised.
        backend: &'static str,
        /// What went wrong and what to try.
        reason: String,
    },
    /// Writing a report failed.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collective_errors_name_collective_rank_and_step() {
        let e = Error::Collective {
            collective: "all_reduce_sum_f64",
            rank: 5,
            step: 1200,
            reason: "MPI error code 15".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "collective `all_reduce_sum_f64` failed on rank 5 at step 1200: MPI error code 15"
        );
    }
}
