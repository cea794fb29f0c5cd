#!/usr/bin/env bash
# The README's second command (and CI's): installs what is missing, builds the
# binaries the end-to-end tests start, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
cargo build --bins --quiet
# The agent (and proxy) for arm64 and Windows; the platform tests run the
# arm64 one under qemu.
scripts/cross-build.sh
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast
else
  exec cargo test --workspace --no-fail-fast
fi
