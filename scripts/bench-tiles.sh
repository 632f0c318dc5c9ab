#!/usr/bin/env bash
# Tiles (issue 24), `vpd run` as built, in one run:
# 1. Per-frame latency at 4K: 20 frames of 3840x2160 testsrc2, raw BGR in NUT in and out (so
#    that decoding and encoding take little of the two cores), through CHAIN (default
#    blur,sharpen,edges) on 2 filter threads with one frame in flight (--window 1), untiled
#    (--tiles off) against tiled (--tiles 2x2); the summary's dispatch-to-result latency, p50 and
#    p99, and the fps. ROUNDS rounds (default 3).
# 2. Peak memory at 8K: 8 frames of 7680x4320 through CHAIN on 2 threads, --tiles off against
#    auto; the process's maximum resident set (GNU time).
# 3. A worker's peak memory at 8K: the same 8 frames through `vpd server --amqp --tiles off|auto`
#    and one `vpd worker --threads 2 --max-frame-pixels 33177600` (the local RabbitMQ,
#    VPD_AMQP_URL), in frame mode; the worker's maximum resident set (VmHWM) after the job.
# Usage: scripts/bench-tiles.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
chain=${CHAIN:-blur,sharpen,edges}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-tiles.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
field() { python3 -c "import json, sys; d = json.load(open('$1')); print($2)"; }

ffmpeg -loglevel error -nostdin -y -f lavfi -i testsrc2=size=3840x2160:rate=25 -frames:v 20 -c:v rawvideo \
  -pix_fmt bgr24 "$out/4k.nut"
ffmpeg -loglevel error -nostdin -y -f lavfi -i testsrc2=size=7680x4320:rate=25 -frames:v 8 -c:v libx264 \
  -preset ultrafast "$out/8k.mp4"
echo "$(nproc) cores; $vpd; chain $chain"
echo "1. 4K, one frame in flight, 2 threads"
echo "round  tiles  p50 ms  p99 ms  fps"
for ((r = 1; r <= rounds; r++)); do
  for tiles in off 2x2; do
    "$vpd" run "$out/4k.nut" -f "$chain" --threads 2 --window 1 --tiles "$tiles" -o "$out/o.nut" \
      --codec rawvideo --json -q >"$out/s.json"
    printf '%5d  %5s  %6s  %6s  %4s\n' "$r" "$tiles" "$(field "$out/s.json" "round(d['latency_ms']['p50'], 1)")" \
      "$(field "$out/s.json" "round(d['latency_ms']['p99'], 1)")" "$(field "$out/s.json" "round(d['fps'], 2)")"
  done
done
echo "2. 8K, 2 threads: peak resident memory"
echo "tiles  max RSS MB  fps  how"
for tiles in off auto; do
  /usr/bin/time -f '%M' -o "$out/rss" "$vpd" run "$out/8k.mp4" -f "$chain" --threads 2 --tiles "$tiles" \
    -o "$out/o8.mp4" --json -q >"$out/s.json"
  printf '%5s  %10s  %4s  %s\n' "$tiles" "$(($(cat "$out/rss") / 1024))" "$(field "$out/s.json" "round(d['fps'], 2)")" \
    "$(field "$out/s.json" "d.get('tiles', 'untiled')")"
done
echo "3. 8K through a server and one worker (--threads 2): the worker's peak resident memory"
echo "tiles  worker max RSS MB  fps  how"
amqp=${VPD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
for tiles in off auto; do
  ns="vpd-bench-tiles-$tiles" # declared once, reused by every run of this script
  "$vpd" server --listen 127.0.0.1:0 --amqp "$amqp" --namespace "$ns" --tiles "$tiles" \
    --state-dir "$out/state-$tiles" >"$out/server.out" 2>"$out/server.err" &
  server=$!
  pids+=("$server")
  addr=
  for _ in $(seq 1 600); do
    addr=$(awk '/^listening tcp/ { print $3 }' "$out/server.out")
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$out/server.err" >&2; exit 1; }
    sleep 0.05
  done
  # Whole 8K frames are over a worker's default --max-frame-pixels (4K): raise it for them.
  "$vpd" worker --amqp "$amqp" --namespace "$ns" --threads 2 --max-frame-pixels 33177600 2>"$out/worker.err" &
  worker=$!
  pids+=("$worker")
  "$vpd" client "$out/8k.mp4" --server "$addr" -f "$chain" --split frames -o "$out/w8.mp4" --json -q >"$out/s.json"
  rss=$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$worker/status")
  kill "$worker" "$server"
  wait "$worker" "$server" 2>/dev/null || true
  printf '%5s  %17s  %4s  %s (frames by worker: %s)\n' "$tiles" "$rss" "$(field "$out/s.json" "round(d['fps'], 2)")" \
    "$(field "$out/s.json" "d.get('tiles', 'untiled')")" "$(field "$out/s.json" "d['workers']")"
done
