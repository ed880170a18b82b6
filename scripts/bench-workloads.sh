#!/usr/bin/env bash
# The named workloads of docs/performance.md, each against a fresh `ruststacker all` through
# scripts/bench-all.sh (one `all` per workload: the server's users and rooms are made once and
# reused by every round). Each prints one JSON summary on stdout; the fan-out workloads alternate
# the bare server and `all` ROUNDS times and end with the median of each figure and ratio.
#
#   scripts/bench-workloads.sh WORKLOAD [extra args for its subcommand...]
#
#   big-room     1,000 sockets in one group, 1,000 messages, 16 in flight
#   many-rooms   2,000 sockets in 20 groups of 100, 64 sends in flight, 15 s
#   small-rooms  2,002 sockets: 286 one-to-one rooms and 286 groups of 5, 64 in flight, 15 s
#   fixed-rate   many-rooms' layout at RATE messages/s (default 500) for 15 s: latency compared
#                like for like, both servers keeping up
#   idle         10,000 idle sockets: server RSS per connection, against a bare server first (`idle`)
#   sends        durable sends alone, 64 in flight for 10 s (`send`)
#
# Environment: ROUNDS (default 3), RATE (fixed-rate, default 500), and bench-all.sh's
# (RUSTSTACKER_BIN, RUSTSTACKER_BENCH_BIN, RUSTSTACKER_BENCH_PORT_OFFSET).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
rate=${RATE:-500}
workload=${1:-}
[ $# -gt 0 ] && shift

case "$workload" in
  big-room)
    exec scripts/bench-all.sh --users 1000 --messages 1000 --in-flight 16 --rounds "$rounds" "$@"
    ;;
  many-rooms)
    exec scripts/bench-all.sh --users 2000 --rooms 20 --in-flight 64 --seconds 15 \
      --rounds "$rounds" "$@"
    ;;
  small-rooms)
    exec scripts/bench-all.sh --users 2002 --room-sizes 2,5 --in-flight 64 --seconds 15 \
      --rounds "$rounds" "$@"
    ;;
  fixed-rate)
    exec scripts/bench-all.sh --users 2000 --rooms 20 --in-flight 64 --rate "$rate" --seconds 15 \
      --rounds "$rounds" "$@"
    ;;
  idle)
    # The sockets are one user's: past the per-user cap `all` would close the oldest ones. And
    # registering that user with a cheap hash keeps argon2's 19 MiB buffer, which the allocator
    # returns only while the sockets connect, out of the figure.
    RUSTSTACKER_GATEWAY__MAX_CONNECTIONS_PER_USER=20000 \
    RUSTSTACKER_META__ARGON2_MEMORY_KIB=256 RUSTSTACKER_META__ARGON2_ITERATIONS=1 \
      exec scripts/bench-all.sh idle --connections 10000 --compare-bare "$@"
    ;;
  sends)
    exec scripts/bench-all.sh send --concurrency 64 --seconds 10 "$@"
    ;;
  *)
    # The comment at the top of this file is the usage.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
    ;;
esac
