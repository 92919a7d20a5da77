#!/usr/bin/env bash
# The README's first command: the main job on the embedded default (configs/demo.toml, which is
# what `coba-dist` runs without --config): a ~7M-parameter Llama trained with CoBa on the six
# shipped tasks, on 2 MPI ranks when Open MPI is present (installed here when missing), else on
# one process. Writes runs/demo/{metrics.jsonl,checkpoints/,best/,plots/,summary.json}.
# Extra arguments go to coba-dist (e.g. --set train.max_steps=50). Runs with --resume auto: a
# second call continues (or, when finished, just reports) the run in runs/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
features=()
if scripts/install-deps.sh; then
  features=(--features mpi)
else
  echo "demo.sh: Open MPI could not be installed; running on one process" >&2
fi
cargo build --release --locked -p trainer "${features[@]}"
if [ ${#features[@]} -gt 0 ]; then
  exec launch/local.sh -n 2 configs/demo.toml --resume auto "$@"
fi
exec launch/local.sh -n 1 configs/demo.toml --resume auto "$@"
