#!/usr/bin/env bash
# Builds the CUDA coba-dist binary (`--features cuda,nccl`: candle's CUDA backend, the NCCL
# communicator and MPI) and strips it into target/cuda/dist/coba-dist.
#
#   scripts/build-cuda.sh [--compute-cap 90] [--jobs N] [--single-gpu]
#
# --compute-cap CC  GPU compute capability the kernels are compiled for (default 90: H100/H200,
#                   built as sm_90a; 80 for A100 clusters, 89 for L4/L40). Env: CUDA_COMPUTE_CAP.
# --jobs N          parallel nvcc and cargo jobs (default: the number of cores).
# --single-gpu      `--features cuda` only: no NCCL and no MPI (libmpi is then not needed at run
#                   time; for one-GPU machines and debugging).
#
# With `nvcc` on PATH the system CUDA toolkit is used. Otherwise the toolkit comes from NVIDIA's
# PyPI wheels pinned to CUDA 13.0.x (the set torch 2.11's cu130 wheels use; ~830 MB download,
# unpacked into target/cuda/toolkit), plus a link-time stub of libcuda: no GPU, driver or
# toolkit is needed to build. The binary links libcuda dynamically (candle's `cuda` feature), so
# it needs the NVIDIA driver to start; a CPU-only machine keeps using the default build. A cold
# build took 714-718 s on 2 cores with --jobs 2 (wheels download, then candle's kernels, most of
# it); target/cuda keeps the work between builds (~1-2 min incremental). Needs the MPI build packages too (scripts/install-deps.sh).
#
# On the GPU machine the CUDA libraries must be on LD_LIBRARY_PATH, e.g. from torch's venv:
#   SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
#   export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
set -euo pipefail
cd "$(dirname "$0")/.."
cc=${CUDA_COMPUTE_CAP:-90}
jobs=$(nproc)
features=cuda,nccl
while [[ $# -gt 0 ]]; do
    case "$1" in
        --compute-cap) cc="${2:?--compute-cap needs a value, e.g. 90}"; shift 2 ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
        --single-gpu) features=cuda; shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-cuda.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$cc" =~ ^[0-9]{2,3}$ ]]; then
    echo "build-cuda.sh: --compute-cap takes digits like 80 or 90, got '$cc'" >&2
    exit 2
fi
base=$PWD/target/cuda
export CARGO_TARGET_DIR=$base/target

# Pins: `cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.0.2` and the runtime libraries torch 2.11.0
# (cu130) resolves to; NCCL 2.28.9.
pins=(
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 nvidia-nccl-cu13==2.28.9
)

# A CUDA root from the wheels: bin/ include/ lib/ (lib64 -> lib) nvvm/, NCCL folded in,
# unversioned library names for the linker and a libcuda stub (SONAME libcuda.so.1) defining
# every driver entry point cudarc declares. The stub is never shipped: at run time the driver's
# libcuda.so.1 is loaded.
wheel_root() {
    local root=$base/toolkit
    if [[ -x $root/bin/nvcc && -f $root/lib/stubs/libcuda.so ]]; then
        echo "$root"
        return
    fi
    echo "build-cuda.sh: no nvcc on PATH; building a CUDA 13.0 root from PyPI wheels in $root" >&2
    mkdir -p "$base/wheels"
    python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$base/wheels" "${pins[@]}" >&2
    rm -rf "$root" "$base/unpacked"
    mkdir -p "$base/unpacked"
    # Python's zipfile (no unzip needed), restoring each member's permission bits (+x on nvcc).
    python3 - "$base/unpacked" "$base"/wheels/*.whl <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if ".dist-info/" in info.filename:
                continue
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)
PY
    mv "$base/unpacked/nvidia/cu13" "$root"
    cp -a "$base/unpacked/nvidia/nccl/include/." "$root/include/"
    cp -a "$base/unpacked/nvidia/nccl/lib/." "$root/lib/"
    rm -rf "$base/unpacked"
    ln -s lib "$root/lib64"
    (
        cd "$root/lib"
        ln -sf libcudart.so.13 libcudart.so
        ln -sf libcublas.so.13 libcublas.so
        ln -sf libcublasLt.so.13 libcublasLt.so
        ln -sf libcurand.so.10 libcurand.so
        ln -sf libnvrtc.so.13 libnvrtc.so
        ln -sf libnccl.so.2 libnccl.so
    )
    cargo fetch --locked >&2
    local cudarc_src
    cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
    mkdir -p "$root/lib/stubs"
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" |
        awk '{print $4}' | sort -u | awk '{print "void " $1 "(void) {}"}' >"$root/lib/stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda_stub.c"
    echo "$root"
}

if command -v nvcc >/dev/null; then
    root=$(dirname "$(dirname "$(command -v nvcc)")")
    echo "build-cuda.sh: system CUDA toolkit at $root ($(nvcc --version | grep -o 'release [0-9.]*'))"
else
    root=$(wheel_root)
    export CUDARC_CUDA_VERSION=13000
fi
export PATH=$root/bin:$PATH NVCC=$root/bin/nvcc
export CUDA_HOME=$root CUDA_PATH=$root CUDA_ROOT=$root
export LIBRARY_PATH=$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=$cc CUDAFORGE_THREADS=$jobs CARGO_BUILD_JOBS=$jobs

start=$SECONDS
cargo build --release --locked --features "$features" -p trainer --bin coba-dist
mkdir -p "$base/dist"
strip -o "$base/dist/coba-dist" "$CARGO_TARGET_DIR/release/coba-dist"
# Compressed copy for machines reached through a size-limited transfer (~17 MB instead of ~63).
gzip -9 -c "$base/dist/coba-dist" >"$base/dist/coba-dist.gz"
echo "build-cuda.sh: built (features $features) in $((SECONDS - start)) s for compute capability $cc:"
ls -la "$base/dist/coba-dist" "$base/dist/coba-dist.gz"
echo "It needs the NVIDIA driver (libcuda.so.1) and these libraries at run time:"
readelf -d "$base/dist/coba-dist" | awk '/NEEDED/ {print "  " $5}' | tr -d '[]'
