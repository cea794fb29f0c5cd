#!/usr/bin/env bash
# The README's first command: installs what is missing, builds gse, and starts
# a complete single-node platform (a server with every role and N local agents)
# on the embedded store. Ctrl-C stops it.
#   scripts/quickstart.sh [--agents N] [--dir DIR] [other gse-server quickstart flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "building gse (release) ..."
cargo build --release --bins --quiet
exec target/release/gse-server quickstart "$@"
