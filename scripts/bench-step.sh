#!/usr/bin/env bash
# Training-step benchmark: our Llama step (crates/trainer/benches/step.rs) next to PyTorch on
# the CPU (scripts/bench/torch_llama_step.py), same shape and batch, run alternately, one table.
#
#   scripts/bench-step.sh [--rounds 3] [--steps 5] [--threads 2]
#
# --rounds N   alternations per shape (ours, then PyTorch), N >= 1
# --steps N    timed steps per run after one warm-up step (each run reports its median), N >= 1
# --threads N  threads of both sides, N >= 1
#
# Shapes: d=256/L=6 and d=512/L=8 Llama (8 heads, SwiGLU 8/3 d rounded up to 16, vocab 8,192,
# untied head), micro-batch 8 x seq 256. Reported per shape: the median over rounds of each
# side's tokens/s and GFLOP/s (6 x params x tokens / time, a convention: it counts the embedding
# and leaves out attention scores), their ratio and the per-round ratios' range, and the peak
# RSS (ours: the binary; PyTorch: the whole Python process) next to the 16 bytes/param floor.
# Needs python3 with venv and PyPI; installs torch (TORCH_VERSION, default 2.15.0, ~5 GB with
# its CUDA libraries, ~5 min) into target/bench-venv on first use. Run it on an idle machine:
# other load slows the two sides unequally (it warns when the load average is above 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 steps=5 threads=2
usage() { sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds|--steps|--threads)
            value="${2:-}"
            if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
                echo "bench-step.sh: $1 needs a positive integer, got '${value}'" >&2
                usage >&2
                exit 2
            fi
            declare "${1#--}=$value"
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-step.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

venv=target/bench-venv
torch_version="${TORCH_VERSION:-2.15.0}"
if ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "# installing torch==$torch_version and numpy into $venv (PyPI, ~5 GB, ~5 min)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --progress-bar on "torch==$torch_version" numpy >&2
fi

echo "# building the Rust step benchmark (release)" >&2
json=$(mktemp)
out=$(mktemp)
trap 'rm -f "$json" "$out"' EXIT
if ! cargo bench -p trainer --bench step --no-run --locked --message-format=json >"$json"; then
    echo "bench-step.sh: the step benchmark did not build (cargo's messages are above)" >&2
    exit 1
fi
bin=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "step" and m.get("executable"):
        print(m["executable"])' "$json")
[[ -x "$bin" ]] || { echo "bench-step.sh: no step benchmark executable in cargo's output" >&2; exit 1; }

# Peak RSS of the PyTorch process: run the peer under runpy and print ru_maxrss after it.
torch_step() {
    "$venv/bin/python" -c 'import resource, runpy, sys
sys.argv = ["torch_llama_step.py"] + sys.argv[1:]
runpy.run_path("scripts/bench/torch_llama_step.py", run_name="__main__")
print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")' "$@" |
        tr '\n' ' '
}

# One run; stops the script with the runner's own message when it fails.
run() {
    local line
    if ! line=$("$@"); then
        echo "bench-step.sh: '$*' failed" >&2
        exit 1
    fi
    echo "$line" | tail -1
}

load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if python3 -c "import sys; sys.exit(0 if float('$load') > 0.5 else 1)"; then
    echo "# warning: load average $load before starting: other processes slow the two sides unequally" >&2
fi

for shape in "256 6 688" "512 8 1376"; do
    read -r d layers ffn <<<"$shape"
    args=(--threads "$threads" --steps "$steps" --vocab 8192 --d "$d" --layers "$layers"
          --heads 8 --ffn "$ffn" --batch 8 --seq 256)
    for r in $(seq "$rounds"); do
        echo "# d=$d L=$layers round $r/$rounds" >&2
        ours=$(run "$bin" "${args[@]}")
        echo "d=$d layers=$layers round=$r $ours" | tee -a "$out" >&2
        theirs=$(run torch_step "${args[@]}")
        echo "d=$d layers=$layers round=$r $theirs" | tee -a "$out" >&2
    done
done

python3 - "$out" "$threads" <<'PY'
import re, statistics, sys
rows, version = {}, "?"
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"([\w/]+)=([\w.+-]+)", line))
    if " candle " in line:
        side = "candle"
    else:
        side = "torch"
        version = line.split(" torch ")[1].split()[0]
    rows.setdefault((int(kv["d"]), int(kv["layers"])), {}).setdefault(side, {})[kv["round"]] = kv
print(f"\nTraining step, micro-batch 8 x seq 256, {sys.argv[2]} threads, PyTorch {version}, "
      "median over rounds\n")
print("| model | params | ours tok/s | PyTorch tok/s | ours / PyTorch | per-round ratios "
      "| ours GFLOP/s | PyTorch GFLOP/s | ours peak RSS | PyTorch peak RSS | 16 B/param floor |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (d, layers), sides in sorted(rows.items()):
    med = lambda side, key: statistics.median(float(r[key]) for r in sides[side].values())
    ratios = [float(sides["candle"][k]["tokens/s"]) / float(sides["torch"][k]["tokens/s"])
              for k in sides["candle"]]
    params = float(next(iter(sides["candle"].values()))["params"].rstrip("M"))
    ours, torch = med("candle", "tokens/s"), med("torch", "tokens/s")
    print(f"| d={d} L={layers} | {params:.2f}M | {ours:,.0f} | {torch:,.0f} | {ours / torch:.2f} "
          f"| {min(ratios):.2f}-{max(ratios):.2f} "
          f"| {med('candle', 'GFLOP/s'):.1f} | {med('torch', 'GFLOP/s'):.1f} "
          f"| {med('candle', 'peak_rss_mib'):,.0f} MiB | {med('torch', 'peak_rss_mib'):,.0f} MiB "
          f"| {params * 16 / 1.048576:,.0f} MiB |")
PY
