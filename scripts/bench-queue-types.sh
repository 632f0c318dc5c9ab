#!/usr/bin/env bash
# Throughput through classic against quorum work queues, on the three-node cluster of
# scripts/rabbitmq-cluster.sh (start it first): for each type, a server (2 s segments) and two
# workers of one thread in a namespace of their own; ROUNDS interleaved jobs of FRAMES 720p
# frames through CHAIN, split as SPLIT (frames or segments); prints each type's median fps.
#
#   scripts/bench-queue-types.sh [VPD] [ROUNDS] [FRAMES] [CHAIN] [SPLIT]
set -euo pipefail
cd "$(dirname "$0")/.."

vpd=${1:-target/release/vpd}
rounds=${2:-5}
frames=${3:-300}
chain=${4:-edges}
split=${5:-frames}
urls=$(scripts/rabbitmq-cluster.sh urls)
work=$(mktemp -d)
pids=()
types=(classic quorum)
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for t in "${types[@]}"; do
    for q in "bench-$t-$$.tasks" "bench-$t-$$.tasks.dead"; do rabbitmqctl -q -n rabbit1@localhost delete_queue "$q" >/dev/null 2>&1 || true; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

ffmpeg -v error -f lavfi -i "testsrc2=size=1280x720:rate=25" -frames:v "$frames" -c:v libx264 -preset veryfast "$work/in.mp4"
declare -A addr
for t in "${types[@]}"; do
  mkfifo "$work/announce-$t"
  "$vpd" server --listen 127.0.0.1:0 --amqp "$urls" --namespace "bench-$t-$$" --queue-type "$t" \
    --segment-seconds 2 --state-dir "$work/state-$t" >"$work/announce-$t" 2>"$work/server-$t.log" &
  pids+=($!)
  read -r _ _ a <"$work/announce-$t"
  addr[$t]=$a
  for i in 1 2; do
    "$vpd" worker --amqp "$urls" --namespace "bench-$t-$$" --queue-type "$t" --threads 1 2>/dev/null &
    pids+=($!)
  done
done
declare -A fps
for ((r = 0; r < rounds; r++)); do
  for t in "${types[@]}"; do
    start=$(date +%s.%N)
    "$vpd" client "$work/in.mp4" --server "${addr[$t]}" -f "$chain" -o "$work/out-$t.mkv" --split "$split" --quiet >/dev/null
    fps[$t]+="$(echo "$frames / ($(date +%s.%N) - $start)" | bc -l) "
    rm -f "$work/out-$t.mkv"
  done
done
for t in "${types[@]}"; do
  median=$(tr ' ' '\n' <<<"${fps[$t]}" | grep . | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
  printf '%-8s median %6.1f fps   all: %s\n' "$t" "$median" "$(tr ' ' '\n' <<<"${fps[$t]}" | grep . | xargs printf '%.1f ')"
done
