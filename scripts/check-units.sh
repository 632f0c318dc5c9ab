#!/usr/bin/env bash
# Checks the systemd units in config/systemd/ as systemd itself reads them: `systemd-analyze
# verify` (syntax, dependencies, the ExecStart binary) and `systemd-analyze security
# --offline=yes` (each must rate "OK" or better: exposure at most 3.0), inside a scratch root
# holding the units, the binary at /usr/bin/vpd and this host's own unit library.
#
#   scripts/check-units.sh target/debug/vpd
set -euo pipefail
bin=${1:?usage: $0 PATH-TO-VPD}
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
ln "$bin" "$root/usr/bin/vpd" 2>/dev/null || cp "$bin" "$root/usr/bin/vpd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$here"/config/systemd/*.service "$root/etc/systemd/system/"
# verify only warns about an unknown key or a bad value: any word from it is a failure.
said=$(systemd-analyze verify --man=no --root="$root" "$root"/etc/systemd/system/*.service 2>&1) || {
  echo "$said" >&2
  exit 1
}
if [ -n "$said" ]; then
  echo "$said" >&2
  exit 1
fi
echo "systemd-analyze verify: $(cd "$here/config/systemd" && echo *.service) clean"
for unit in vpd-server.service vpd-worker@1.service vpd-preview.service; do
  # --threshold is on systemd's 0-100 scale: 30 is an exposure of 3.0, the top of "OK".
  systemd-analyze security --offline=yes --root="$root" --threshold=30 --no-pager "$unit" | tail -1
done
