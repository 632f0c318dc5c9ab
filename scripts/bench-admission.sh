#!/usr/bin/env bash
# Idle and slow peers against an honest client (issue 19), N rounds (default 3): 2000 idle
# connections (half on the job port, half on the dashboard's), 200 slowloris connections and
# 16 stalled 4 GiB uploads from 20 loopback addresses, beside one honest `vpd client` job and
# /healthz. Prints the honest job's time alone and under the attack, /healthz's answer time,
# and how many idle connections the server closed to make room. The same test runs in
# `make test` (tests/admission.rs), which also asserts the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
for _ in $(seq "$rounds"); do
  cargo nextest run --locked --release --no-capture -E 'test(idle_slow_and_stalled)' 2>&1 | grep '^admission:'
done
