#!/usr/bin/env bash
# A server's memory across jobs, and what its allocator costs in speed, for each allocator:
#   builtin:  vpd as built (glibc malloc held to one arena by mallopt at start-up; the server
#             trims its heap after each job)
#   jemalloc: Debian's libjemalloc2, preloaded (replaces malloc for the whole process)
#   mimalloc: Debian's libmimalloc2.0, preloaded
# Memory: one `vpd server` runs JOBS jobs of `blur` on a 720p H.264 clip of 120 frames, one after
# the other; its RSS after each job is printed, then the last over the first.
# Speed: `vpd run --filter edges` on a 720p clip of 600 frames, ROUNDS interleaved rounds, median.
# Usage: scripts/bench-server-memory.sh [JOBS] [ROUNDS]: default 24 jobs, 3 rounds. Installs the
# two allocator libraries if apt-get can.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-24}
rounds=${2:-3}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-memory"
mkdir -p "$work"
short="$work/testsrc2-720p-120.mp4"
long="$work/testsrc2-720p-600.mp4"
[ -s "$short" ] || ffmpeg -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -frames:v 120 \
  -c:v libx264 -preset veryfast "$short"
[ -s "$long" ] || ffmpeg -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -frames:v 600 \
  -c:v libx264 -preset veryfast "$long"
libs=/usr/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
if [ ! -e "$libs/libjemalloc.so.2" ] || [ ! -e "$libs/libmimalloc.so.2" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 libmimalloc2.0 >/dev/null 2>&1 || true
fi
declare -A preload=([builtin]="" [jemalloc]="$libs/libjemalloc.so.2" [mimalloc]="$libs/libmimalloc.so.2")
variants=()
for v in builtin jemalloc mimalloc; do
  if [ -z "${preload[$v]}" ] || [ -e "${preload[$v]}" ]; then variants+=("$v"); fi
done
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench-memory.XXXXXX")
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out"' EXIT

# Runs a command with variant $1's allocator; `exec`, so that a backgrounded call's $! is vpd's pid.
with() { if [ -n "${preload[$1]}" ]; then exec env LD_PRELOAD="${preload[$1]}" "${@:2}"; else exec "${@:2}"; fi; }

echo "$(nproc) cores; server RSS in MB after each of $jobs jobs (blur, 720p, 120 frames)"
for v in "${variants[@]}"; do
  rm -f "$out/listen"
  (with "$v" "$vpd" server --listen 127.0.0.1:0 --work-dir "$out/work-$v" >"$out/listen" 2>/dev/null) &
  server=$!
  for _ in $(seq 100); do grep -q '^listening tcp' "$out/listen" 2>/dev/null && break; sleep 0.1; done
  addr=$(awk '/^listening tcp/ {print $3}' "$out/listen")
  rss=()
  for ((j = 1; j <= jobs; j++)); do
    "$vpd" client "$short" --server "$addr" -f blur -o "$out/out.mp4" --quiet >/dev/null
    rss+=("$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$server/status")")
  done
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
  printf '%-9s last/first %.2f   %s\n' "$v" "$(awk -v a="${rss[0]}" -v b="${rss[-1]}" 'BEGIN {print b / a}')" "${rss[*]}"
done

echo "vpd run --filter edges, 720p, 600 frames: median of $rounds interleaved rounds"
declare -A times peak
for ((r = 1; r <= rounds; r++)); do
  for v in "${variants[@]}"; do
    measured=$( (with "$v" /usr/bin/time -f '%e %M' "$vpd" run "$long" --filter edges -o "$out/edges.mp4" --quiet) 2>&1 | tail -1)
    times[$v]+="${measured% *} "
    peak[$v]+="$((${measured#* } / 1024)) "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
for v in "${variants[@]}"; do
  printf '%-9s median %.2f s   peak RSS median %s MB   runs (s): %s\n' "$v" "$(echo "${times[$v]}" | median)" \
    "$(echo "${peak[$v]}" | median)" "${times[$v]}"
done
echo "target: builtin last/first <= 1.3"
