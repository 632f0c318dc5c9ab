#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers for the tests: VPD_TEST_AMQP_URL's host and port, by
# default 127.0.0.1:5672. When nothing answers on the local default, installs Debian's
# rabbitmq-server if it is missing and starts it detached. Safe to run again.
set -euo pipefail

url=${VPD_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
hostport=${url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
[ "$port" = "$host" ] && port=5672

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if answers; then
  exit 0
fi
if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ] || [ "$port" != 5672 ]; then
  # Only the default local broker can be started here; anything else is the caller's to run.
  echo "ensure-rabbitmq: nothing answers at $host:$port (VPD_TEST_AMQP_URL)" >&2
  exit 1
fi
if ! command -v rabbitmq-server >/dev/null; then
  echo "ensure-rabbitmq: installing rabbitmq-server"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi
echo "ensure-rabbitmq: starting rabbitmq-server"
rabbitmq-server -detached
# The broker takes a few seconds to boot; wait for it to answer, up to two minutes.
for _ in $(seq 1 240); do
  answers && exit 0
  sleep 0.5
done
echo "ensure-rabbitmq: RabbitMQ did not start within two minutes" >&2
exit 1
