#!/usr/bin/env bash
# The GPU training-step benchmark: our step (`coba-dist bench-step`) next to PyTorch eager
# (scripts/bench/torch_llama_step.py) on the same GPU, shape, sequence, micro-batch and dtype;
# one markdown table (OUT/bench.md) and the raw lines (OUT/bench.txt).
#
#   scripts/bench-gpu.sh OUT [--binary B] [--python P] [--device cuda|cpu] [--dtype bf16|f32]
#                            [--shapes smollm2,llama1b] [--seq 2048] [--steps 5]
#
# --binary B   the CUDA coba-dist (default target/cuda/dist/coba-dist; target/release/coba-dist
#              with --device cpu)
# --python P   a Python with torch (default /opt/torch/.venv/bin/python, else bench-step.sh's
#              target/bench-venv, else python3); without torch the PyTorch columns say
#              "no torch" and only our side runs
# --device D   cuda (default) or cpu (the dry run CI executes, on the `tiny` shape)
# --shapes S   comma-separated: smollm2 (SmolLM2-135M: d 576, 30 layers, 9 heads, 3 KV heads,
#              FFN 1536, vocab 49152, tied), llama1b (Llama-3.2-1B: d 2048, 16 layers, 32 heads,
#              8 KV heads, FFN 8192, vocab 128256, tied), tiny (d 64, 2 layers; for dry runs)
#
# Per shape, micro-batches are tried largest first (smollm2: 16 8 4 2 1; llama1b: 8 4 2 1);
# the first that both sides run without running out of memory is reported. MFU = 6 x params x
# tokens/s over the GPU's dense bf16 peak (H100/H200 SXM 989.4 TFLOP/s, A100 312; from
# nvidia-smi's name, or PEAK_TFLOPS). Memory: ours is the most device memory in use after a
# step (cudaMemGetInfo, context included), PyTorch's its allocator's peak (allocated, and
# reserved: what it holds).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
out="" binary="" python="" device=cuda dtype=bf16 shapes="smollm2,llama1b" seq=2048 steps=5
die() { echo "bench-gpu.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary|--python|--device|--dtype|--shapes|--seq|--steps)
            [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)" ;;&
        --binary) binary="${2:-}"; shift 2 ;;
        --python) python="${2:-}"; shift 2 ;;
        --device) device="${2:-}"; shift 2 ;;
        --dtype) dtype="${2:-}"; shift 2 ;;
        --shapes) shapes="${2:-}"; shift 2 ;;
        --seq) seq="${2:-}"; shift 2 ;;
        --steps) steps="${2:-}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "bench-gpu.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
if [[ -z "$out" ]]; then echo "bench-gpu.sh: give the output folder" >&2; usage >&2; exit 2; fi
if [[ "$device" != cuda && "$device" != cpu ]]; then
    echo "bench-gpu.sh: --device is cuda or cpu, got '$device'" >&2; exit 2
fi
[[ "$dtype" == bf16 || "$dtype" == f32 ]] || die "--dtype is bf16 or f32, got '$dtype'"
[[ "$seq" =~ ^[1-9][0-9]*$ ]] || die "--seq takes a positive integer, got '$seq'"
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--steps takes a positive integer, got '$steps'"
[[ -n "${shapes//,/}" ]] || die "--shapes names at least one shape (smollm2, llama1b, tiny)"
if [[ -n "${PEAK_TFLOPS:-}" && ! "$PEAK_TFLOPS" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    die "PEAK_TFLOPS takes a number of TFLOP/s, got '$PEAK_TFLOPS'"
fi
if [[ -z "$binary" ]]; then
    binary=target/cuda/dist/coba-dist
    [[ "$device" == cpu ]] && binary=target/release/coba-dist
fi
if [[ ! -x "$binary" ]]; then echo "bench-gpu.sh: no binary at $binary" >&2; exit 2; fi
if [[ -z "$python" ]]; then
    python=python3
    for p in /opt/torch/.venv/bin/python target/bench-venv/bin/python; do
        if [[ -x "$p" ]]; then python=$p; break; fi
    done
fi
have_torch=0
"$python" -c 'import torch' 2>/dev/null && have_torch=1
mkdir -p "$out"
raw="$out/bench.txt"
: >"$raw"

gpu=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader \
    2>/dev/null | head -1 || true)
peak=${PEAK_TFLOPS:-}
if [[ -z "$peak" ]]; then
    case "$gpu" in
        *H100*|*H200*) peak=989.4 ;;
        *A100*) peak=312 ;;
        *) peak=0 ;;
    esac
fi

peak_flag=()
[[ "$peak" != 0 ]] && peak_flag=(--peak-tflops "$peak")

shape_args() { # name -> flags and the micro-batches to try
    case "$1" in
        smollm2) echo "--vocab 49152 --d 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --tie 1|16 8 4 2 1" ;;
        llama1b) echo "--vocab 128256 --d 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --tie 1|8 4 2 1" ;;
        tiny) echo "--vocab 512 --d 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --tie 0|4 2" ;;
        *) return 1 ;;
    esac
}

IFS=',' read -r -a names <<<"$shapes"
for name in "${names[@]}"; do
    shape_args "$name" >/dev/null || die "unknown shape '$name' (smollm2, llama1b, tiny)"
done
for name in "${names[@]}"; do
    spec=$(shape_args "$name")
    read -r -a flags <<<"${spec%%|*}"
    common=("${flags[@]}" --seq "$seq" --steps "$steps" --threads "$(nproc)")
    done_shape=0
    for batch in ${spec#*|}; do
        echo "# $name: micro-batch $batch" >&2
        if ! ours=$("$binary" bench-step "${common[@]}" --batch "$batch" --device "$device" \
            --dtype "$dtype" "${peak_flag[@]}" 2>"$out/$name-$batch-ours.err"); then
            echo "# $name batch $batch: ours failed ($(tail -1 "$out/$name-$batch-ours.err"))" >&2
            continue
        fi
        theirs="torch skipped (no torch in $python)"
        if (( have_torch )); then
            if ! theirs=$("$python" scripts/bench/torch_llama_step.py "${common[@]}" \
                --batch "$batch" --device "$device" --dtype "$dtype" --peak-tflops "$peak" \
                2>"$out/$name-$batch-torch.err"); then
                echo "# $name batch $batch: PyTorch failed ($(tail -1 "$out/$name-$batch-torch.err"))" >&2
                continue
            fi
        fi
        echo "shape=$name $ours" >>"$raw"
        echo "shape=$name $theirs" >>"$raw"
        done_shape=1
        break
    done
    if (( ! done_shape )); then echo "shape=$name failed at every micro-batch" >>"$raw"; fi
done

python3 - "$raw" "$device" "$dtype" "$seq" "${gpu:-none}" "$peak" >"$out/bench.md" <<'PY'
import re, sys
raw, device, dtype, seq, gpu, peak = sys.argv[1:]
rows = {}
for line in open(raw):
    kv = dict(re.findall(r"([\w/]+)=([\w.+()/-]+)", line))
    side = "ours" if " candle " in line else "torch"
    rows.setdefault(kv["shape"], {})[side] = (kv, line)
mfu_base = f"MFU over {peak} TFLOP/s dense bf16" if float(peak) > 0 else "no peak known: no MFU"
where = gpu if gpu != "none" else "the CPU (no GPU)"
print(f"Training step on {where} ({device}), {dtype}, seq {seq}; {mfu_base}\n")
print("| shape | params | micro-batch | ours tok/s | PyTorch tok/s | ours / PyTorch "
      "| ours MFU | PyTorch MFU | ours device memory | PyTorch peak allocated (reserved) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for shape, sides in rows.items():
    if "ours" not in sides:
        print(f"| {shape} | | | failed at every micro-batch (see the .err files) | | | | | | |")
        continue
    o = sides["ours"][0]
    t = sides.get("torch", ({}, ""))[0]
    missing = "no torch" if "torch skipped" in sides.get("torch", ({}, ""))[1] else "n/a"
    ratio = (f"{float(o['tokens/s']) / float(t['tokens/s']):.2f}" if "tokens/s" in t else missing)
    mem_t = (f"{t['gpu_peak_alloc_mib']} MiB ({t['gpu_peak_reserved_mib']} MiB)"
             if "gpu_peak_alloc_mib" in t else "n/a")
    print(f"| {shape} | {o['params']} | {o['batch']} | {float(o['tokens/s']):,.0f} "
          f"| {float(t['tokens/s']):,.0f} | {ratio} | {o['mfu']} | {t.get('mfu', 'n/a')} "
          f"| {o['device_mem_mib']} MiB | {mem_t} |" if "tokens/s" in t else
          f"| {shape} | {o['params']} | {o['batch']} | {float(o['tokens/s']):,.0f} | {missing} "
          f"| {missing} | {o['mfu']} | {missing} | {o['device_mem_mib']} MiB | {missing} |")
PY
cat "$out/bench.md"
grep -q "failed at every" "$raw" && exit 1
exit 0
