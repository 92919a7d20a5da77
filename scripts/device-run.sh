#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no Rust, no network; CUDA and NCCL libraries in
# torch's venv): unpack the carried CUDA binary, put the venv's CUDA/NCCL libraries on
# LD_LIBRARY_PATH, print the environment, then run the device check (scripts/gpu-check.sh,
# the step benchmark included) with a time limit, everything into OUT.
#
#   scripts/device-run.sh OUT [--binary B] [--venv V] [--steps N] [--limit S] [--device D]
#                             [--no-bench] [--smollm2 GGUF]
#
# --binary B   the CUDA coba-dist, or its .gz as built by scripts/build-cuda.sh (default
#              target/cuda/dist/coba-dist.gz; carry that folder: the stripped binary is ~64 MiB,
#              the .gz ~17 MB)
# --venv V     torch's virtual environment (default /opt/torch/.venv): its nvidia/cu13/lib and
#              nvidia/nccl/lib go on LD_LIBRARY_PATH, its python runs the PyTorch peer
# --steps N    training steps of each device-check run (default 50)
# --limit S    seconds the device check may take before it is stopped (default 420)
# --device D   cuda (default) or cpu (a dry run of this script on any machine)
# --no-bench, --smollm2 GGUF   passed to gpu-check.sh
#
# Writes OUT/env.txt (nvidia-smi, ldd of the binary, library paths), OUT/gpu-check/ (report.md,
# report.json, logs, bench/bench.md) and OUT/device-run.log. Exit status: gpu-check's, or 124
# when the limit stopped it. The binary needs libmpi.so.40 unless built with --single-gpu;
# env.txt says when a library is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "device-run.sh: $*" >&2; exit 2; }
out="" binary=target/cuda/dist/coba-dist.gz venv=/opt/torch/.venv steps=50 limit=420
device=cuda passthrough=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary|--venv|--steps|--limit|--device|--smollm2)
            [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)" ;;&
        --binary) binary="$2"; shift 2 ;;
        --venv) venv="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --limit) limit="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --smollm2) passthrough+=(--smollm2 "$2"); shift 2 ;;
        --no-bench) passthrough+=(--no-bench); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) out="$1"; shift ;;
    esac
done
[[ -n "$out" ]] || die "give the output folder (see --help)"
[[ "$limit" =~ ^[1-9][0-9]*$ ]] || die "--limit takes seconds, got '$limit'"
[[ -e "$binary" ]] || die "no binary at $binary"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/device-run.log"
: >"$log"

# The binary: unpack a .gz next to OUT (the carried tree may be read-only).
if [[ "$binary" == *.gz ]]; then
    gunzip -c "$binary" >"$out/coba-dist"
    chmod +x "$out/coba-dist"
    binary="$out/coba-dist"
fi

# The CUDA and NCCL libraries of torch's venv.
if [[ -x "$venv/bin/python" ]]; then
    sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for lib in "$sp/nvidia/cu13/lib" "$sp/nvidia/nccl/lib" "$sp/nvidia/cuda_runtime/lib" \
        "$sp/nvidia/cublas/lib" "$sp/nvidia/curand/lib"; do
        [[ -d "$lib" ]] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
else
    echo "device-run.sh: no python in $venv: the libraries must already be on LD_LIBRARY_PATH" |
        tee -a "$log" >&2
fi

{
    date -u
    echo "binary: $binary"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    ldd "$binary" 2>&1
    "$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else "-")' 2>&1 || true
} >"$out/env.txt"
if grep -q "=> not found" "$out/env.txt"; then
    echo "device-run.sh: libraries not found (env.txt):" | tee -a "$log" >&2
    grep "=> not found" "$out/env.txt" | tee -a "$log" >&2
fi

status=0
timeout --signal=TERM --kill-after=20 "$limit" \
    scripts/gpu-check.sh "$out/gpu-check" --device "$device" --binary "$binary" \
    --steps "$steps" "${passthrough[@]}" >>"$log" 2>&1 || status=$?
if (( status == 124 )); then
    echo "device-run.sh: the device check passed its ${limit}s limit (results so far in gpu-check/)" |
        tee -a "$log" >&2
fi
cat "$out/gpu-check/report.md" 2>/dev/null || tail -20 "$log"
exit "$status"
