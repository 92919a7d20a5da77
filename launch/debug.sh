#!/usr/bin/env bash
# Single-process debug run (no MPI): a debug build, debug logs, backtraces.
#
#   launch/debug.sh CONFIG [extra coba-dist args]
#   launch/debug.sh configs/demo.toml --set train.max_steps=5
#
# Builds `cargo build -p trainer` (the dev profile: our crates with debug assertions, the
# dependencies optimised; a no-op when up to date) unless COBA_DIST names a binary, then runs
# `coba-dist --config CONFIG ...` as one rank with the local backend, RUST_LOG=debug (set
# RUST_LOG to filter, e.g. RUST_LOG=trainer=trace) and RUST_BACKTRACE=1. Launcher variables
# (mpirun's, Slurm's) are cleared so it also runs inside an allocation.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2
    [ $# -ge 1 ] && exit 0
    exit 2
fi
config=$1
shift
if [ ! -f "$config" ]; then
    echo "debug.sh: config $config: no such file" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${COBA_DIST:-}" ]; then
    bin=$COBA_DIST
else
    bin=${CARGO_TARGET_DIR:-$repo/target}/debug/coba-dist
    echo "+ cargo build -p trainer" >&2
    cargo build --manifest-path "$repo/Cargo.toml" -p trainer
fi

export RUST_LOG=${RUST_LOG:-debug}
export RUST_BACKTRACE=1
# One process: forget any launcher (a world size > 1 in these makes coba-dist expect MPI).
unset OMPI_COMM_WORLD_SIZE PMI_SIZE PMIX_SIZE MV2_COMM_WORLD_SIZE SLURM_STEP_NUM_TASKS \
    SLURM_NTASKS COBA_THREADS
export COBA_RUNTIME__BACKEND=local

cmd=("$bin" --config "$config" "$@")
printf '+ RUST_LOG=%s RUST_BACKTRACE=1 COBA_RUNTIME__BACKEND=local' "$RUST_LOG" >&2
printf ' %q' "${cmd[@]}" >&2
printf '\n' >&2
exec "${cmd[@]}"
