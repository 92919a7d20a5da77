#!/usr/bin/env bash
# Training-step benchmark: our Llama step (crates/trainer/benches/step.rs) next to PyTorch on
# the CPU (scripts/bench/torch_llama_step.py), same shape and batch, run alternately, one table.
#
#   scripts/bench-step.sh [--rounds 3] [--steps 5] [--threads 2]
#
# Shapes: d=256/L=6 and d=512/L=8 Llama (8 heads, SwiGLU 8/3 d rounded to 16, vocab 8,192,
# untied head), micro-batch 8 x seq 256. Reported per shape: the median over rounds of each
# side's median step time, tokens/s, GFLOP/s (6 x params x tokens / time), the ratio, and the
# peak RSS next to the 16 bytes/param floor (weights + grads + two AdamW moments in f32).
# Installs torch into target/bench-venv on first use (PyPI wheel, ~3 GB, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 steps=5 threads=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        *) echo "bench-step.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

venv=target/bench-venv
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "# installing torch into $venv (PyPI wheel, a few minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch
fi

echo "# building the Rust step benchmark (release)" >&2
bin=$(cargo bench -p trainer --bench step --no-run --locked --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "step" and m.get("executable"):
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "bench-step.sh: the step benchmark did not build" >&2; exit 1; }

# Peak RSS of the PyTorch process: run the peer under runpy and print ru_maxrss after it.
torch_step() {
    "$venv/bin/python" -c 'import resource, runpy, sys
sys.argv = ["torch_llama_step.py"] + sys.argv[1:]
runpy.run_path("scripts/bench/torch_llama_step.py", run_name="__main__")
print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")' "$@" | tr '\n' ' '
    echo
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for shape in "256 6 688" "512 8 1376"; do
    read -r d layers ffn <<<"$shape"
    args=(--threads "$threads" --steps "$steps" --vocab 8192 --d "$d" --layers "$layers"
          --heads 8 --ffn "$ffn" --batch 8 --seq 256)
    for r in $(seq "$rounds"); do
        echo "# d=$d L=$layers round $r/$rounds" >&2
        echo "d=$d layers=$layers $("$bin" "${args[@]}" | tail -1)" | tee -a "$out" >&2
        echo "d=$d layers=$layers $(torch_step "${args[@]}" | tail -1)" | tee -a "$out" >&2
    done
done

python3 - "$out" "$threads" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"([\w/]+)=([\w.+-]+)", line))
    side = "candle" if " candle " in line else "torch"
    rows.setdefault((int(kv["d"]), int(kv["layers"])), {}).setdefault(side, []).append(kv)
print(f"\nTraining step, micro-batch 8 x seq 256, {sys.argv[2]} threads, median over rounds\n")
print("| model | params | ours tok/s | PyTorch tok/s | ours / PyTorch | ours GFLOP/s | PyTorch GFLOP/s | ours peak RSS | PyTorch peak RSS | 16 B/param floor |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (d, layers), sides in sorted(rows.items()):
    med = lambda side, key: statistics.median(float(r[key]) for r in sides[side])
    params = float(sides["candle"][0]["params"].rstrip("M"))
    ours, torch = med("candle", "tokens/s"), med("torch", "tokens/s")
    print(f"| d={d} L={layers} | {params:.2f}M | {ours:,.0f} | {torch:,.0f} | {ours / torch:.2f} "
          f"| {med('candle', 'GFLOP/s'):.1f} | {med('torch', 'GFLOP/s'):.1f} "
          f"| {med('candle', 'peak_rss_mib'):,.0f} MiB | {med('torch', 'peak_rss_mib'):,.0f} MiB "
          f"| {params * 16 / 1.048576:,.0f} MiB |")
PY
