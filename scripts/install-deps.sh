#!/usr/bin/env bash
# Installs what vpd needs to build, run and test on Debian 12, skipping what is already there.
# Safe to run again; `make` runs it before building.
set -euo pipefail

packages=(
  pkg-config clang libclang-dev libopencv-dev # the opencv crate binds OpenCV 4.6 through libclang
  opencv-data                                 # the Haar cascade used by the faces filter
  libavcodec-dev libavformat-dev libavutil-dev # FFmpeg 5.1's libraries: every decode, encode and mux
  libswscale-dev libswresample-dev            #   (ffmpeg-next binds them through bindgen)
  libavdevice-dev                             #   V4L2 cameras (/dev/video*) as live inputs
  ffmpeg                                      # ffprobe checks outputs in the tests; ffmpeg is the benchmark baseline
  chromium                                    # the dashboard test renders the page in headless Chromium
  prometheus                                  # promtool checks /metrics and the alert rules in the tests
  systemd                                     # systemd-analyze checks the units in the tests
  lintian                                     # checks the Debian package (make deb, make test)
  python3-yaml                                # reads compose.yaml in the tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: Rust is missing; install it with rustup (https://rustup.rs) and run make again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component" >/dev/null 2>&1 || echo "install-deps: could not add the $component component" >&2
  fi
done
