#!/usr/bin/env bash
# Interleaved A/B of a whole server job: starts `BIN server` for each binary (in-process filter
# threads, a fresh state directory), then ROUNDS times submits the same job to each in turn with
# that binary's own client, and prints each one's median wall time and its ratio to the first.
#
#   scripts/ab-server.sh 7 /tmp/vpd-before ./target/release/vpd -- IN.mp4 -f edges
set -euo pipefail

. "$(dirname "$0")/ab-lib.sh"
ab_parse "$@"
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
    "${bins[$i]}" client "${rest[@]}" --server "${addrs[$i]}" -o "$out" --quiet >/dev/null
    times[$i]+="$(ab_since "$start") "
    rm -f "$out"
  done
done
ab_report
