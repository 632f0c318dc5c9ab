#!/usr/bin/env bash
# Installs target/debian/vpd_*.deb (make deb) into a clean Debian 12 root made with
# mmdebstrap, with only what the package depends on, and runs vpd there: --version, the man
# page, a completion script, and `vpd run` on the sample (faces,motion: the cascade from
# opencv-data, H.264 with audio from FFmpeg's libraries), checked with ffprobe from outside.
# Needs root and the Debian mirror; takes a few minutes (it downloads OpenCV and FFmpeg).
#
#   make deb && scripts/deb-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls -t target/debian/vpd_*.deb | head -1)
root=$(mktemp -d /tmp/vpd-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT

started=$(date +%s)
# The package goes in with apt from inside the new root, as an operator installs it: apt
# resolves its dependencies from the mirror (mmdebstrap cannot hand dpkg a file from outside).
mmdebstrap --variant=apt --include=man-db \
  --customize-hook="copy-in $deb /tmp" \
  --customize-hook="chroot \"\$1\" apt-get install --yes --no-install-recommends /tmp/$(basename "$deb")" \
  bookworm "$root"
echo "deb-smoke: clean bookworm root with $(basename "$deb") in $(($(date +%s) - started)) s"
echo "deb-smoke: $(chroot "$root" dpkg-query -W -f='${Package} ${Version} ${Status}\n' vpd)"
chroot "$root" vpd --version
chroot "$root" getent passwd vpd
chroot "$root" dpkg-query -L vpd | grep -E 'systemd|man1/vpd-server|completions|/etc/vpd'
chroot "$root" man -P cat vpd-server 2>/dev/null | sed -n '1,4p'
cp assets/sample.mp4 "$root/tmp/sample.mp4"
chroot "$root" vpd run /tmp/sample.mp4 -f faces,motion -o /tmp/out.mp4 --json --quiet
ffprobe -v error -show_entries stream=codec_type,codec_name,nb_frames -of csv=p=0 "$root/tmp/out.mp4"
echo "deb-smoke: ok"
