#!/usr/bin/env bash
# 100,000 authenticated sockets over six gateway processes (docs/scaling.md), against a fleet of
# six bare servers holding the same sockets in the same run:
#
#  1. scripts/cluster.sh up with HK_GATEWAYS gateways (registry, meta, two Send instances) on a
#     database and Redis key prefix of its own, ports moved by HK_PORT_OFFSET;
#  2. `broadcast`: HK_SOCKETS users (registered, logged in, placed by the registry: each socket
#     asks `/registry/gateway/available`) in groups of HK_GROUP, and one message to every group,
#     all sent at once: one broadcast reaching every socket, its time to reach all the run's
#     `duration_secs`; alternated HK_ROUNDS times with HK_GATEWAYS bare servers (ports
#     HK_BARE_PORT...) holding the same sockets in the same rooms, each message posted to each.
#     HK_GROUP=100000 makes it one group of 100,000 (docs/scaling.md has both runs);
#  3. `room`: HK_ROOM users in one group (default 10,000) with messages at HK_ROOM_RATE per second
#     for HK_ROOM_SECONDS, against one bare server, HK_ROUNDS rounds;
#  4. `sends`: one Send instance's durable sends per second (`ruststacker-bench send`, 64 in
#     flight, HK_SEND_SECONDS);
#  5. scripts/cluster.sh down; the database and Redis keys dropped.
# Before and after each step every cluster process's RSS and CPU time go to
# HK_OUT/processes-*.txt.
# The client sockets come from HK_CLIENT_PROCS processes bound to 127.0.0.10-127.0.0.40 (one
# process may open 20,000 files here, one source address has ~28,000 ports per destination).
#
#   scripts/hundred-k.sh            the whole run (summaries in HK_OUT, default ./hundred-k)
#   scripts/hundred-k.sh small      the same at 600 sockets over 3 gateways in groups of 100 and a
#                                   room of 300, one round (a check that the script still works)
#
# BENCHMARK ONLY: the run lowers the password hash cost (meta.argon2_memory_kib 256,
# meta.argon2_iterations 1) so that 100,000 registrations take a minute and not an hour of CPU,
# raises meta.max_group_members to the largest group's size, turns the per-IP rate limits off and lets
# one address hold as many HTTP sockets as a listener takes (http.max_connections_per_ip 1024:
# the clients' registry calls and all six gateways' route reports come from 127.0.0.1). Never
# deploy with these settings. Nine processes use the database: each one's pool is HK_DB_POOL (8)
# connections, so that all fit a MariaDB's default max_connections (151) beside other users.
#
# Environment: HK_SOCKETS (100000), HK_GATEWAYS (6), HK_CLIENT_PROCS (8),
# HK_ROUNDS (1), HK_ROOM (10000; 0 skips the room), HK_ROOM_RATE (20), HK_ROOM_SECONDS (20),
# HK_SETTLE (seconds between the last connect and the first broadcast; SOCKETS/2000 + 5),
# HK_SEND_SECONDS (10), HK_GROUP (members per group of the broadcast, 1000),
# HK_PORT_OFFSET (5000: registry 13084, meta 13080, send 13081 and 13181, gateway k on
# 13082 + (k-1)*100), HK_BARE_PORT (45000), HK_OUT (./hundred-k), HK_DB (hk_<random>),
# HK_PREFIX (hk<random>), RUSTSTACKER_BIN and RUSTSTACKER_BENCH_BIN (default: HK_PROFILE's builds
# in the cargo target dir, built when missing; HK_PROFILE is release, or debug for `small` in CI).
#
# `scripts/hundred-k.sh probe` is the `--probe` the runs use: the services' database calls (from
# their /metrics, by storage operation) and MariaDB's statement counters, as `NAME NUMBER` lines.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ports.sh

OFFSET=${HK_PORT_OFFSET:-5000}
GATEWAYS=${HK_GATEWAYS:-6}

probe() {
  local ports=($((8080 + OFFSET)) $((8081 + OFFSET)) $((8181 + OFFSET)))
  for k in $(seq 1 "$GATEWAYS"); do ports+=($((8082 + (k - 1) * 100 + OFFSET))); done
  for p in "${ports[@]}"; do curl -fsS "http://127.0.0.1:$p/metrics" || true; done \
    | sed -n 's/^ruststacker_db_call_duration_seconds_count{op="\([a-z_]*\)".*} \([0-9.e+]*\)$/db_calls.\1 \2/p'
  # Server-wide: other databases' statements count too (see docs/scaling.md).
  mariadb -h 127.0.0.1 -uroot -N -B -e "SHOW GLOBAL STATUS WHERE Variable_name IN
    ('Questions','Com_select','Com_insert','Com_update','Com_delete','Com_commit',
     'Innodb_rows_inserted','Innodb_rows_updated','Innodb_rows_read')" \
    | awk '{print "mysql." tolower($1), $2}'
}

if [ "${1:-}" = probe ]; then probe; exit 0; fi

if [ "${1:-}" = small ]; then
  : "${HK_SOCKETS:=600}" "${HK_GATEWAYS:=3}" "${HK_CLIENT_PROCS:=3}"
  : "${HK_ROOM:=300}" "${HK_ROOM_SECONDS:=5}" "${HK_SEND_SECONDS:=2}" "${HK_GROUP:=100}"
  GATEWAYS=$HK_GATEWAYS
elif [ -n "${1:-}" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
fi
SOCKETS=${HK_SOCKETS:-100000}
PROCS=${HK_CLIENT_PROCS:-8}
ROUNDS=${HK_ROUNDS:-1}
ROOM=${HK_ROOM:-10000}
ROOM_RATE=${HK_ROOM_RATE:-20}
ROOM_SECONDS=${HK_ROOM_SECONDS:-20}
BARE_PORT=${HK_BARE_PORT:-45000}
# After the connect burst, each new connection's sync (its rooms, what it missed) must be over
# before a broadcast measures the push path: about 2,000 connections a second here.
SETTLE=${HK_SETTLE:-$(( SOCKETS / 2000 + 5 ))}
SEND_SECONDS=${HK_SEND_SECONDS:-10}
GROUP=${HK_GROUP:-1000}
OUT=${HK_OUT:-./hundred-k}
id=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
DB=${HK_DB:-hk_$id}
PREFIX=${HK_PREFIX:-hk$id}

if [ -z "${RUSTSTACKER_BIN:-}" ] || [ -z "${RUSTSTACKER_BENCH_BIN:-}" ]; then
  profile=${HK_PROFILE:-release}
  target=$(target_dir)/$profile
  [ -x "$target/ruststacker" ] && [ -x "$target/ruststacker-bench" ] \
    || nice -n 10 cargo build $([ "$profile" = release ] && echo --release) -p server -p bench --bins
  : "${RUSTSTACKER_BIN:=$target/ruststacker}" "${RUSTSTACKER_BENCH_BIN:=$target/ruststacker-bench}"
fi
BENCH=$RUSTSTACKER_BENCH_BIN
# The services take every RUSTSTACKER_* variable for config and refuse one they do not know.
unset RUSTSTACKER_BENCH_BIN
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

export RUSTSTACKER_BIN RUSTSTACKER_CLUSTER_DIR="$OUT/cluster" RUSTSTACKER_CLUSTER_DB="$DB" \
  RUSTSTACKER_CLUSTER_PREFIX="$PREFIX" RUSTSTACKER_CLUSTER_PORT_OFFSET="$OFFSET" \
  RUSTSTACKER_CLUSTER_GATEWAYS="$GATEWAYS"
# Benchmark only (see the top of this file).
biggest=$(( GROUP > ROOM ? GROUP : ROOM ))
export RUSTSTACKER_RATE_LIMITS__ENABLED=false RUSTSTACKER_META__ARGON2_MEMORY_KIB=256 \
  RUSTSTACKER_META__ARGON2_ITERATIONS=1 RUSTSTACKER_META__MAX_GROUP_MEMBERS=$biggest \
  RUSTSTACKER_HTTP__MAX_CONNECTIONS_PER_IP=1024 RUSTSTACKER_MYSQL__MAX_CONNECTIONS=${HK_DB_POOL:-8}
# The registry takes every client's `available` and every gateway's route reports and heartbeats,
# all from 127.0.0.1: 1,024 sockets were not enough at 91,000 connected (the gateways' heartbeats
# were refused too). It alone gets 8,192 (it holds no WebSockets, so its open files allow it).
export RUSTSTACKER_CLUSTER_ENV_REGISTRY="RUSTSTACKER_HTTP__MAX_CONNECTIONS=8192 RUSTSTACKER_HTTP__MAX_CONNECTIONS_PER_IP=8192"

cleanup() {
  scripts/cluster.sh down >/dev/null 2>&1 || true
  mariadb -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null || true
  redis-cli -h 127.0.0.1 --scan --pattern "$PREFIX*" 2>/dev/null \
    | xargs -r -n 1000 redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
}
trap cleanup EXIT

for p in 8080 8081 8084 8181; do
  port_free $((p + OFFSET)) || { echo "port $((p + OFFSET)) is taken" >&2; exit 1; }
done
for k in $(seq 1 "$GATEWAYS"); do
  port_free $((8082 + (k - 1) * 100 + OFFSET)) || { echo "a gateway port is taken" >&2; exit 1; }
  port_free $((BARE_PORT + k - 1)) || { echo "bare port $((BARE_PORT + k - 1)) is taken" >&2; exit 1; }
done

scripts/cluster.sh up
gw_pids=$(for k in $(seq 1 "$GATEWAYS"); do cat "$OUT/cluster/gateway-$k.pid"; done | paste -sd,)
all_pids=$(cat "$OUT"/cluster/*.pid | paste -sd,)
sources=$(for i in $(seq 10 40); do echo "127.0.0.$i"; done | paste -sd,)

# Each client process holds its share of the sockets; the bare servers (children of the bench)
# hold one gateway's share each.
ulimit -n "$(ulimit -Hn)"

common=(--meta "http://127.0.0.1:$((8080 + OFFSET))"
        --registry "http://127.0.0.1:$((8084 + OFFSET))"
        --send "http://127.0.0.1:$((8081 + OFFSET)),http://127.0.0.1:$((8181 + OFFSET))"
        --redis-url redis://127.0.0.1:6379 --probe "$PWD/scripts/hundred-k.sh probe"
        --procs "$PROCS" --source-addrs "$sources" --compare-bare --rounds "$ROUNDS"
        --register-concurrency 64 --connect-concurrency 32)
export HK_PORT_OFFSET=$OFFSET HK_GATEWAYS=$GATEWAYS

snapshot() { # RSS (KiB) and CPU ticks of every cluster process, to read beside the summaries
  for f in "$OUT"/cluster/*.pid; do
    p=$(cat "$f")
    echo "$(basename "$f" .pid) rss_kib $(awk '/^VmRSS/ {print $2}' "/proc/$p/status") cpu_ticks $(awk '{print $14 + $15}' "/proc/$p/stat")"
  done
}

snapshot > "$OUT/processes-start.txt"
rooms=$(( SOCKETS / GROUP ))
echo "== $SOCKETS sockets over $GATEWAYS gateways in $rooms groups of $GROUP, one message to each at once"
nice -n 5 "$BENCH" fanout "${common[@]}" --users "$SOCKETS" --rooms "$rooms" --messages "$rooms" \
  --in-flight "$rooms" --bare-procs "$GATEWAYS" --bare-port "$BARE_PORT" --pids "$gw_pids" \
  --settle "$SETTLE" \
  --timeout 300 --json "$OUT/broadcast.json" > /dev/null
snapshot > "$OUT/processes-after-broadcast.txt"

if [ "$ROOM" -gt 0 ]; then
  echo "== a room of $ROOM at $ROOM_RATE messages/s for $ROOM_SECONDS s"
  nice -n 5 "$BENCH" fanout "${common[@]}" --users "$ROOM" --rooms 1 --rate "$ROOM_RATE" \
    --settle "$(( ROOM / 2000 + 5 ))" \
    --seconds "$ROOM_SECONDS" --in-flight 64 --pids "$gw_pids" --timeout 120 \
    --json "$OUT/room.json" > /dev/null
  snapshot > "$OUT/processes-after-room.txt"
fi

echo "== durable sends/s of one Send instance (64 in flight, ${SEND_SECONDS} s)"
nice -n 5 "$BENCH" send --meta "http://127.0.0.1:$((8080 + OFFSET))" \
  --send "http://127.0.0.1:$((8081 + OFFSET))" --concurrency 64 --seconds "$SEND_SECONDS" \
  > "$OUT/sends.json"
snapshot > "$OUT/processes-after-sends.txt"
cat "$OUT/sends.json"

python3 - "$OUT" "$SOCKETS" "$GATEWAYS" "$ROOM" <<'PY'
import json, os, sys
out, sockets, gateways, room = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def show(name, what):
    d = json.load(open(os.path.join(out, name)))
    m = d["median"]
    print(f"{what} (median of {m['rounds']} round(s)):")
    for side in ("server", "bare"):
        f = m[side]
        print(f"  {side:6}: lost {f.get('lost')}, first send to last delivery {f.get('duration_secs')} s, p50 {f.get('latency_p50_ms')} ms, "
              f"p99 {f.get('latency_p99_ms')} ms, time to reach all: p50 {f.get('reach_all_p50_ms')} ms, "
              f"max {f.get('reach_all_max_ms')} ms, RSS per socket {f.get('rss_per_socket_bytes')} B, "
              f"RSS ready {f.get('rss_ready_kib')} KiB")
    r = m["server_to_bare"]
    print(f"  server/bare: p99 {r.get('latency_p99_ms')}x (goal <= 1.3x), "
          f"first send to last delivery {r.get('duration_secs')}x, "
          f"reach-all max {r.get('reach_all_max_ms')}x, RSS per socket {r.get('rss_per_socket_bytes')}x")
    for rd in d["rounds"]:
        s = rd["server"]
        bad = {k: s.get(k) for k in ("lost", "duplicates", "reordered", "send_errors") if s.get(k)}
        assert not bad, f"round {rd['round']}: {bad}"
        gws = s.get("gateways", {})
        print(f"  round {rd['round']}: sockets by gateway {gws}; redis calls/delivery "
              f"{s.get('redis_calls_per_delivery')}; probe per delivery {s.get('probe_per_delivery')}")
        if name == "broadcast.json":
            assert len(gws) == gateways, f"sockets on {len(gws)} gateways, not {gateways}: {gws}"
            assert s["deliveries"] == s["expected_deliveries"] and s["deliveries"] > 0, s
show("broadcast.json", f"{sockets} sockets over {gateways} gateways")
if room > 0:
    show("room.json", f"a room of {room}")
PY
