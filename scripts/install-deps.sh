#!/usr/bin/env bash
# Installs the system packages coba-dist needs, only when they are missing, and says so.
#   OpenMPI (libopenmpi-dev, openmpi-bin): the MPI backend (rsmpi) and `mpirun` for multi-rank runs.
#   libclang-dev, pkg-config: rsmpi generates its MPI bindings with bindgen at build time.
# Debian/Ubuntu only (apt-get); elsewhere install the equivalents yourself.
set -euo pipefail

missing=()
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 \
  || missing+=(libclang-dev)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing missing system packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt-get; install these yourself: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
