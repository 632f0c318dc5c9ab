#!/usr/bin/env bash
# Interleaved A/B of whole commands: runs `BIN ARGS…` for each binary in turn, ROUNDS times, so
# that a busy machine slows every binary alike, then prints each one's median wall time and its
# ratio to the first. `{out}` in ARGS becomes a fresh output path per run.
#
#   scripts/ab.sh 7 /tmp/vpd-before ./target/release/vpd -- run assets/sample.mp4 -f edges -o {out} --quiet
set -euo pipefail

rounds=$1
shift
bins=()
while (($#)) && [ "$1" != "--" ]; do
  bins+=("$1")
  shift
done
[ "${1:-}" = "--" ] || { echo "usage: $0 ROUNDS BIN… -- ARGS…" >&2; exit 2; }
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A times
for ((r = 0; r < rounds; r++)); do
  for i in "${!bins[@]}"; do
    out="$work/out-$i-$r.mp4"
    args=("${@//\{out\}/$out}")
    start=$(date +%s.%N)
    "${bins[$i]}" "${args[@]}" >/dev/null
    end=$(date +%s.%N)
    times[$i]+="$(echo "$end - $start" | bc) "
    rm -rf "$out" "$out".*
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
base=$(echo "${times[0]}" | median)
printf '%-40s %10s %8s   %s\n' binary "median s" ratio "all runs (s)"
for i in "${!bins[@]}"; do
  m=$(echo "${times[$i]}" | median)
  printf '%-40s %10.3f %8.3f   %s\n' "${bins[$i]}" "$m" "$(echo "$m / $base" | bc -l)" "${times[$i]}"
done
