#!/usr/bin/env bash
# Schemathesis (from PyPI) against a running `ruststacker all`: every operation of the four
# services' OpenAPI documents, with a user's token and the internal token, must give no server
# error and no response the document does not describe (status, content type, headers, body
# schema), must refuse requests that break the document, and must enforce its auth.
# Run by scripts/test.sh. Extra arguments go to every `st run` (e.g. --max-examples 500).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
venv=target/schemathesis-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build -p server --bin ruststacker
dir=$(mktemp -d)
. scripts/ports.sh
# Below the ephemeral range (32768+), where a client socket of an earlier test may hold the port.
offset=$(pick_port_offset 11000 12000 13000 14000) \
  || { echo "no free port range for schemathesis" >&2; exit 1; }
meta=$((8080 + offset)) send=$((8081 + offset)) gateway=$((8082 + offset)) registry=$((8084 + offset))
internal=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# One client address registers many users here: the per-IP limits would answer 429 to most.
# One access token serves the whole run (which may outlast the default 15 minutes).
RUSTSTACKER_DATA_DIR=$dir RUSTSTACKER_RATE_LIMITS__ENABLED=false RUSTSTACKER_INTERNAL_TOKEN=$internal \
  RUSTSTACKER_JWT__EXPIRE_SECS=7200 \
  RUSTSTACKER_META__PORT=$meta RUSTSTACKER_SEND__PORT=$send RUSTSTACKER_GATEWAY__PORT=$gateway \
  RUSTSTACKER_REGISTRY__PORT=$registry target/debug/ruststacker all > "$dir/all.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
up=""
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$registry/health" >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "ruststacker all did not come up on ports $meta-$registry:" >&2
  cat "$dir/all.log" >&2
  exit 1
fi

# A user with a group, a message and a one-to-one room, so ids 1 and 2 name real things.
post() { curl -sf -X POST "http://127.0.0.1:$meta$1" -H 'content-type: application/json' "${@:3}" -d "$2"; }
post /api/user/register '{"username":"st_alice","password":"password-1"}' >/dev/null
post /api/user/register '{"username":"st_bob","password":"password-2"}' >/dev/null
token=$(post /api/user/login '{"username":"st_alice","password":"password-1"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
auth=(-H "Authorization: Bearer $token")
post /api/group/create '{"name":"schemathesis","member_ids":[2]}' "${auth[@]}" >/dev/null
post /api/room/direct '{"user_id":2}' "${auth[@]}" >/dev/null
curl -sf -X POST "http://127.0.0.1:$send/api/chat/send_message" -H 'content-type: application/json' \
  "${auth[@]}" -d '{"room_id":1,"content":"hello"}' >/dev/null

# Every check but positive_data_acceptance: a schema cannot say everything the server refuses
# with a 400 (an id list naming no user, a member removing themselves), and JSON Schema's
# `integer` admits 7.0, which the server's integer fields do not.
status=0
for port in $meta $send $gateway $registry; do
  echo "== schemathesis: http://127.0.0.1:$port/api/openapi.json"
  "$venv/bin/st" run "http://127.0.0.1:$port/api/openapi.json" \
    -H "Authorization: Bearer $token" -H "X-Internal-Token: $internal" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples 50 --seed 1 --no-color "$@" || status=1
done
if grep -q "panicked" "$dir/all.log"; then
  echo "the server panicked during the schemathesis run:" >&2
  grep -n "panicked" "$dir/all.log" >&2
  status=1
fi
exit $status
