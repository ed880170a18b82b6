#!/usr/bin/env bash
# `ruststacker all` against the bare broadcast server, in one run:
# starts `all` on a fresh data dir (rate limits off: the load comes from one address), runs
# `ruststacker-bench fanout --compare-bare` with the server's pid and the arguments given here
# (e.g. --users 1000 --messages 200 --procs 2), and stops the server (SIGTERM) afterwards.
#
#   scripts/bench-all.sh [fanout args...]
#
# Environment: RUSTSTACKER_BIN, RUSTSTACKER_BENCH_BIN (default target/release/ruststacker and
# target/release/ruststacker-bench, built when missing). Uses the default ports 8080-8084.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RUSTSTACKER_BIN:-target/release/ruststacker}
BENCH=${RUSTSTACKER_BENCH_BIN:-target/release/ruststacker-bench}
[ -x "$BIN" ] && [ -x "$BENCH" ] || cargo build --release -p server -p bench

for port in 8080 8081 8082 8084; do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    echo "port $port is already served; stop that server first" >&2
    exit 1
  fi
done

data=$(mktemp -d)
# The script's own variables are not the server's config (which refuses unknown keys).
env -u RUSTSTACKER_BIN -u RUSTSTACKER_BENCH_BIN RUSTSTACKER_RATE_LIMITS__ENABLED=false \
  "$BIN" all --data-dir "$data" >"$data/all.log" 2>&1 &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT

for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:8082/health >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/all.log" >&2; exit 1; }
  sleep 0.1
done

"$BENCH" fanout --compare-bare --pids "$pid" "$@"
