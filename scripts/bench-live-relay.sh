#!/usr/bin/env bash
# A live stream through a server (issue 23): `vpd client udp://… --server` against `vpd run`
# on the same stream, in the same run, `vpd` as built.
# ffmpeg sends SECONDS (default 20) of 1280x720 testsrc2 at 25 fps in real time (-re, x264
# zerolatency, MPEG-TS over UDP on loopback) to:
#   run      `vpd run udp://… -f motion` (the reference: no relay);
#   threads  `vpd client udp://… --server` to a server filtering on its own 2 threads;
#   workers  the same to a server with `--amqp` and two workers of one thread each, through the
#            RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
# After the sender ends, SIGINT ends the run or the client. Each summary gives the latency from
# a packet's read to its encoded packet's write at the job (p50/p99), and for a client the end
# to end latency, from its own read of the input packet to its write of the result's.
# ROUNDS rounds (default 3) of the three.
# Usage: scripts/bench-live-relay.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
rounds=${2:-3}
amqp=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-relay.XXXXXX")
ns=vpd-bench-relay
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$out"' EXIT

port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts a server on a free port with extra args.
server() {
  local name=$1
  shift
  "$vpd" server --listen 127.0.0.1:0 --state-dir "$out/$name-state" --work-dir "$out/$name-work" "$@" \
    >"$out/$name.addr" 2>"$out/$name.log" &
  pids+=($!)
}

# The address server $1 listens on, once it does.
address() {
  for _ in $(seq 200); do grep -q '^listening tcp' "$out/$1.addr" && break; sleep 0.05; done
  sed -n 's/^listening tcp //p' "$out/$1.addr" | head -1
}

# One live run of `vpd $@` reading udp://127.0.0.1:PORT (the word PORT in the args); the
# summary goes to $out/summary.json.
live_run() {
  local p pid args=()
  p=$(port)
  for a in "$@"; do args+=("${a//PORT/$p}"); done
  "$vpd" "${args[@]}" -o "$out/live.mp4" --json -q >"$out/summary.json" &
  pid=$!
  pids+=("$pid")
  local hex
  hex=$(printf ':%04X ' "$p")
  for _ in $(seq 200); do grep -q "$hex" /proc/net/udp && break; sleep 0.05; done
  ffmpeg -loglevel error -nostdin -re -f lavfi -i "testsrc2=size=1280x720:rate=25" -t "$seconds" \
    -c:v libx264 -preset ultrafast -tune zerolatency -g 25 -f mpegts "udp://127.0.0.1:$p?pkt_size=1316"
  kill -INT "$pid"
  wait "$pid"
}

server threads --threads 2
server workers --amqp "$amqp" --namespace "$ns"
local_addr=$(address threads)
remote_addr=$(address workers)
for w in 1 2; do
  "$vpd" worker --amqp "$amqp" --namespace "$ns" --threads 1 >/dev/null 2>"$out/worker$w.log" &
  pids+=($!)
done
sleep 2

echo "$(nproc) cores; $vpd"
echo "720p25 motion, $seconds s a round"
echo "round  how      frames  dropped  job p50 ms  job p99 ms  end-to-end p50 ms  end-to-end p99 ms"
row() {
  python3 - "$out/summary.json" "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); l = d["live"]; e = l.get("end_to_end_ms") or {}
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"{int(sys.argv[3]):5d}  {sys.argv[2]:7s}  {d['frames']:6d}  {l['dropped']:7d}  {f(l['latency_ms']['p50']):>10s}  "
      f"{f(l['latency_ms']['p99']):>10s}  {f(e.get('p50')):>17s}  {f(e.get('p99')):>17s}")
EOF
}
for ((r = 1; r <= rounds; r++)); do
  live_run run udp://127.0.0.1:PORT -f motion
  row run "$r"
  live_run client udp://127.0.0.1:PORT --server "$local_addr" -f motion
  row threads "$r"
  live_run client udp://127.0.0.1:PORT --server "$remote_addr" -f motion
  row workers "$r"
done
