#!/usr/bin/env bash
# Interleaved A/B of a whole server job: starts `BIN server` for each binary (in-process filter
# threads, a fresh state directory), then ROUNDS times submits the same job to each in turn with
# that binary's own client, and prints each one's median wall time and its ratio to the first.
#
#   scripts/ab-server.sh 7 /tmp/vpd-before ./target/release/vpd -- IN.mp4 -f edges
set -euo pipefail

rounds=$1
shift
bins=()
while (($#)) && [ "$1" != "--" ]; do
  bins+=("$1")
  shift
done
[ "${1:-}" = "--" ] || { echo "usage: $0 ROUNDS BIN… -- INPUT CLIENT-ARGS…" >&2; exit 2; }
shift
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

addrs=()
for i in "${!bins[@]}"; do
  mkfifo "$work/announce-$i"
  "${bins[$i]}" server --listen 127.0.0.1:0 --state-dir "$work/state-$i" --work-dir "$work/work-$i" \
    >"$work/announce-$i" 2>"$work/server-$i.log" &
  pids+=($!)
  read -r _ _ addr <"$work/announce-$i"
  addrs+=("$addr")
done

declare -A times
for ((r = 0; r < rounds; r++)); do
  for i in "${!bins[@]}"; do
    out="$work/out-$i-$r.mp4"
    start=$(date +%s.%N)
    "${bins[$i]}" client "$@" --server "${addrs[$i]}" -o "$out" --quiet >/dev/null
    end=$(date +%s.%N)
    times[$i]+="$(echo "$end - $start" | bc) "
    rm -f "$out"
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
first=$(echo "${times[0]}" | median)
for i in "${!bins[@]}"; do
  m=$(echo "${times[$i]}" | median)
  printf '%-40s median %.3f s  ratio %.3f  (%s)\n' "${bins[$i]}" "$m" "$(echo "$m / $first" | bc -l)" "${times[$i]}"
done
