#!/usr/bin/env bash
# The whole test suite (the README's test command). Installs missing system packages first.
# Tests build with optimised dependencies (see [profile.dev.package."*"] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# With the MPI backend: the collectives tests launch real `mpirun -n 2` / `-n 3` jobs.
cargo test --workspace --locked --features collectives/mpi
