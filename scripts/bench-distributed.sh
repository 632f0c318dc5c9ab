#!/usr/bin/env bash
# vpd distributed against vpd run, on one machine and the local RabbitMQ:
#  1. frames per second of `vpd run` and of `vpd server --amqp` + 2 `vpd worker -c 1` + `vpd client`
#     on the same 300-frame 720p clip, for edges and faces, in interleaved rounds (median, and the
#     median of per-round ratios);
#  2. bytes per frame on the wire for each transport encoding (edges);
#  3. the server's peak RSS for a 300-frame and a 3000-frame job;
#  4. the server's CPU time per frame of an edges job (decode, transport, encode: the filters run
#     on the workers).
# Usage: scripts/bench-distributed.sh [ROUNDS] [CONCURRENCY]: ROUNDS default 3; CONCURRENCY of each
# worker, default the number of cores (vpd worker's own default). Needs RabbitMQ (make rabbitmq).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
concurrency=${2:-$(nproc)}
target=${CARGO_TARGET_DIR:-target}
amqp=${VPD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ns=vpd-bench # declared once, reused by every run of this script
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-distributed"
mkdir -p "$work"
clip() { # frames, file
  [ -s "$2" ] || ffmpeg -loglevel error -y -stream_loop -1 -i assets/sample.mp4 -vf scale=1280:720 \
    -frames:v "$1" -c:v libx264 -preset veryfast -crf 20 -pix_fmt yuv420p "$2"
}
clip 300 "$work/clip300.mp4"
clip 3000 "$work/clip3000.mp4"
clip 10 "$work/clip10.mp4"
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-dist.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

server_pid=
server_addr=
start_server() {
  "$vpd" server --listen 127.0.0.1:0 --amqp "$amqp" --namespace "$ns" --work-dir "$out/work" >"$out/server.out" 2>"$out/server.err" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 600); do
    server_addr=$(awk '/^listening tcp/ { print $3 }' "$out/server.out")
    [ -n "$server_addr" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.err" >&2; exit 1; }
    sleep 0.05
  done
  echo "the server did not start" >&2
  exit 1
}
stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

start_server
for i in 1 2; do
  "$vpd" worker --amqp "$amqp" --namespace "$ns" --threads "${concurrency}" 2>"$out/worker$i.err" &
  pids+=($!)
done
# Warm-up: both workers connected, caches warm.
"$vpd" client "$work/clip10.mp4" --server "$server_addr" -f edges,faces -o "$out/warm.mp4" -q

echo "clip: 300 frames, 1280x720 H.264 (the sample, scaled and looped); $rounds interleaved rounds; $(nproc) cores"
echo "distributed: 1 server + 2 workers (--threads $concurrency each) + client, RabbitMQ on the same machine"
printf '%-8s %12s %12s %14s   %s\n' filter "run fps" "dist fps" "dist/run" "per round"
for filter in edges faces; do
  run_t="" dist_t="" ratios=""
  for ((r = 1; r <= rounds; r++)); do
    s=$(now); "$vpd" run "$work/clip300.mp4" -f "$filter" -o "$out/run.mp4" -q; e=$(now)
    a=$(elapsed "$s" "$e")
    s=$(now); "$vpd" client "$work/clip300.mp4" --server "$server_addr" -f "$filter" -o "$out/dist.mp4" -q; e=$(now)
    b=$(elapsed "$s" "$e")
    run_t+="$a " dist_t+="$b "
    ratios+="$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }') "
  done
  rm=$(echo "$run_t" | median) dm=$(echo "$dist_t" | median)
  printf '%-8s %12.1f %12.1f %14.2f   %s\n' "$filter" "$(awk -v t="$rm" 'BEGIN{print 300/t}')" \
    "$(awk -v t="$dm" 'BEGIN{print 300/t}')" "$(echo "$ratios" | median)" "$ratios"
done

echo
echo "bytes per frame on the wire (edges, 300 frames; raw 720p BGR is 2764.8 kB)"
printf '%-10s %14s %14s %10s\n' transport "to workers kB" "back kB" "fps"
for t in raw lz4 auto jpeg:90; do
  json=$("$vpd" client "$work/clip300.mp4" --server "$server_addr" -f edges -o "$out/wire.mp4" -q --json --transport "$t")
  echo "$json" | awk -v t="$t" -F'[:,}]' '{
    for (i = 1; i <= NF; i++) {
      if ($i ~ /"wire_bytes_sent"/) s = $(i + 1)
      if ($i ~ /"wire_bytes_received"/) r = $(i + 1)
      if ($i ~ /"frames"/ && f == "") f = $(i + 1)
      if ($i ~ /^"fps"$/) p = $(i + 1)
    }
    printf "%-10s %14.1f %14.1f %10.1f\n", t, s / f / 1000, r / f / 1000, p
  }'
done
stop_server

echo
echo "server peak RSS (VmHWM), edges through the 2 workers"
for n in 300 3000; do
  start_server
  "$vpd" client "$work/clip$n.mp4" --server "$server_addr" -f edges -o "$out/rss.mp4" -q
  printf '%5s frames: %s\n' "$n" "$(awk '/VmHWM/ { printf "%.0f MB", $2 / 1024 }' "/proc/$server_pid/status")"
  stop_server
done

echo
echo "server CPU per frame, edges through the 2 workers (user + system time of the server process)"
start_server
hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
for ((r = 1; r <= rounds; r++)); do
  before=$(ticks)
  "$vpd" client "$work/clip300.mp4" --server "$server_addr" -f edges -o "$out/cpu.mp4" -q
  after=$(ticks)
  printf '%.2f ms ' "$(awk -v a="$before" -v b="$after" -v hz="$hz" 'BEGIN { print (b - a) / hz / 300 * 1000 }')"
done
echo
stop_server
