#!/usr/bin/env bash
# A local distributed deployment as separate processes:
#   registry :8084, meta :8080, send :8081 and :8181, gateways :8082 and :8182 (gateway k on
#   8082 + (k-1)*100 when RUSTSTACKER_CLUSTER_GATEWAYS asks for more than two),
# against MariaDB on 127.0.0.1:3306 and Redis on 127.0.0.1:6379.
#
#   scripts/cluster.sh up        build (release) if needed, migrate, start all six, wait until healthy;
#                                if any fails to start, stop the others again (as `down`)
#   scripts/cluster.sh down      SIGTERM exactly the processes `up` started (graceful), wait for them,
#                                then delete the JWT secret, the internal token and the pid files
#                                (the logs stay for reading; the next `up` makes new secrets)
#   scripts/cluster.sh status    each process: pid, alive, /health
#
# The web chat page is on meta: http://127.0.0.1:8080/ (plus the offset).
#
# Environment: RUSTSTACKER_CLUSTER_DIR (logs, pid files, the generated JWT secret; default
# ./cluster), RUSTSTACKER_CLUSTER_DB (MySQL database, default ruststacker),
# RUSTSTACKER_CLUSTER_PREFIX (Redis key prefix, default ruststacker), RUSTSTACKER_CLUSTER_PORT_OFFSET
# (added to every port, default 0), RUSTSTACKER_CLUSTER_GATEWAYS (gateway processes, default 2,
# at most 9; the third and later run config/cluster/gateway-1.yaml under their own name and port;
# `down` and `status` need the same count as `up`), RUSTSTACKER_BIN (the binary; default
# target/release/ruststacker, built when missing). Other RUSTSTACKER_* variables in the
# environment reach every service as config overrides (e.g. RUSTSTACKER_RATE_LIMITS__ENABLED);
# RUSTSTACKER_CLUSTER_ENV_REGISTRY (or _META, _SEND, _GATEWAY) holds overrides for one kind only,
# e.g. "RUSTSTACKER_HTTP__MAX_CONNECTIONS=8192".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ports.sh

DIR=${RUSTSTACKER_CLUSTER_DIR:-./cluster}
DB=${RUSTSTACKER_CLUSTER_DB:-ruststacker}
PREFIX=${RUSTSTACKER_CLUSTER_PREFIX:-ruststacker}
BIN=${RUSTSTACKER_BIN:-}
OFFSET=${RUSTSTACKER_CLUSTER_PORT_OFFSET:-0}
# name kind port, in start order (the registry first, as the seed says)
GATEWAYS=${RUSTSTACKER_CLUSTER_GATEWAYS:-2}
case "$GATEWAYS" in [1-9]) ;; *) echo "RUSTSTACKER_CLUSTER_GATEWAYS must be 1 to 9" >&2; exit 2 ;; esac
SERVICES=("registry registry 8084" "meta meta 8080" "send-1 send 8081" "send-2 send 8181")
for k in $(seq 1 "$GATEWAYS"); do SERVICES+=("gateway-$k gateway $((8082 + (k - 1) * 100))"); done

# The config file of a service: its own, or gateway-1's for the gateways beyond the second
# (renamed by env_for_name).
config_of() {
  if [ -f "config/cluster/$1.yaml" ]; then echo "config/cluster/$1.yaml"
  else echo "config/cluster/gateway-1.yaml"; fi
}

env_for_name() {
  if [ ! -f "config/cluster/$1.yaml" ]; then echo "RUSTSTACKER_NAME=$1"; fi
}

# Every service lets the web page on meta's origin call it (CORS), wherever the offset puts meta.
env_for() {
  echo "RUSTSTACKER_JWT__SECRET=$(cat "$DIR/jwt_secret")" \
       "RUSTSTACKER_INTERNAL_TOKEN=$(cat "$DIR/internal_token")" \
       "RUSTSTACKER_MYSQL__DBNAME=$DB" "RUSTSTACKER_REDIS__PREFIX=$PREFIX" \
       "RUSTSTACKER_HTTP__CORS_ORIGINS=http://127.0.0.1:$(port_of 8080),http://localhost:$(port_of 8080)"
}

alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

healthy() { curl -fsS "http://127.0.0.1:$1/health" >/dev/null 2>&1; }

port_of() { echo $(( $1 + OFFSET )); }

# Gateways talk to the registry over HTTP (registry.url, the seed's model); its URL moves with the
# port offset. The other services find each other through Redis.
# The web page served by meta finds send-1 and the registry at their offset ports.
env_for_kind() {
  # RUSTSTACKER_CLUSTER_ENV_REGISTRY (_META, _SEND, _GATEWAY): overrides for that kind only.
  local own="RUSTSTACKER_CLUSTER_ENV_${1^^}"
  if [ -n "${!own:-}" ]; then echo "${!own}"; fi
  if [ "$1" = gateway ]; then echo "RUSTSTACKER_REGISTRY__URL=http://127.0.0.1:$(port_of 8084)"; fi
  if [ "$1" = meta ]; then
    echo "RUSTSTACKER_WEB__SEND_URL=http://127.0.0.1:$(port_of 8081)" \
         "RUSTSTACKER_WEB__REGISTRY_URL=http://127.0.0.1:$(port_of 8084)"
  fi
}

up() {
  if [ -z "$BIN" ]; then
    BIN=$(target_dir)/release/ruststacker
    [ -x "$BIN" ] || cargo build --release -p server --bin ruststacker
  fi
  mkdir -p "$DIR"
  # A failed start leaves nothing running and no secret behind.
  trap 'down >/dev/null 2>&1 || true' EXIT
  [ -s "$DIR/jwt_secret" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/jwt_secret")
  [ -s "$DIR/internal_token" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/internal_token")
  # shellcheck disable=SC2046
  env $(env_for) "$BIN" migrate --config config/cluster/meta.yaml
  for s in "${SERVICES[@]}"; do
    set -- $s
    set -- "$1" "$2" "$(port_of "$3")"
    if alive "$1"; then echo "$1 already running (pid $(cat "$DIR/$1.pid"))"; continue; fi
    if healthy "$3"; then
      echo "port $3 is already served by another process; stop it first (scripts/cluster.sh down?)" >&2
      exit 1
    fi
    # shellcheck disable=SC2046
    env $(env_for) $(env_for_kind "$2") $(env_for_name "$1") RUSTSTACKER_PORT="$3" \
      nohup "$BIN" "$2" --config "$(config_of "$1")" > "$DIR/$1.log" 2>&1 &
    echo $! > "$DIR/$1.pid"
    for _ in $(seq 1 100); do healthy "$3" && break; alive "$1" || break; sleep 0.1; done
    if alive "$1" && healthy "$3"; then echo "$1 up on :$3 (pid $(cat "$DIR/$1.pid"))"
    else echo "$1 failed to start; see $DIR/$1.log" >&2; tail -5 "$DIR/$1.log" >&2; exit 1; fi
  done
  trap - EXIT
}

down() {
  local pids=()
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do
    set -- ${SERVICES[$i]}
    if alive "$1"; then kill -TERM "$(cat "$DIR/$1.pid")"; pids+=("$1"); fi
  done
  for name in "${pids[@]}"; do
    for _ in $(seq 1 200); do alive "$name" || break; sleep 0.1; done
    if alive "$name"; then echo "$name did not stop; killing" >&2; kill -KILL "$(cat "$DIR/$name.pid")"; fi
    echo "$name stopped"
  done
  rm -f "$DIR/jwt_secret" "$DIR/internal_token"
  rm -f "$DIR"/*.pid
}

status() {
  for s in "${SERVICES[@]}"; do
    set -- $s
    set -- "$1" "$2" "$(port_of "$3")"
    if alive "$1"; then
      if healthy "$3"; then h=healthy; else h=unhealthy; fi
      echo "$1 pid $(cat "$DIR/$1.pid") :$3 $h"
    else
      echo "$1 stopped"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
