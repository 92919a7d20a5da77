#!/usr/bin/env bash
# The whole test suite (the README's test command). Installs missing system packages first.
# Tests build with optimised dependencies (see [profile.dev.package."*"] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked
