#!/usr/bin/env bash
# All-reduce GB/s of the collectives wrapper (in place) vs a raw rsmpi all_reduce_into, on
# 2 local ranks, 1 MiB .. 256 MiB. Usage: launch/bench-allreduce.sh [MIN_BYTES] [MAX_BYTES]
# Needs libopenmpi-dev openmpi-bin libclang-dev. PROFILE=release for a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-dev}"
cargo build --profile "$profile" -p collectives --features mpi --bin collectives-probe
dir=$( [ "$profile" = dev ] && echo debug || echo "$profile" )
probe="${CARGO_TARGET_DIR:-target}/$dir/collectives-probe"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -n 2 --oversubscribe --bind-to none "$probe" bench "${1:-1048576}" "${2:-268435456}"
