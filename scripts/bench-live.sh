#!/usr/bin/env bash
# Live mode's latency and its behaviour under overload (issue 23), `vpd run` as built.
# 1. Added latency: ffmpeg sends SECONDS (default 20) of 1280x720 testsrc2 at 25 fps in real
#    time (-re, x264 zerolatency, MPEG-TS over UDP on loopback); `vpd run udp://… -f motion`
#    reads it live and writes H.264; after the sender ends, SIGINT ends the job. Its summary
#    gives latency from a packet's read to its encoded packet's write, p50/p95/p99, and of that
#    the encoder's own part. ROUNDS rounds (default 3).
# 2. Overload: the chain OVERLOAD_CHAIN (default blur:ksize=31,sharpen) on one thread. Its
#    capacity C (fps) is measured first with `vpd run` on a file of the same frames; then the
#    source is sent live at 0.5, 1, 1.5, 2, 3 and 4 times C for SECONDS/2 each; for each, the
#    share of frames dropped and the latency p99. The table is printed and drawn as an SVG
#    (PLOT, default target/bench-live/overload.svg).
# Usage: scripts/bench-live.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
rounds=${2:-3}
chain=${OVERLOAD_CHAIN:-blur:ksize=31,sharpen}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-live"
plot=${PLOT:-$work/overload.svg}
mkdir -p "$work"
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-live.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"' EXIT

port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json, sys; d = json.load(open('$1')); print($2)"; }

# One live run: sends $2 s of 720p at $1 fps through chain $3 (extra vpd args after); the
# summary goes to $out/summary.json.
live_run() {
  local rate=$1 secs=$2 chain=$3 p vpd_pid
  shift 3
  p=$(port)
  "$vpd" run "udp://127.0.0.1:$p" -f "$chain" -o "$out/live.mp4" --json -q "$@" >"$out/summary.json" &
  vpd_pid=$!
  pids+=("$vpd_pid")
  # Frames sent before vpd has bound its socket would only be lost: wait for the socket.
  local hex
  hex=$(printf ':%04X ' "$p")
  for _ in $(seq 200); do grep -q "$hex" /proc/net/udp && break; sleep 0.05; done
  ffmpeg -loglevel error -nostdin -re -f lavfi -i "testsrc2=size=1280x720:rate=$rate" -t "$secs" \
    -c:v libx264 -preset ultrafast -tune zerolatency -g "$rate" -f mpegts "udp://127.0.0.1:$p?pkt_size=1316"
  kill -INT "$vpd_pid"
  wait "$vpd_pid"
}

echo "$(nproc) cores; $vpd"
echo "1. latency, 720p25 motion, vpd run, $seconds s a round"
echo "round  frames  dropped  p50 ms  p95 ms  p99 ms  encode p50 ms  encode p99 ms"
for ((r = 1; r <= rounds; r++)); do
  live_run 25 "$seconds" motion
  s="$out/summary.json"
  printf '%5d  %6s  %7s  %6s  %6s  %6s  %13s  %13s\n' "$r" "$(field "$s" "d['frames']")" \
    "$(field "$s" "d['live']['dropped']")" "$(field "$s" "round(d['live']['latency_ms']['p50'], 1)")" \
    "$(field "$s" "round(d['live']['latency_ms']['p95'], 1)")" "$(field "$s" "round(d['live']['latency_ms']['p99'], 1)")" \
    "$(field "$s" "round(d['live']['encode_ms']['p50'], 1)")" "$(field "$s" "round(d['live']['encode_ms']['p99'], 1)")"
done

echo "2. overload: $chain on one thread, 720p"
ffmpeg -loglevel error -nostdin -y -f lavfi -i testsrc2=size=1280x720:rate=25 -frames:v 150 -c:v libx264 \
  -preset ultrafast "$out/capacity.mp4"
"$vpd" run "$out/capacity.mp4" -f "$chain" --threads 1 -o "$out/capacity-out.mp4" --json -q >"$out/capacity.json"
capacity=$(field "$out/capacity.json" "d['fps']")
printf 'capacity C = %.1f fps (vpd run on a file, one thread)\n' "$capacity"
echo "factor  source fps  read  dropped  drop rate  expected 1-1/factor  p99 ms"
rows=()
for factor in 0.5 1 1.5 2 3 4; do
  rate=$(python3 -c "print(max(1, round($capacity * $factor)))")
  live_run "$rate" "$((seconds / 2))" "$chain" --threads 1
  s="$out/summary.json"
  read -r read dropped p99 < <(python3 -c "
import json; d = json.load(open('$s'))['live']
print(d['read'], d['dropped'], round(d['latency_ms']['p99'], 1))")
  rate_dropped=$(python3 -c "print(round($dropped / max(1, $read), 3))")
  expected=$(python3 -c "print(round(max(0.0, 1 - 1 / $factor), 3))")
  printf '%6s  %10s  %4s  %7s  %9s  %19s  %6s\n' "$factor" "$rate" "$read" "$dropped" "$rate_dropped" "$expected" "$p99"
  rows+=("$factor $rate_dropped $expected $p99")
done

# The plot: drop rate against the overload factor, measured and the ideal 1 - 1/factor.
python3 - "$plot" "${rows[@]}" <<'EOF'
import sys
path, rows = sys.argv[1], [r.split() for r in sys.argv[2:]]
pts = [(float(f), float(d), float(e), float(p)) for f, d, e, p in rows]
W, H, L, B, T, R = 560, 320, 56, 44, 20, 20
x = lambda f: L + (f / 4.0) * (W - L - R)
y = lambda v: H - B - v * (H - B - T)
line = lambda i: " ".join(f"{x(p[0]):.1f},{y(p[i]):.1f}" for p in pts)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
for f in range(0, 5):
    svg.append(f'<text x="{x(f):.1f}" y="{H-B+16}" text-anchor="middle">{f}</text>')
for v in (0, 0.25, 0.5, 0.75, 1):
    svg.append(f'<text x="{L-6}" y="{y(v)+4:.1f}" text-anchor="end">{int(v*100)}%</text>')
svg.append(f'<text x="{(L+W-R)/2:.0f}" y="{H-8}" text-anchor="middle">overload factor (source fps / capacity)</text>')
svg.append(f'<text x="14" y="{(T+H-B)/2:.0f}" transform="rotate(-90 14 {(T+H-B)/2:.0f})" text-anchor="middle">frames dropped</text>')
svg.append(f'<polyline points="{line(2)}" fill="none" stroke="#999" stroke-dasharray="4 3"/>')
svg.append(f'<polyline points="{line(1)}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
for p in pts:
    svg.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="3" fill="#1f6feb"><title>{p[0]}x: {p[1]*100:.1f}% dropped, p99 {p[3]} ms</title></circle>')
svg.append(f'<text x="{W-R}" y="{T+12}" text-anchor="end" fill="#1f6feb">measured</text>')
svg.append(f'<text x="{W-R}" y="{T+28}" text-anchor="end" fill="#777">ideal: 1 - 1/factor</text>')
svg.append('</svg>')
open(path, "w").write("\n".join(svg) + "\n")
EOF
echo "plot: $plot"
