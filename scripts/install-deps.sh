#!/usr/bin/env bash
# Installs what gse needs on a Debian machine, skipping what is already there.
#   scripts/install-deps.sh          build tools only (enough for the embedded platform)
#   scripts/install-deps.sh --cluster  also ZooKeeper and Redis (scripts/quickstart.sh --cluster N)
#   scripts/install-deps.sh --tests  also the real servers the test suite starts
#                                    (ZooKeeper, Redis, iproute2 and nftables for the
#                                    network-namespace tests, and the tansu Kafka broker,
#                                    built once into ${GSE_TOOLS_DIR:-~/.cache/gse})
set -euo pipefail

want_tests=0
want_cluster=0
case "${1:-}" in
  --tests) want_tests=1; want_cluster=1 ;;
  --cluster) want_cluster=1 ;;
  "") ;;
  *) echo "usage: $0 [--tests | --cluster]" >&2; exit 2 ;;
esac

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust (stable, 1.88 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "$want_cluster" = 1 ]; then
  # Debian's zookeeper pulls in a headless Java runtime.
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || missing+=(zookeeper)
fi
if [ "$want_tests" = 1 ]; then
  # The multi-host tests join network namespaces (ip) and NAT one (nft).
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  # The packaging test verifies the systemd units.
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tansu: an Apache-Kafka-compatible broker (Rust, crates.io) for the Kafka sink
# tests. Apache Kafka itself is not packaged for Debian. Built outside the
# workspace and cached; `dynostore` is needed for its in-memory storage.
if [ "$want_tests" = 1 ]; then
  tools="${GSE_TOOLS_DIR:-$HOME/.cache/gse}"
  if [ ! -x "$tools/tansu/bin/tansu" ]; then
    mkdir -p "$tools"
    echo "building tansu 0.6.0 into $tools/tansu (once; takes about 12 minutes; log: $tools/tansu-build.log)"
    if ! cargo install tansu --version 0.6.0 --locked --features dynostore \
        --root "$tools/tansu" --target-dir "$tools/tansu-target" >"$tools/tansu-build.log" 2>&1; then
      echo "error: building tansu failed; see $tools/tansu-build.log" >&2
      exit 1
    fi
    # Only the binary is needed; the build dir is about 1.5 GB.
    rm -rf "$tools/tansu-target"
  fi
fi
