#!/usr/bin/env bash
# The device check: one command on a machine with one GPU that writes a markdown table and JSON
# into OUT (report.md, report.json, and each run's output directory).
#
#   scripts/gpu-check.sh OUT [--device cuda|cpu] [--binary PATH] [--steps N]
#
# --device D    the device under test (default cuda); `--device cpu` is the dry run CI executes
#               (every "device" run on the CPU: the comparisons must then hold exactly).
# --binary B    the coba-dist binary (default target/cuda/dist/coba-dist for cuda,
#               target/release/coba-dist for cpu).
# --steps N     training steps of each run (default 50; even, >= 4).
#
# Checks, on the demo configuration (random-init ~7M Llama, the six shipped tasks, seed 42):
#   env        the binary's libraries resolve; GPU, driver and NCCL found (nvidia-smi)
#   f32        N steps f32 on the device vs on the CPU: every step's loss within 1e-3 relative
#   bf16       N steps bf16 on the device: no NaN, every task's final validation ratio < 1
#   resume     f32 on the device, constant LR: N/2 steps, then --resume to N == N straight
#              (max loss difference reported; 0 expected on the CPU)
# Run from the repository root (the demo's data paths are relative). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
out="" device=cuda binary="" steps=50
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="${2:-}"; shift 2 ;;
        --binary) binary="${2:-}"; shift 2 ;;
        --steps) steps="${2:-}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu-check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
if [[ -z "$out" ]]; then echo "gpu-check.sh: give the output folder" >&2; usage >&2; exit 2; fi
if [[ "$device" != cuda && "$device" != cpu ]]; then
    echo "gpu-check.sh: --device is cuda or cpu, got '$device'" >&2; exit 2
fi
if ! [[ "$steps" =~ ^[0-9]+$ ]] || (( steps < 4 || steps % 2 )); then
    echo "gpu-check.sh: --steps takes an even number >= 4, got '$steps'" >&2; exit 2
fi
if [[ -z "$binary" ]]; then
    binary=target/release/coba-dist
    [[ "$device" == cuda ]] && binary=target/cuda/dist/coba-dist
fi
if [[ ! -x "$binary" ]]; then echo "gpu-check.sh: no binary at $binary" >&2; exit 2; fi
py=${PYTHON:-python3}
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
results="$out/results.jsonl"
: >"$results"
record() { # name status detail
    printf '{"check": "%s", "status": "%s", "detail": %s}\n' "$1" "$2" \
        "$("$py" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$3")" >>"$results"
    echo "gpu-check: $1: $2 ($3)"
}

# env: libraries, GPU, driver, NCCL.
{
    echo "binary: $binary ($(stat -c %s "$binary") bytes)"
    echo "device: $device"
    uname -a
    ldd "$binary" 2>&1 || true
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
} >"$out/env.txt"
missing=$(grep -c '=> not found' "$out/env.txt" || true)
gpu=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version \
    --format=csv,noheader 2>/dev/null | head -1 || echo none)
nccl=$(ldd "$binary" 2>/dev/null | awk '/libnccl/ {print $3}' | head -1)
if (( missing == 0 )); then
    record env pass "libraries resolve; GPU: ${gpu:-none}; NCCL: ${nccl:-not linked}"
else
    record env fail "$missing libraries not found (see env.txt)"
fi

# One run of the demo config: run NAME DEVICE DTYPE STEPS [extra args].
run() {
    local name=$1 dev=$2 dtype=$3 n=$4
    shift 4
    "$binary" --config configs/demo.toml --set "output_dir=\"$out/$name\"" \
        --set "runtime.device=\"$dev\"" --set "train.dtype=\"$dtype\"" \
        --set "train.max_steps=$n" --set train.eval_interval=0 --set checkpoint.every_steps=0 \
        --set train.log_interval=10 "$@" >"$out/$name.log" 2>&1
}

# Compares the per-step losses of two runs' metrics.jsonl: prints "max_rel steps".
compare_losses() {
    "$py" - "$1" "$2" <<'PY'
import json, sys
def losses(path):
    out = {}
    for line in open(path).read().splitlines()[1:]:
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
common = sorted(set(a) & set(b))
worst = max((abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in common), default=float("nan"))
print(f"{worst:.3e} {len(common)}")
PY
}

# f32: device vs CPU.
if run f32-cpu cpu f32 "$steps" && run f32-device "$device" f32 "$steps"; then
    read -r worst n < <(compare_losses "$out/f32-device/metrics.jsonl" "$out/f32-cpu/metrics.jsonl")
    if [[ "$n" == "$steps" ]] && "$py" -c "import sys; sys.exit(0 if float('$worst') <= 1e-3 else 1)"; then
        record f32 pass "$n steps, max relative loss difference $worst"
    else
        record f32 fail "$n of $steps steps compared, max relative loss difference $worst"
    fi
else
    record f32 fail "a run failed (f32-cpu.log, f32-device.log)"
fi

# bf16 on the device: no NaN (a NaN stops the run with an error), every ratio < 1 at the end.
if run bf16-device "$device" bf16 "$steps"; then
    ratios=$("$py" - "$out/bf16-device/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
init, last = s["initial_val_loss"], s["final_val_loss"]
print(" ".join(f"{t}={l / i:.3f}" for t, i, l in zip(s["tasks"], init, last)))
PY
)
    if [[ "$ratios" != *"=1."* && "$ratios" != *"=nan"* && "$ratios" != *"=inf"* ]]; then
        record bf16 pass "validation ratios $ratios"
    else
        record bf16 fail "validation ratios $ratios"
    fi
else
    record bf16 fail "the run failed (bf16-device.log)"
fi

# resume: N/2 + N/2 == N on the device (constant LR, so the resumed run may extend max_steps).
half=$((steps / 2))
if run straight "$device" f32 "$steps" --set 'train.lr_schedule="constant"' &&
    run resumed "$device" f32 "$half" --set 'train.lr_schedule="constant"' &&
    run resumed-2 "$device" f32 "$steps" --set 'train.lr_schedule="constant"' \
        --set "output_dir=\"$out/resumed\"" --resume auto; then
    read -r worst n < <(compare_losses "$out/resumed/metrics.jsonl" "$out/straight/metrics.jsonl")
    if [[ "$n" == "$steps" ]] && { [[ "$device" != cpu ]] ||
        "$py" -c "import sys; sys.exit(0 if float('$worst') == 0.0 else 1)"; }; then
        record resume pass "$n steps, max relative loss difference $worst (resumed vs straight)"
    else
        record resume fail "$n of $steps steps, max relative loss difference $worst"
    fi
else
    record resume fail "a run failed (straight.log, resumed.log, resumed-2.log)"
fi

"$py" - "$results" "$out" "$device" "$steps" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, device, steps = sys.argv[2], sys.argv[3], sys.argv[4]
json.dump({"device": device, "steps": int(steps), "checks": rows}, open(f"{out}/report.json", "w"), indent=1)
with open(f"{out}/report.md", "w") as f:
    f.write(f"| check ({device}, {steps} steps) | status | detail |\n|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['check']} | {r['status']} | {r['detail']} |\n")
PY
cat "$out/report.md"
if grep -q '"status": "fail"' "$results"; then exit 1; fi
