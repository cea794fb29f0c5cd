# Shared by the maintainer scripts (inlined into each by scripts/package.sh).
# Every path is under $DPKG_ROOT, so the scripts also work for
# `dpkg --root DIR --force-script-chrootless` (an image being built, the
# packaging test); then user names are resolved in DIR, never on the host.
root="${DPKG_ROOT:-}"

# The `gse` system user and group (made once; never removed).
ensure_gse_user() {
  if ! grep -q '^gse:' "$root/etc/passwd" 2>/dev/null; then
    if [ -n "$root" ]; then
      useradd --root "$root" --system --user-group --home-dir /var/lib/gse \
        --no-create-home --shell /usr/sbin/nologin gse
    else
      adduser --system --group --home /var/lib/gse --no-create-home --quiet gse
    fi
  fi
}

# uid:gid of `gse`, numeric (valid with or without DPKG_ROOT).
gse_ids() {
  uid=$(awk -F: '$1 == "gse" { print $3 }' "$root/etc/passwd")
  gid=$(awk -F: '$1 == "gse" { print $3 }' "$root/etc/group")
  echo "$uid:$gid"
}

daemon_reload() {
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
}

stop_unit() {
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl stop "$1" >/dev/null 2>&1 || true
  fi
}
