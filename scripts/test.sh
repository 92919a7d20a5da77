#!/usr/bin/env bash
# The whole test suite (the README's test command). Installs missing system packages first.
# Tests build with optimised dependencies (see [profile.dev.package."*"] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# TensorBoard's own reader checks the event files (crates/trainer/tests/tensorboard.rs).
if ! python3 -c 'import tensorboard' 2>/dev/null; then
    echo "test.sh: installing the Python package tensorboard (the event-file reader of the tests)"
    python3 -m pip install --quiet --disable-pip-version-check tensorboard==2.21.0
fi
# The safetensors reader checks `merge` against PEFT's formula (crates/trainer/tests/lora_cli.rs);
# safetensors.numpy needs numpy, which the safetensors package does not pull in.
if ! python3 -c 'import safetensors.numpy, numpy' 2>/dev/null; then
    echo "test.sh: installing the Python packages safetensors and numpy (the merge check's reader)"
    python3 -m pip install --quiet --disable-pip-version-check safetensors==0.7.0 numpy
fi
# With the MPI backend: the collectives tests launch real `mpirun -n 2` / `-n 3` jobs.
cargo test --workspace --locked --features collectives/mpi
