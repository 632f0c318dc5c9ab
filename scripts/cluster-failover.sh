#!/usr/bin/env bash
# A job survives the loss of the RabbitMQ node its server is connected to. Against the
# three-node cluster of scripts/rabbitmq-cluster.sh (start it first), with quorum queues: a
# server and two workers are given the three nodes; a 720p job of SECONDS seconds runs, split
# as SPLIT (segments by default, 2 s each; or frames); once it is under way the first node,
# which the server (and every worker) connected to, is stopped. The job must complete, with the
# frames `vpd run` writes. The node is started again at the end.
#
#   scripts/rabbitmq-cluster.sh start && scripts/cluster-failover.sh [VPD] [SECONDS] [SPLIT]
set -euo pipefail
cd "$(dirname "$0")/.."

vpd=${1:-target/release/vpd}
seconds=${2:-20}
split=${3:-segments}
urls=$(scripts/rabbitmq-cluster.sh urls)
ns="failover-$$"
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  scripts/rabbitmq-cluster.sh start-node 1 >/dev/null 2>&1 || true
  for q in "$ns.tasks" "$ns.tasks.dead"; do rabbitmqctl -q -n rabbit2@localhost delete_queue "$q" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ffmpeg -v error -f lavfi -i "testsrc2=size=1280x720:rate=25" -t "$seconds" -c:v libx264 -preset veryfast "$work/in.mp4"
chain="blur:ksize=9,edges"
"$vpd" run "$work/in.mp4" -f "$chain" -o "$work/ref.mkv" --segment-seconds 2 --quiet

mkfifo "$work/announce"
"$vpd" server --listen 127.0.0.1:0 --amqp "$urls" --namespace "$ns" --queue-type quorum \
  --segment-seconds 2 --state-dir "$work/state" >"$work/announce" 2>"$work/server.log" &
pids+=($!)
read -r _ _ addr <"$work/announce"
for i in 1 2; do
  "$vpd" worker --amqp "$urls" --namespace "$ns" --queue-type quorum --threads 1 2>"$work/worker$i.log" &
  pids+=($!)
done

start=$(date +%s.%N)
# A job that has not ended long after vpd run's time is stuck: that is a failure too.
timeout $((seconds * 4 + 60)) "$vpd" client "$work/in.mp4" --server "$addr" -f "$chain" -o "$work/out.mkv" --split "$split" --json \
  >"$work/summary.json" 2>"$work/client.log" &
client=$!
# Under way: a quarter of the job's frames at the rate vpd run reached, or 5 s.
sleep 5
scripts/rabbitmq-cluster.sh stop-node 1
stopped=$(echo "$(date +%s.%N) - $start" | bc)
echo "cluster-failover: stopped rabbit1@localhost ${stopped%.*} s into the job"
keep_logs() {
  mkdir -p "${VPD_FAILOVER_LOGS:-/tmp/vpd-failover-logs}"
  cp "$work"/*.log "$work/summary.json" "${VPD_FAILOVER_LOGS:-/tmp/vpd-failover-logs}/"
  echo "cluster-failover: the logs are in ${VPD_FAILOVER_LOGS:-/tmp/vpd-failover-logs}" >&2
}
if ! wait "$client"; then
  echo "cluster-failover: FAILED: the job did not complete" >&2
  keep_logs
  exit 1
fi
took=$(echo "$(date +%s.%N) - $start" | bc)
frames=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["frames"], s.get("failed_frames", 0), s.get("retries", 0), s.get("split", "?"))' "$work/summary.json")
read -r done failed retries ran <<<"$frames"
ffmpeg -v error -i "$work/ref.mkv" -f framemd5 - | grep -v '^#' >"$work/ref.md5"
ffmpeg -v error -i "$work/out.mkv" -f framemd5 - | grep -v '^#' >"$work/out.md5"
if ! cmp -s <(cut -d, -f6 "$work/ref.md5") <(cut -d, -f6 "$work/out.md5"); then
  echo "cluster-failover: FAILED: the frames differ from vpd run's ($done frames, $failed failed," \
    "$(wc -l <"$work/ref.md5") and $(wc -l <"$work/out.md5") decoded; first differing:" \
    "$(diff <(cut -d, -f6 "$work/ref.md5") <(cut -d, -f6 "$work/out.md5") | head -1))" >&2
  keep_logs
  exit 1
fi
echo "cluster-failover: the job ($ran) completed in ${took%.*} s: $done frames, $failed failed, $retries redelivered; every frame is vpd run's"
grep -h "lost RabbitMQ\|reconnect\|later RabbitMQ node" "$work/server.log" "$work"/worker*.log | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200 | head -6
