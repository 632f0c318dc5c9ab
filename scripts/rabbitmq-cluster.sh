#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (and apart from) the test broker on
# 5672: rabbit1..3@localhost, AMQP on 5673-5675, Erlang distribution on 25673-25675, data and
# logs under $VPD_CLUSTER_DIR (default /tmp/vpd-rabbitmq-cluster). Plugins off (no management
# ports to collide on).
#
#   scripts/rabbitmq-cluster.sh start          # start the three nodes and join 2 and 3 to 1
#   scripts/rabbitmq-cluster.sh stop-node N    # stop node N (1-3), leaving the others running
#   scripts/rabbitmq-cluster.sh start-node N   # start node N again; it rejoins by itself
#   scripts/rabbitmq-cluster.sh status         # the cluster's view of its nodes
#   scripts/rabbitmq-cluster.sh stop           # stop every node and remove the data
#   scripts/rabbitmq-cluster.sh urls           # the --amqp list for vpd
set -euo pipefail

base=${VPD_CLUSTER_DIR:-/tmp/vpd-rabbitmq-cluster}
nodes=(1 2 3)

run_node() { # N -> runs node N in the foreground, with its own names, ports and files
  local n=$1
  export RABBITMQ_NODENAME="rabbit$n@localhost" RABBITMQ_NODE_PORT=$((5672 + n)) RABBITMQ_DIST_PORT=$((25672 + n))
  export RABBITMQ_CONFIG_FILE="$base/rabbit$n.conf" RABBITMQ_MNESIA_BASE="$base/mnesia" RABBITMQ_LOG_BASE="$base/log"
  export RABBITMQ_PID_FILE="$base/rabbit$n.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  exec rabbitmq-server
}

ctl() { # N ARGS... -> rabbitmqctl against node N
  local n=$1
  shift
  rabbitmqctl -q -n "rabbit$n@localhost" "$@"
}

start_node() { # N
  local n=$1
  mkdir -p "$base/log" "$base/mnesia"
  [ -f "$base/enabled_plugins" ] || echo '[].' >"$base/enabled_plugins"
  printf 'listeners.tcp.local = 127.0.0.1:%d\nloopback_users.guest = true\n' $((5672 + n)) >"$base/rabbit$n.conf"
  chown -R rabbitmq:rabbitmq "$base"
  (run_node "$n") >"$base/log/rabbit$n.out" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    ctl "$n" await_startup --timeout 1 >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "rabbitmq-cluster: node $n did not start; see $base/log" >&2
  return 1
}

case "${1:-}" in
  start)
    for n in "${nodes[@]}"; do start_node "$n"; done
    for n in 2 3; do
      if ! ctl "$n" cluster_status 2>/dev/null | grep -q "rabbit1@localhost"; then
        # join_cluster logs the tables it could not reach while the node was stopped: noise.
        { ctl "$n" stop_app && ctl "$n" join_cluster rabbit1@localhost && ctl "$n" start_app; } >/dev/null 2>&1
      fi
    done
    running=$(ctl 1 cluster_status --formatter json | python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["running_nodes"]))')
    echo "rabbitmq-cluster: running $running"
    ;;
  stop-node) ctl "$2" stop ;;
  start-node) start_node "$2" ;;
  status) ctl 1 cluster_status ;;
  urls)
    printf 'amqp://guest:guest@127.0.0.1:%d/%%2f,' 5673 5674 5675 | sed 's/,$/\n/'
    ;;
  stop)
    for n in "${nodes[@]}"; do ctl "$n" stop >/dev/null 2>&1 || true; done
    rm -rf "$base"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
