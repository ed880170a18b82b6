#!/usr/bin/env bash
# `ruststacker all` against the bare broadcast server, in one run:
# starts `all` on a fresh data dir (rate limits off: the load comes from one address), runs
# `ruststacker-bench fanout --compare-bare` with the server's pid and the arguments given here
# (e.g. --users 1000 --messages 200 --procs 2, or --rooms 20 --seconds 15 --rounds 3), and stops
# the server (SIGTERM) afterwards. `idle` or `send` as the first argument runs that subcommand
# against the same fresh `all` instead (its URLs and pid filled in), e.g. `idle --connections 10000`.
#
#   scripts/bench-all.sh [fanout args...]
#   scripts/bench-all.sh idle|send [args...]
#
# Environment: RUSTSTACKER_BIN, RUSTSTACKER_BENCH_BIN (default target/release/ruststacker and
# target/release/ruststacker-bench, built when missing). Uses the default ports 8080-8084, or
# those plus RUSTSTACKER_BENCH_PORT_OFFSET (e.g. 20000) to stay clear of another deployment.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RUSTSTACKER_BIN:-target/release/ruststacker}
BENCH=${RUSTSTACKER_BENCH_BIN:-target/release/ruststacker-bench}
OFFSET=${RUSTSTACKER_BENCH_PORT_OFFSET:-0}
[ -x "$BIN" ] && [ -x "$BENCH" ] || cargo build --release -p server -p bench

meta=$((8080 + OFFSET)) send=$((8081 + OFFSET)) gateway=$((8082 + OFFSET)) registry=$((8084 + OFFSET))
for port in $meta $send $gateway $registry; do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    echo "port $port is already served; stop that server first" >&2
    exit 1
  fi
done

# One socket is one open file: thousands of them need more than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

data=$(mktemp -d)
pid=""
# The server, then its data dir (its generated JWT secret first), whatever the outcome.
stop() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$data/jwt_secret"
  rm -rf "$data"
}
trap stop EXIT
# The script's own variables are not the server's config (which refuses unknown keys).
env -u RUSTSTACKER_BIN -u RUSTSTACKER_BENCH_BIN -u RUSTSTACKER_BENCH_PORT_OFFSET \
  RUSTSTACKER_RATE_LIMITS__ENABLED=false \
  RUSTSTACKER_META__PORT=$meta RUSTSTACKER_SEND__PORT=$send \
  RUSTSTACKER_GATEWAY__PORT=$gateway RUSTSTACKER_REGISTRY__PORT=$registry \
  "$BIN" all --data-dir "$data" >"$data/all.log" 2>&1 &
pid=$!

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$gateway/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/all.log" >&2; exit 1; }
  sleep 0.1
done

case "${1:-}" in
  idle)
    shift
    "$BENCH" idle --meta "http://127.0.0.1:$meta" --gateway "ws://127.0.0.1:$gateway/api/ws" \
      --pid "$pid" "$@"
    ;;
  send)
    shift
    "$BENCH" send --meta "http://127.0.0.1:$meta" --send "http://127.0.0.1:$send" "$@"
    ;;
  *)
    "$BENCH" fanout --compare-bare --pids "$pid" --meta "http://127.0.0.1:$meta" \
      --send "http://127.0.0.1:$send" --registry "http://127.0.0.1:$registry" "$@"
    ;;
esac
