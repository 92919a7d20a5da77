#!/usr/bin/env bash
# Local data-parallel training: N ranks on this machine with mpirun (or one process without it).
#
#   launch/local.sh [-n N] CONFIG [extra coba-dist args]
#   launch/local.sh -n 4 configs/demo.toml --resume auto --set train.lr=2.0e-5
#
# -n N      ranks (default: 2 when mpirun is installed, else 1 = a single process, no MPI).
# CONFIG    the run configuration TOML (relative to the current directory).
# The rest goes to `coba-dist --config CONFIG ...` unchanged (--resume auto|PATH, --set k=v).
#
# Environment: COBA_DIST (the binary; default target/release/coba-dist, built with
# `cargo build --release --features mpi -p trainer` when missing, without `--features mpi` when
# mpirun is not installed), CARGO_TARGET_DIR (where cargo builds), COBA_* configuration
# overrides, RUST_LOG (default info).
#
# Threads: every rank sees all cores (--bind-to none) and coba-dist uses cores / local ranks
# threads per rank (or runtime.threads from the configuration).
# Clean stop: `kill -USR1 <mpirun pid>` (Open MPI forwards SIGUSR1 to every rank; they finish
# the step, checkpoint and exit). SIGTERM/Ctrl-C to mpirun kills the ranks after a few seconds.
set -euo pipefail

usage() {
    sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# *//'
}

ranks=""
while getopts ":n:h" opt; do
    case "$opt" in
        n) ranks=$OPTARG ;;
        h)
            usage
            exit 0
            ;;
        :)
            echo "local.sh: -$OPTARG needs a number of ranks" >&2
            exit 2
            ;;
        *)
            echo "local.sh: unknown option -$OPTARG" >&2
            usage >&2
            exit 2
            ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -lt 1 ]; then
    usage >&2
    exit 2
fi
config=$1
shift
if [ ! -f "$config" ]; then
    echo "local.sh: config $config: no such file" >&2
    exit 2
fi

have_mpirun=0
if command -v mpirun >/dev/null 2>&1; then
    have_mpirun=1
fi
if [ -z "$ranks" ]; then
    if [ "$have_mpirun" = 1 ]; then ranks=2; else ranks=1; fi
fi
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: -n $ranks: expected a positive number of ranks" >&2
    exit 2
fi
if [ "$ranks" -gt 1 ] && [ "$have_mpirun" = 0 ]; then
    echo "local.sh: -n $ranks needs mpirun (Open MPI: scripts/install-deps.sh), or use -n 1" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${COBA_DIST:-$target/release/coba-dist}
if [ ! -x "$bin" ]; then
    if [ -n "${COBA_DIST:-}" ]; then
        echo "local.sh: COBA_DIST=$COBA_DIST is not an executable" >&2
        exit 2
    fi
    features=()
    if [ "$have_mpirun" = 1 ]; then features=(--features mpi); fi
    echo "local.sh: $bin not found; building it" >&2
    echo "+ cargo build --release ${features[*]} -p trainer" >&2
    cargo build --manifest-path "$repo/Cargo.toml" --release "${features[@]}" -p trainer
fi

# The binary sizes its threads itself (cores / local ranks, or runtime.threads).
unset COBA_THREADS

shown=()
if [ "$ranks" = 1 ]; then
    cmd=("$bin" --config "$config" "$@")
else
    mpi=(mpirun -n "$ranks" --bind-to none)
    # Open MPI's default slots are physical cores: the smaller of usable CPUs (affinity,
    # cgroups) and physical cores (hyper-threads counted once).
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
    physical=$(lscpu -p=socket,core 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
    if [ "${physical:-0}" -gt 0 ] && [ "$physical" -lt "$cores" ]; then
        cores=$physical
    fi
    if [ "$ranks" -gt "$cores" ]; then
        mpi+=(--oversubscribe)
    fi
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        shown+=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
    fi
    if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
        # No remote shell (containers): tell Open MPI not to look for one; all ranks are local.
        export OMPI_MCA_plm=isolated
        shown+=(OMPI_MCA_plm=isolated)
    fi
    cmd=("${mpi[@]}" "$bin" --config "$config" "$@")
fi

printf '+' >&2
if [ ${#shown[@]} -gt 0 ]; then printf ' %s' "${shown[@]}" >&2; fi
printf ' %q' "${cmd[@]}" >&2
printf '\n' >&2
exec "${cmd[@]}"
