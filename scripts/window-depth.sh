#!/usr/bin/env bash
# The task queue's depth over time with a fixed and with the adaptive window: two jobs at once
# through one server, one worker at full speed and one made five times slower (stopped four
# tenths of a second in every half second, as an overloaded host would be). Writes
# docs/window-depth.csv and docs/window-depth.svg, and prints each run's wall time and frames per
# worker. Needs a RabbitMQ (VPD_TEST_AMQP_URL, default guest@127.0.0.1). Usage:
#   scripts/window-depth.sh [FRAMES] [FIXED_WINDOW]
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-1500}
FIXED=${2:-64}
CHAIN=${CHAIN:-blur:ksize=41,edges}
URL=${VPD_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vpd/target}"
cargo build --release --locked --quiet --bin vpd --example queue_depth
VPD="$CARGO_TARGET_DIR/release/vpd"
DEPTH="$CARGO_TARGET_DIR/release/examples/queue_depth"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; kill -CONT "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ffmpeg -v error -f lavfi -i "testsrc2=size=640x360:rate=25" -frames:v "$FRAMES" -c:v ffv1 "$work/in.mkv"

run() { # MODE WINDOW_ARGS...
  local mode=$1; shift
  local ns="vpd-window-$mode-$$"
  local port=$((20000 + RANDOM % 20000))
  "$VPD" server --listen "127.0.0.1:$port" --amqp "$URL" --namespace "$ns" --work-dir "$work/w-$mode" \
    --state-dir "$work/s-$mode" --max-jobs 2 "$@" >"$work/server-$mode.out" 2>"$work/server-$mode.err" &
  pids+=($!)
  until grep -qs "listening tcp" "$work/server-$mode.out"; do sleep 0.05; done
  "$VPD" worker --amqp "$URL" --namespace "$ns" --threads 2 --name fast 2>/dev/null & pids+=($!)
  "$VPD" worker --amqp "$URL" --namespace "$ns" --threads 2 --name slow 2>/dev/null & local slow=$!; pids+=($slow)
  "$DEPTH" "$URL" "$ns" >"$work/depth-$mode.csv" & local sampler=$!; pids+=($sampler)
  # Both workers subscribed before the slow one starts being held back.
  until tail -n 1 "$work/depth-$mode.csv" | grep -q ',2$'; do sleep 0.05; done
  ( while kill -0 "$slow" 2>/dev/null; do kill -STOP "$slow"; sleep 0.4; kill -CONT "$slow"; sleep 0.1; done ) & pids+=($!)
  local start=$(date +%s.%N)
  for j in 1 2; do
    "$VPD" client "$work/in.mkv" --server "127.0.0.1:$port" -f "$CHAIN" -o "$work/out-$mode-$j.mkv" \
      --codec ffv1 --json -q >"$work/summary-$mode-$j.json" &
    pids+=($!)
  done
  wait "${pids[-1]}" "${pids[-2]}"
  local wall; wall=$(echo "$(date +%s.%N) - $start" | bc)
  kill "$sampler" 2>/dev/null || true
  python3 - "$mode" "$wall" "$work" <<'PY'
import json, sys
mode, wall, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
workers = {}
for j in (1, 2):
    s = json.load(open(f"{work}/summary-{mode}-{j}.json"))
    for w, n in s["workers"].items():
        name = w.split(":")[-1]
        workers[name] = workers.get(name, 0) + n
rows = [l.split(",") for l in open(f"{work}/depth-{mode}.csv").read().split()[1:]]
depths = [int(r[1]) for r in rows]
print(f"{mode}: wall {wall:.1f} s, frames by worker {workers}, queue depth max {max(depths)}, mean {sum(depths)/len(depths):.1f}")
PY
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  pids=()
  "$DEPTH" "$URL" "$ns" delete
}

run fixed --window "$FIXED"
run adaptive
python3 - "$work" "$FIXED" <<'PY'
import sys
work, fixed = sys.argv[1], sys.argv[2]
series = {}
for mode in ("fixed", "adaptive"):
    rows = [l.split(",") for l in open(f"{work}/depth-{mode}.csv").read().split()[1:]]
    series[mode] = [(float(r[0]), int(r[1])) for r in rows]
with open("docs/window-depth.csv", "w") as f:
    f.write("mode,seconds,ready\n")
    for mode, pts in series.items():
        for t, d in pts:
            f.write(f"{mode},{t:.2f},{d}\n")
W, H, L, B = 720, 300, 50, 40
tmax = max(t for pts in series.values() for t, _ in pts) or 1
dmax = max(d for pts in series.values() for _, d in pts) or 1
x = lambda t: L + t / tmax * (W - L - 20)
y = lambda d: H - B - d / dmax * (H - B - 20)
colours = {"fixed": "#c0392b", "adaptive": "#2471a3"}
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/><line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{W/2}" y="{H-8}" text-anchor="middle">seconds</text>',
       f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">tasks waiting in the queue</text>']
for i in range(5):
    d = dmax * i / 4
    out.append(f'<text x="{L-6}" y="{y(d)+4:.1f}" text-anchor="end">{d:.0f}</text>')
    t = tmax * i / 4
    out.append(f'<text x="{x(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:.0f}</text>')
for k, (mode, pts) in enumerate(series.items()):
    path = " ".join(f"{x(t):.1f},{y(d):.1f}" for t, d in pts)
    out.append(f'<polyline fill="none" stroke="{colours[mode]}" stroke-width="1.5" points="{path}"/>')
    label = f"fixed window ({fixed})" if mode == "fixed" else "adaptive window"
    out.append(f'<text x="{W-30}" y="{30+16*k}" text-anchor="end" fill="{colours[mode]}">{label}</text>')
out.append("</svg>")
open("docs/window-depth.svg", "w").write("\n".join(out) + "\n")
print("wrote docs/window-depth.svg and docs/window-depth.csv")
PY
