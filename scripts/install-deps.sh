#!/usr/bin/env bash
# Installs the system packages coba-dist needs, only when they are missing, and says so.
#   OpenMPI (libopenmpi-dev, openmpi-bin): the MPI backend (rsmpi) and `mpirun` for multi-rank runs.
#   libclang-dev, pkg-config: rsmpi generates its MPI bindings with bindgen at build time.
#   python3-numpy, g++, nodejs: the toolchains `eval --metrics pass@1` runs programs with.
# Debian/Ubuntu only (apt-get); elsewhere install the equivalents yourself.
#
# Sourcing this file (`source scripts/install-deps.sh`) defines the detection functions without
# installing anything: crates/trainer/tests/install_deps.rs tests them on fake directory trees.
set -euo pipefail

# The directories clang-sys 1.9 (bindgen's loader, `runtime` feature as rsmpi uses it) searches
# on Linux, after $LIBCLANG_PATH and `llvm-config --libdir`.
LIBCLANG_SEARCH_GLOBS=(
  "/usr/local/llvm*/lib*" "/usr/local/lib*/*/*" "/usr/local/lib*/*" "/usr/local/lib*"
  "/usr/lib*/*/*" "/usr/lib*/*" "/usr/lib*"
)

# is_bindgen_libclang FILE: true when clang-sys would load FILE as libclang. Its name must match
# libclang.so, libclang-*.so, libclang.so.* or libclang-*.so.*, but not contain "-cpp."
# (libclang-cpp.so.N is the C++ library other packages pull in: bindgen cannot use it), and it
# must be (or link to) an ELF shared object.
is_bindgen_libclang() {
  local file=$1 name
  name=$(basename -- "$file")
  case "$name" in
    *-cpp.*) return 1 ;;
    libclang.so | libclang-*.so | libclang.so.* | libclang-*.so.*) ;;
    *) return 1 ;;
  esac
  [ -f "$file" ] && [ -r "$file" ] || return 1
  [ "$(head -c 4 -- "$file" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]
}

# find_bindgen_libclang [DIR...]: prints the first libclang bindgen would load from the given
# directories (default: $LIBCLANG_PATH, `llvm-config --libdir`, then clang-sys's list), and
# fails when there is none.
find_bindgen_libclang() {
  local dirs=("$@") dir file
  if [ ${#dirs[@]} -eq 0 ]; then
    [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
    if command -v llvm-config >/dev/null 2>&1; then
      dirs+=("$(llvm-config --libdir)")
    fi
    local glob
    for glob in "${LIBCLANG_SEARCH_GLOBS[@]}"; do
      # shellcheck disable=SC2206 # the globs are meant to expand here
      dirs+=($glob)
    done
  fi
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for file in "$dir"/libclang*.so*; do
      if is_bindgen_libclang "$file"; then
        printf '%s\n' "$file"
        return 0
      fi
    done
  done
  return 1
}

install_missing() {
  local missing=()
  command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
  command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  find_bindgen_libclang >/dev/null || missing+=(libclang-dev)
  # `coba-dist eval --metrics pass@1` runs programs with the sandbox's PATH (system dirs only):
  # python3 with numpy (HumanEval-X's Python prefix imports it), g++ and node. A JDK (javac,
  # java) and go are used when present but not installed here (large; their rows say skipped).
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin python3 -c 'import numpy' \
    >/dev/null 2>&1 || missing+=(python3-numpy)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)

  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "install-deps: installing missing system packages: ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; return 1; }
    sudo="sudo"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get; install these yourself: ${missing[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ! find_bindgen_libclang >/dev/null; then
    echo "install-deps: libclang-dev is installed but no libclang.so that bindgen loads was found;" \
      "set LIBCLANG_PATH to the directory holding libclang.so" >&2
    return 1
  fi
  echo "install-deps: done" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  install_missing
fi
