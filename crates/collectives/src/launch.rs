//! Launch detection and per-rank thread sizing.
//!
//! Rank and world always come from MPI when the `mpi` feature is on. The environment is read
//! only to notice a launcher (`mpirun`, `srun`, Hydra) that started several processes of a
//! binary that cannot join them, and to refuse to run in that case.

use std::fmt;

/// A multi-process launch seen in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Who announced it, e.g. `mpirun (Open MPI)`.
    pub launcher: &'static str,
    /// The environment variable that carried the world size.
    pub variable: &'static str,
    /// World size announced by the launcher.
    pub world_size: usize,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}={})",
            self.launcher, self.variable, self.world_size
        )
    }
}

/// Environment variables announcing a world size, most specific first.
pub const WORLD_SIZE_VARIABLES: &[(&str, &str)] = &[
    ("OMPI_COMM_WORLD_SIZE", "mpirun (Open MPI)"),
    ("PMI_SIZE", "an MPICH/Hydra or PMI launcher"),
    ("PMIX_SIZE", "a PMIx launcher"),
    ("MV2_COMM_WORLD_SIZE", "mpirun (MVAPICH2)"),
    ("SLURM_STEP_NUM_TASKS", "srun (Slurm job step)"),
    ("SLURM_NTASKS", "Slurm"),
];

/// Find a launch of more than one process in an environment given as a lookup function.
/// Unparsable values are ignored.
pub fn detect_with(lookup: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    WORLD_SIZE_VARIABLES
        .iter()
        .find_map(|&(variable, launcher)| {
            let world_size = lookup(variable)?.trim().parse::<usize>().ok()?;
            Some(Launch {
                launcher,
                variable,
                world_size,
            })
        })
        .filter(|launch| launch.world_size > 1)
}

/// [`detect_with`] over the process environment.
pub fn detect() -> Option<Launch> {
    detect_with(|name| std::env::var(name).ok())
}

/// CPU threads each rank should use so that `local_world_size` ranks on a host with `cores`
/// cores do not oversubscribe it: `cores / local_world_size`, at least 1.
pub fn threads_per_rank(cores: usize, local_world_size: usize) -> usize {
    (cores / local_world_size.max(1)).max(1)
}

/// Cores available to this process (respects affinity masks and cgroup quotas), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// [`threads_per_rank`] for this host and a communicator's local world.
pub fn default_threads(comm: &dyn crate::Communicator) -> usize {
    threads_per_rank(available_cores(), comm.local_world_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_launcher_or_single_process_is_not_a_launch() {
        assert_eq!(detect_with(env(&[])), None);
        assert_eq!(detect_with(env(&[("OMPI_COMM_WORLD_SIZE", "1")])), None);
        assert_eq!(detect_with(env(&[("SLURM_NTASKS", "x")])), None);
    }

    #[test]
    fn open_mpi_wins_over_slurm() {
        let got = detect_with(env(&[("SLURM_NTASKS", "8"), ("OMPI_COMM_WORLD_SIZE", "4")]));
        let want = Launch {
            launcher: "mpirun (Open MPI)",
            variable: "OMPI_COMM_WORLD_SIZE",
            world_size: 4,
        };
        assert_eq!(got, Some(want));
    }

    #[test]
    fn pmi_and_slurm_are_seen() {
        let pmi = detect_with(env(&[("PMI_SIZE", "3")])).unwrap();
        assert_eq!((pmi.variable, pmi.world_size), ("PMI_SIZE", 3));
        let slurm = detect_with(env(&[("SLURM_NTASKS", "16")])).unwrap();
        assert_eq!((slurm.variable, slurm.world_size), ("SLURM_NTASKS", 16));
        assert!(slurm.to_string().contains("SLURM_NTASKS=16"));
    }

    #[test]
    fn threads_split_cores_between_local_ranks() {
        assert_eq!(threads_per_rank(16, 4), 4);
        assert_eq!(threads_per_rank(16, 3), 5);
        assert_eq!(threads_per_rank(2, 3), 1);
        assert_eq!(threads_per_rank(8, 0), 8);
    }
}
