#!/usr/bin/env bash
# Builds the vpd image with podman from Containerfile and runs a job through compose.yaml:
# RabbitMQ, the server and two workers; a client (from the same image) uploads the sample and
# gets H.264 back, and the server's dashboard, /metrics and health check answer.
#
#   scripts/container-smoke.sh                    # base images made here (nothing to pull)
#   BASE=docker.io/library/debian:bookworm-slim BUILDER=docker.io/library/rust:1-bookworm \
#   RABBITMQ_IMAGE=docker.io/library/rabbitmq:3 scripts/container-smoke.sh
#
# Where base images cannot be pulled, it makes Debian 12 with mmdebstrap and imports it, uses
# it as the builder with this host's Rust toolchain and cargo cache mounted in (rustup's
# servers are out of reach too), and builds a RabbitMQ image from Debian's package. podman as
# root on these hosts needs runc and cgroupfs (crun refuses the hybrid cgroup layout) and
# ulimits within the host's hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."

# podman, compose, runc, mmdebstrap, and the CNI plugin that lets services find each other by name.
needed=(podman podman-compose runc mmdebstrap golang-github-containernetworking-plugin-dnsname dnsmasq-base curl)
missing=()
for p in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
podman=(podman --runtime runc --cgroup-manager=cgroupfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
work=$(mktemp -d)
project=vpd-smoke-$$
cleanup() {
  (cd "$work" && podman-compose --podman-args "--runtime runc --cgroup-manager=cgroupfs" -p "$project" down -v) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

build_args=()
if [ -z "${BASE:-}" ]; then
  if ! "${podman[@]}" image exists localhost/debian:bookworm; then
    mmdebstrap --quiet --variant=minbase bookworm "$work/base.tar"
    "${podman[@]}" import "$work/base.tar" localhost/debian:bookworm >/dev/null
  fi
  BASE=localhost/debian:bookworm
  BUILDER=localhost/debian:bookworm
  # The host's toolchain and cargo cache, at the paths they have here, so that the build
  # reuses what this host compiled.
  # .ci/run's cache when it exists, else the clone's own target/ (made if missing: the volume
  # needs a directory to mount).
  target=${CARGO_TARGET_DIR:-$HOME/.cache/vpd/target}
  [ -n "${CARGO_TARGET_DIR:-}" ] || [ -d "$target" ] || target="$PWD/target"
  mkdir -p "$target"
  build_args+=(--volume "$HOME/.rustup:$HOME/.rustup" --volume "$HOME/.cargo:$HOME/.cargo"
    --volume "$target:$target" --build-arg RUSTUP_HOME="$HOME/.rustup" --build-arg CARGO_HOME="$HOME/.cargo"
    --build-arg CARGO_TARGET_DIR="$target")
fi
if [ -z "${RABBITMQ_IMAGE:-}" ]; then
  RABBITMQ_IMAGE=localhost/rabbitmq:3-debian
  cat >"$work/Rabbitfile" <<EOR
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* && echo 'loopback_users = none' >/etc/rabbitmq/rabbitmq.conf
USER rabbitmq
CMD ["rabbitmq-server"]
EOR
  "${podman[@]}" build "${limits[@]}" -q -t "$RABBITMQ_IMAGE" -f "$work/Rabbitfile" "$work" >/dev/null
fi

started=$(date +%s)
# --format docker: the OCI image format has no HEALTHCHECK.
"${podman[@]}" build --format docker "${limits[@]}" --build-arg BASE="$BASE" --build-arg BUILDER="$BUILDER" "${build_args[@]}" \
  -t localhost/vpd:latest -f Containerfile . | grep -vE '^(Get:|Selecting|Preparing|Unpacking|Setting up|Processing)' | tail -25
echo "container-smoke: image built in $(($(date +%s) - started)) s"
"${podman[@]}" image inspect localhost/vpd:latest | python3 -c '
import json, sys
i = json.load(sys.stdin)[0]
print("user:", i["Config"]["User"]); print("healthcheck:", " ".join(i["Healthcheck"]["Test"]))
print("labels:", ", ".join(sorted(i["Config"]["Labels"])))'
"${podman[@]}" run --rm "${limits[@]}" localhost/vpd:latest --version

cp compose.yaml "$work/"
cat >"$work/compose.env" <<EOE
VPD_TOKEN=smoke-$$
VPD_AMQP_URL=amqp://guest:guest@rabbitmq:5672/%2f
EOE
cd "$work"
compose=(podman-compose --podman-args "--runtime runc --cgroup-manager=cgroupfs" --podman-run-args "${limits[*]}" -p "$project")
RABBITMQ_IMAGE=$RABBITMQ_IMAGE VPD_IMAGE=localhost/vpd:latest VPD_WORKERS=2 "${compose[@]}" up -d --scale worker=2 >"$work/up.log" 2>&1 ||
  { cat "$work/up.log"; exit 1; }
"${podman[@]}" ps --format '{{.Names}} {{.Status}}'
deadline=$((SECONDS + 180))
until curl -fsS http://127.0.0.1:9100/healthz >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { "${compose[@]}" logs >&2; echo "container-smoke: the server never became healthy" >&2; exit 1; }
  sleep 1
done
cd - >/dev/null
# The client from the same image, on the compose network.
mkdir -m 0777 "$work/out"
"${podman[@]}" run --rm "${limits[@]}" --network "${project}_default" -e VPD_TOKEN="smoke-$$" \
  -v "$PWD/assets:/assets:ro" -v "$work/out:/out" localhost/vpd:latest \
  client /assets/sample.mp4 --server server:9000 -f faces,motion -o /out/out.mp4 --quiet --json
ffprobe -v error -show_entries stream=codec_type,codec_name,nb_frames -of csv=p=0 "$work/out/out.mp4"
# The dashboard wants the token the server takes.
curl -fsS -H "Authorization: Bearer smoke-$$" http://127.0.0.1:8080/jobs | head -c 300; echo
curl -fsS http://127.0.0.1:9100/metrics | grep -E '^vpd_(jobs_total|workers_seen|frames_processed_total)'
"${podman[@]}" ps --format '{{.Names}} {{.Status}}'
"${podman[@]}" healthcheck run "$project"_server_1 && echo "container-smoke: healthcheck passes"
echo "container-smoke: ok"
