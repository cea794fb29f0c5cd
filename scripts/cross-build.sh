#!/usr/bin/env bash
# Builds the agent and the proxy for the platforms other than this machine's
# (issue 14), into target/<triple>/<profile>/:
#   scripts/cross-build.sh                       every target below, release
#   scripts/cross-build.sh --target TRIPLE ...   only these
#   scripts/cross-build.sh --profile debug       a debug build
#
# Targets: aarch64-unknown-linux-gnu (arm servers; the platform tests run it
# under qemu-user) and x86_64-pc-windows-gnu (the agent only: the proxy is a
# Linux service).
#
# rustup's toolchain has no std for these targets here (no downloads), so
# they are built with Debian's Rust 1.96 (rustc-web), whose std source
# (rust-web-src) cargo compiles for the target (-Zbuild-std; RUSTC_BOOTSTRAP
# lets a stable compiler take that flag). The native build stays on the
# rustup toolchain. Warnings in gse's own crates fail the build, as on the
# native target.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=()
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets+=("$2"); shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--target TRIPLE]... [--profile release|debug]" >&2; exit 2 ;;
  esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(aarch64-unknown-linux-gnu x86_64-pc-windows-gnu)
case "$profile" in release|debug) ;; *) echo "error: --profile is release or debug" >&2; exit 2 ;; esac

scripts/install-deps.sh --cross

export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
profile_flag=()
[ "$profile" = release ] && profile_flag=(--release)

for target in "${targets[@]}"; do
  case "$target" in
    aarch64-unknown-linux-gnu) packages=(-p gse-agent -p gse-proxy) ;;
    x86_64-pc-windows-gnu) packages=(-p gse-agent) ;;
    *) echo "error: unknown target $target (aarch64-unknown-linux-gnu, x86_64-pc-windows-gnu)" >&2; exit 2 ;;
  esac
  log="target/cross-$target.log"
  mkdir -p target
  echo "building ${packages[*]} for $target ($profile; log: $log)"
  start=$(date +%s)
  if ! /usr/bin/cargo build -Zbuild-std=std,panic_abort --target "$target" \
      "${profile_flag[@]}" "${packages[@]}" --locked >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "error: the $target build failed; the whole output is in $log" >&2
    exit 1
  fi
  # Warnings are errors for gse's own crates (std's and other crates' are
  # not ours to fix).
  if grep -q '^warning: `gse-' "$log"; then
    grep -E '^(warning|  -->)' "$log" | grep -B1 -- '--> crates/' >&2 || true
    grep '^warning: `gse-' "$log" >&2
    echo "error: warnings in gse's crates for $target (whole output: $log)" >&2
    exit 1
  fi
  echo "built for $target in $(( $(date +%s) - start )) s: target/$target/$profile/"
done
