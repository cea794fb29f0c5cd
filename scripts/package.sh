#!/usr/bin/env bash
# Builds the Debian packages gse-server, gse-agent and gse-proxy into
# target/debian/ (or --out DIR), from the workspace's version and the
# shipped configs (etc/) and systemd units (packaging/systemd/), with
# dpkg-deb (part of every Debian system; no cargo-deb needed).
#
#   scripts/package.sh                   release build, then the packages
#   scripts/package.sh --profile debug   package the debug binaries already built
#   scripts/package.sh --out DIR         write the .deb files to DIR
#
# What goes where: binaries in /usr/bin; configs in /etc/gse (conffiles:
# dpkg keeps an operator's changes on upgrade); data under /var/lib/gse
# (made by the maintainer scripts); logs to the journal (the units log to
# stderr). gse-server also ships gsectl. See README "Packages".
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--profile release|debug] [--out DIR]" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo build --release --quiet -p gse-server -p gse-agent -p gse-proxy -p gsectl ;;
  debug) ;;
  *) echo "error: --profile must be release or debug, not $profile" >&2; exit 2 ;;
esac
for cmd in dpkg-deb dpkg; do
  command -v "$cmd" >/dev/null || { echo "error: $cmd not found (this script builds Debian packages)" >&2; exit 1; }
done

bin_dir="target/$profile"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# package NAME DESCRIPTION DEPENDS BINARIES... -- CONFIG
package() {
  local name="$1" description="$2" depends="$3"
  shift 3
  local bins=()
  while [ "$1" != "--" ]; do bins+=("$1"); shift; done
  local config="$2"
  local root="$work/$name"
  install -d "$root/DEBIAN" "$root/usr/bin" "$root/etc/gse" "$root/lib/systemd/system" \
    "$root/usr/share/doc/$name"
  for b in "${bins[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "error: $bin_dir/$b is missing; build it first (cargo build --bins)" >&2; exit 1; }
    install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
  done
  # The shipped config, with the packaged data directory.
  sed -e "s#\"/var/lib/gse-\([a-z]*\)#\"/var/lib/gse/\1#" \
    "etc/$config" > "$root/etc/gse/$config"
  chmod 0644 "$root/etc/gse/$config"
  install -m 0644 "packaging/systemd/$name.service" "$root/lib/systemd/system/$name.service"
  install -m 0644 README.md "$root/usr/share/doc/$name/README.md"
  printf 'gse %s\nLicense: MIT\n' "$version" > "$root/usr/share/doc/$name/copyright"
  echo "/etc/gse/$config" > "$root/DEBIAN/conffiles"
  # Maintainer scripts, with the shared helpers put in place of #COMMON#.
  for script in postinst prerm postrm; do
    if [ -f "packaging/debian/$name.$script" ]; then
      sed -e '/^#COMMON#$/{r packaging/debian/common.sh' -e 'd}' \
        "packaging/debian/$name.$script" > "$root/DEBIAN/$script"
      chmod 0755 "$root/DEBIAN/$script"
    fi
  done
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: gse developers <gse@example.invalid>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://example.invalid/gse
Description: $description
EOF
  # Debug binaries are big and only for tests: compress them fast.
  local compress=()
  [ "$profile" = debug ] && compress=(-Zgzip -z1)
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
  echo "$out/${name}_${version}_${arch}.deb"
}

package gse-server "host control platform node (BlueKing GSE compatible): agent link, API, data, alarms" \
  "libc6, adduser" gse-server gsectl -- gse-server.toml
package gse-agent "host control platform agent: tasks, files, data and plugins on this host" \
  "libc6" gse-agent -- gse-agent.toml
package gse-proxy "host control platform proxy for an isolated cloud area" \
  "libc6, adduser" gse-proxy -- gse-proxy.toml
