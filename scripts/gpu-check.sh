#!/usr/bin/env bash
# The device check: one command on a machine with one GPU that writes a markdown table and JSON
# into OUT (report.md, report.json, and each run's output directory).
#
#   scripts/gpu-check.sh OUT [--device cuda|cpu] [--binary PATH] [--steps N] [--smollm2 GGUF]
#                            [--no-bench]
#
# --device D    the device under test (default cuda); `--device cpu` is the dry run CI executes
#               (every "device" run on the CPU: the comparisons must then hold exactly).
# --binary B    the coba-dist binary (default target/cuda/dist/coba-dist for cuda,
#               target/release/coba-dist for cpu).
# --steps N     training steps of each run (default 50; even, >= 4).
# --smollm2 F   also compare SmolLM2-135M (the GGUF F) on the device with the CPU.
# --no-bench    skip the step benchmark (scripts/bench-gpu.sh).
#
# Checks, on the demo configuration (random-init ~7M Llama, the six shipped tasks, seed 42):
#   env        the binary's libraries resolve; GPU, driver and NCCL found (nvidia-smi)
#   f32        N steps f32 on the device vs on the CPU: every step's loss within 1e-3 relative
#   bf16       N steps bf16 on the device: no NaN, every task's final validation ratio < 1
#   doctor     collectives on the device (NCCL, world of 1, when the binary has it): the
#              bucketed all-reduce of f32/bf16/f64 device tensors, GPU/driver/NCCL versions
#   parity     the f32 CPU run's best model on the device vs the CPU: logits max |diff|
#              <= 1e-3, gradients <= 1e-4 relative per parameter, bf16 NLL within 1% of f32
#              (`coba-dist parity`; exact equality on the CPU)
#   resume     f32 on the device, constant LR: N/2 steps, then --resume to N == N straight
#              (max loss difference reported; 0 expected on the CPU)
#   bench      our step next to PyTorch eager, same GPU/shape/batch/dtype (bench/bench.md)
# Run from the repository root (the demo's data paths are relative). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
out="" device=cuda binary="" steps=50 smollm2="" bench=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="${2:-}"; shift 2 ;;
        --binary) binary="${2:-}"; shift 2 ;;
        --steps) steps="${2:-}"; shift 2 ;;
        --smollm2) smollm2="${2:-}"; shift 2 ;;
        --no-bench) bench=0; shift ;;
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

# doctor: the collectives on the device, world of 1: NCCL when the binary has it (the bucketed
# all-reduce of f32/bf16/f64 device tensors must give the input back), else the local backend.
backend=local
if [[ "$device" == cuda ]] && ldd "$binary" 2>/dev/null | grep -q libnccl; then backend=nccl; fi
doctor_env=()
[[ "$backend" == nccl ]] && doctor_env=(env OMPI_MCA_plm=isolated OMPI_ALLOW_RUN_AS_ROOT=1
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
if "${doctor_env[@]}" "$binary" doctor --backend "$backend" --device "$device" \
    --max-bytes $((64 << 20)) >"$out/doctor.log" 2>&1; then
    record doctor pass "$backend on $device: $(grep -c ': ok' "$out/doctor.log") checks ok; \
$(grep -m1 '^gpu:' "$out/doctor.log" || echo "no GPU line"); 64 MiB busbw \
$(awk '$1 == 67108864 {print $4 " GB/s"}' "$out/doctor.log")"
else
    record doctor fail "$backend on $device (doctor.log)"
fi

# parity: the f32 CPU run's best model on the device vs the CPU: logits (max abs difference
# <= 1e-3), gradients (relative L2 per parameter <= 1e-4), bf16 NLL within 1% of f32.
# The same for SmolLM2-135M when --smollm2 GGUF is given (no gradients: a CPU backward of it
# is slow).
parity() { # name model extra-args...
    local name=$1 model=$2
    shift 2
    if "$binary" parity --config configs/demo.toml --model "$model" --device "$device" "$@" \
        >"$out/$name.json" 2>"$out/$name.log"; then
        local verdict
        verdict=$("$py" - "$out/$name.json" "$device" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
exact = sys.argv[2] == "cpu"
ok = r["logits_max_abs_diff"] <= (0.0 if exact else 1e-3) and not r["tf32"]
g = r["grad_max_rel_diff"]
ok = ok and (g is None or g <= (0.0 if exact else 1e-4))
ok = ok and r["nll_bf16_rel_diff"] <= 0.01
grads = "skipped" if g is None else f"{g:.2e} ({r['grad_worst_parameter']})"
print(("pass" if ok else "fail") + f" logits max abs diff {r['logits_max_abs_diff']:.2e} "
      f"(max abs logit {r['logits_max_abs']:.1f}); grads max rel {grads}; NLL f32 "
      f"{r['nll_device_f32']:.4f} bf16 {r['nll_device_bf16']:.4f} "
      f"({100 * r['nll_bf16_rel_diff']:.2f}%); {r['scored_tokens']} tokens")
PY
)
        record "$name" "${verdict%% *}" "${verdict#* }"
    else
        record "$name" fail "parity failed ($name.log)"
    fi
}
if [[ -d "$out/f32-cpu/best" ]]; then
    parity parity "$out/f32-cpu/best"
else
    record parity fail "no model from the f32-cpu run"
fi
if [[ -n "$smollm2" ]]; then
    parity parity-smollm2 "$smollm2" --no-grads \
        --set 'model.tokenizer="data/tokenizers/smollm2/tokenizer.json"' \
        --set data.max_seq_len=512
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

# bench: our training step next to PyTorch eager on the same GPU (scripts/bench-gpu.sh: SmolLM2-135M
# and ~1B Llama shapes, seq 2048, bf16, the largest micro-batch both fit); a tiny shape on the CPU.
if (( bench )); then
    bench_args=(--binary "$binary" --device "$device")
    [[ "$device" == cpu ]] && bench_args+=(--shapes tiny --seq 64 --steps 1)
    if scripts/bench-gpu.sh "$out/bench" "${bench_args[@]}" >"$out/bench.log" 2>&1; then
        summary=$(grep '^| ' "$out/bench/bench.md" | tail -n +2 |
            awk -F'|' '{printf "%s: %s vs %s tok/s, MFU %s; ", $2, $5, $6, $8}')
        record bench pass "${summary% ; } (bench/bench.md)"
    else
        record bench fail "bench-gpu.sh failed (bench.log)"
    fi
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
