#!/usr/bin/env bash
# Installs what gse needs on a Debian machine, skipping what is already there.
#   scripts/install-deps.sh          build tools only (enough for the embedded platform)
#   scripts/install-deps.sh --cluster  also ZooKeeper and Redis (scripts/quickstart.sh --cluster N)
#   scripts/install-deps.sh --tests  also the real servers the test suite starts
#                                    (ZooKeeper, Redis, iproute2 and nftables for the
#                                    network-namespace tests, and the tansu Kafka broker,
#                                    built once into ${GSE_TOOLS_DIR:-~/.cache/gse})
#   scripts/install-deps.sh --cross  what scripts/cross-build.sh needs: Debian's Rust
#                                    1.96 with std's source (rustc-web, rust-web-src:
#                                    cargo builds std for other targets), the MinGW and
#                                    aarch64 cross compilers, and qemu-user and wine to
#                                    run the arm64 and Windows agents in the platform tests
set -euo pipefail

want_tests=0
want_cluster=0
want_cross=0
case "${1:-}" in
  --tests) want_tests=1; want_cluster=1 ;;
  --cluster) want_cluster=1 ;;
  --cross) want_cross=1 ;;
  "") ;;
  *) echo "usage: $0 [--tests | --cluster | --cross]" >&2; exit 2 ;;
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

security_missing=()
if [ "$want_cross" = 1 ]; then
  # std's source must match the compiler exactly, so the cross builds use
  # Debian's compiler and its std source, both from bookworm-security.
  [ -x /usr/bin/rustc ] && /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.96' \
    || security_missing+=(rustc-web cargo-web)
  [ -d /usr/lib/rustlib/src/rust/library ] || security_missing+=(rust-web-src)
  command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || missing+=(gcc-mingw-w64-x86-64)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
  [ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
fi

if [ "${#missing[@]}" -gt 0 ] || [ "${#security_missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ "${#security_missing[@]}" -gt 0 ]; then
    echo "installing from bookworm-security: ${security_missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      -t bookworm-security "${security_missing[@]}" >/dev/null
  fi
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
