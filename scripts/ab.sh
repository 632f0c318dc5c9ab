#!/usr/bin/env bash
# Interleaved A/B of whole commands: runs `BIN ARGS…` for each binary in turn, ROUNDS times, so
# that a busy machine slows every binary alike, then prints each one's median wall time and its
# ratio to the first. `{out}` in ARGS becomes a fresh output path per run.
#
#   scripts/ab.sh 7 /tmp/vpd-before ./target/release/vpd -- run assets/sample.mp4 -f edges -o {out} --quiet
set -euo pipefail

. "$(dirname "$0")/ab-lib.sh"
ab_parse "$@"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A times
for ((r = 0; r < rounds; r++)); do
  for i in "${!bins[@]}"; do
    out="$work/out-$i-$r.mp4"
    args=("${rest[@]//\{out\}/$out}")
    start=$(date +%s.%N)
    "${bins[$i]}" "${args[@]}" >/dev/null
    times[$i]+="$(ab_since "$start") "
    rm -rf "$out" "$out".*
  done
done
ab_report
