#!/usr/bin/env bash
# Segment mode against frame mode and `vpd run`, on one machine and the local RabbitMQ. For a
# 300-frame clip at 720p and at 1080p (the sample, scaled and looped; H.264 CRF 20), and the
# filters edges and faces, in interleaved rounds:
#  - frames per second of `vpd run`, and of 1 server + 2 workers + client with --split frames
#    and with --split segments;
#  - the server's CPU time per frame (user + system of the server process, from /proc);
#  - bytes through the broker per frame, to the workers and back.
# Every mode writes 2 s segments (--segment-seconds 2), so all three encode alike.
# Usage: scripts/bench-split.sh [ROUNDS] [THREADS]: ROUNDS default 3; THREADS of each worker,
# default the number of cores. Needs RabbitMQ (make rabbitmq).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-$(nproc)}
target=${CARGO_TARGET_DIR:-target}
amqp=${VPD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ns=vpd-bench-split
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-split"
mkdir -p "$work"
clip() { # height, file
  [ -s "$2" ] || ffmpeg -loglevel error -y -stream_loop -1 -i assets/sample.mp4 -vf "scale=-2:$1" \
    -frames:v 300 -c:v libx264 -preset veryfast -crf 20 -pix_fmt yuv420p "$2"
}
clip 720 "$work/clip720.mp4"
clip 1080 "$work/clip1080.mp4"
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-split.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

"$vpd" server --listen 127.0.0.1:0 --amqp "$amqp" --namespace "$ns" --segment-seconds 2 \
  --work-dir "$out/work" --state-dir "$out/state" >"$out/server.out" 2>"$out/server.err" &
server_pid=$!
pids+=("$server_pid")
server_addr=
for _ in $(seq 1 600); do
  server_addr=$(awk '/^listening tcp/ { print $3 }' "$out/server.out")
  [ -n "$server_addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.err" >&2; exit 1; }
  sleep 0.05
done
[ -n "$server_addr" ] || { echo "the server did not start" >&2; exit 1; }
for i in 1 2; do
  "$vpd" worker --amqp "$amqp" --namespace "$ns" --threads "$threads" 2>"$out/worker$i.err" &
  pids+=($!)
done

hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
now() { date +%s.%N; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
field() { # json, key
  echo "$1" | tr ',{}' '\n\n\n' | awk -F: -v k="\"$2\"" '$1 == k { print $2; exit }'
}
# Warm-up: both workers connected, caches warm, in both modes.
for split in frames segments; do
  "$vpd" client "$work/clip720.mp4" --server "$server_addr" -f edges,faces -o "$out/warm.mp4" -q --split "$split"
done

echo "clips: 300 frames of H.264 (the sample, scaled and looped); $rounds interleaved rounds; $(nproc) cores"
echo "distributed: 1 server + 2 workers (--threads $threads each) + client, RabbitMQ on the same machine"
printf '%-6s %-6s %9s %10s %10s %9s %9s %13s %13s %12s %12s\n' size filter "run fps" "frames fps" "segs fps" \
  "frames/run" "segs/run" "srv ms/f frm" "srv ms/f seg" "kB/f frames" "kB/f segs"
for size in 720 1080; do
  for filter in edges faces; do
    declare -A t=() cpu=() bytes=()
    ratios_f="" ratios_s=""
    for ((r = 1; r <= rounds; r++)); do
      s=$(now); "$vpd" run "$work/clip$size.mp4" -f "$filter" -o "$out/run.mp4" -q --segment-seconds 2; e=$(now)
      run=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
      t[run]+="$run "
      for split in frames segments; do
        before=$(ticks)
        s=$(now)
        json=$("$vpd" client "$work/clip$size.mp4" --server "$server_addr" -f "$filter" -o "$out/$split.mp4" -q --json --split "$split")
        e=$(now)
        after=$(ticks)
        [ "$(field "$json" split | tr -d '"')" = "$split" ] || { echo "asked for $split, got: $json" >&2; exit 1; }
        took=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
        t[$split]+="$took "
        cpu[$split]+="$(awk -v a="$before" -v b="$after" -v hz="$hz" 'BEGIN { print (b - a) / hz / 300 * 1000 }') "
        sent=$(field "$json" wire_bytes_sent) received=$(field "$json" wire_bytes_received)
        bytes[$split]+="$(awk -v a="$sent" -v b="$received" 'BEGIN { print (a + b) / 300 / 1000 }') "
        if [ "$split" = frames ]; then ratios_f+="$(awk -v a="$run" -v b="$took" 'BEGIN { print a / b }') "
        else ratios_s+="$(awk -v a="$run" -v b="$took" 'BEGIN { print a / b }') "; fi
      done
    done
    fps() { awk -v t="$(echo "$1" | median)" 'BEGIN { printf "%.1f", 300 / t }'; }
    printf '%-6s %-6s %9s %10s %10s %9.2f %9.2f %13.2f %13.2f %12.1f %12.1f\n' "${size}p" "$filter" \
      "$(fps "${t[run]}")" "$(fps "${t[frames]}")" "$(fps "${t[segments]}")" \
      "$(echo "$ratios_f" | median)" "$(echo "$ratios_s" | median)" \
      "$(echo "${cpu[frames]}" | median)" "$(echo "${cpu[segments]}" | median)" \
      "$(echo "${bytes[frames]}" | median)" "$(echo "${bytes[segments]}" | median)"
    unset t cpu bytes
  done
done
