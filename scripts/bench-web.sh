#!/usr/bin/env bash
# The web application's two measurements (issue 22):
# 1. An upload of SIZE_MB (default 1024) through the browser's route (`POST /api/jobs`, the
#    request the page's XHR sends: session cookie, anti-CSRF token, same Origin, raw body,
#    streamed by curl -T),
#    against the same bytes through `vpd client` over loopback, ROUNDS interleaved rounds
#    (default 3). Throughput is the server's own `upload received` figure for both paths (the
#    same clock, from the first byte to the last fsync), and the server's RSS is sampled every
#    20 ms during the upload: its growth is the peak less what it held before.
#    The bytes are random: the job fails at once when it tries to open them, so no filtering
#    shares the two cores with the next upload. The intake does not look inside an upload.
# 2. The page's first chart point after a load, with a job running: the ignored browser test
#    `first_chart_point_after_page_load` in tests/web.rs.
# Usage: scripts/bench-web.sh [SIZE_MB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
rounds=${2:-3}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
out=$(mktemp -d "${TMPDIR:-/var/tmp}/vpd-bench-web.XXXXXX")
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; [ -n "${VPD_BENCH_KEEP:-}" ] || rm -rf "$out"' EXIT

token=bench-web-token-0123456789abcdef
printf '[[client]]\nname = "bench"\ntoken = "%s"\njobs = 64\n' "$token" >"$out/tokens.toml"
chmod 600 "$out/tokens.toml"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$out/upload.mp4"

RUST_LOG=vpd=info "$vpd" server --listen 127.0.0.1:0 --preview 127.0.0.1:0 --tokens-file "$out/tokens.toml" \
  --max-upload "$((size_mb + 16))M" --state-dir "$out/state" --work-dir "$out/work" \
  >"$out/listen" 2>"$out/server.log" &
server=$!
for _ in $(seq 100); do [ "$(grep -c '^listening' "$out/listen" 2>/dev/null)" -ge 2 ] && break; sleep 0.1; done
addr=$(awk '/^listening tcp/ {print $3}' "$out/listen")
web=$(awk '/^listening preview/ {print $3}' "$out/listen")
web=${web%/}
origin=$web

# Sign in as the page does, and keep the session cookie and its anti-CSRF token.
csrf=$(curl -sf -c "$out/cookies" -H "Origin: $origin" --data-urlencode "token=$token" "$web/api/login" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["csrf"])')

rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
# Runs "$@" while sampling the server's RSS; prints "throughput_MB/s growth_MB".
measure() {
  local before peak=0 now pid count
  count=$(grep -c 'upload received' "$out/server.log" || true)
  before=$(rss)
  "$@" >/dev/null 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    now=$(rss)
    [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.02
  done
  wait "$pid" || true
  for _ in $(seq 100); do [ "$(grep -c 'upload received' "$out/server.log")" -gt "$count" ] && break; sleep 0.1; done
  local rate
  rate=$(grep 'upload received' "$out/server.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'mb_per_s="\?[0-9.]*' | tr -dc '0-9.\n' | tail -1)
  echo "$rate $(((peak - before) / 1024))"
}
web_upload() {
  curl -sf -b "$out/cookies" -H "Origin: $origin" -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/octet-stream' \
    -H "Expect:" -X POST -T "$out/upload.mp4" "$web/api/jobs?preset=anonymise&name=upload.mp4"
}
client_upload() {
  "$vpd" client "$out/upload.mp4" --server "$addr" --token "$token" -f edges -o "$out/out.mp4" --quiet
}

echo "$(nproc) cores; an upload of $size_mb MiB over loopback, $rounds interleaved rounds"
echo "round  web MB/s  web RSS growth MB  client MB/s  client RSS growth MB"
web_rates=() client_rates=() web_growth=() client_growth=()
for ((r = 1; r <= rounds; r++)); do
  read -r wr wg < <(measure web_upload)
  read -r cr cg < <(measure client_upload)
  web_rates+=("$wr") client_rates+=("$cr") web_growth+=("$wg") client_growth+=("$cg")
  printf '%5d  %8s  %17s  %11s  %20s\n' "$r" "$wr" "$wg" "$cr" "$cg"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
wm=$(echo "${web_rates[*]}" | median)
cm=$(echo "${client_rates[*]}" | median)
printf 'median: web %s MB/s, client %s MB/s, web/client %.2f; largest web RSS growth %s MB\n' "$wm" "$cm" \
  "$(awk -v a="$wm" -v b="$cm" 'BEGIN {print a / b}')" "$(echo "${web_growth[*]}" | tr ' ' '\n' | sort -g | tail -1)"
echo "targets: web/client >= 0.80, RSS growth <= 16 MB"
kill "$server" && wait "$server" 2>/dev/null || true
server=""

cargo test --release --locked --quiet --test integration -- --ignored --nocapture web::first_chart_point_after_page_load 2>&1 |
  grep '^first chart point'
