#!/usr/bin/env bash
# Schemathesis (from PyPI) against a running `ruststacker all`: every operation of the four
# services' OpenAPI documents, with a user's token and the internal token, must give no server
# error and no response the document does not describe (status, content type, headers, body
# schema), must refuse requests that break the document, and must enforce its auth. The server
# is seeded first (scripts/schemathesis-seed.py) and the generated ids are pointed at what exists
# (per-document configs, scripts/schemathesis_hooks.py), so the calls reach the logic behind the
# 404s; a run should end without warnings (docs/security.md, "Schemathesis").
# Run by scripts/test.sh. Extra arguments go to every `st run` (e.g. --max-examples 500).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
venv=target/schemathesis-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

. scripts/ports.sh
cargo build -p server --bin ruststacker
bin=$(target_dir)/debug/ruststacker
dir=$(mktemp -d)
pid=""
# The server, then its data dir (its generated JWT secret first), whatever the outcome.
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -f "$dir/jwt_secret"
  rm -rf "$dir"
}
trap cleanup EXIT
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
  RUSTSTACKER_REGISTRY__PORT=$registry "$bin" all > "$dir/all.log" 2>&1 &
pid=$!
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

# Users, groups for each operation that uses them up, join requests and a message, and a config
# binding each operation's path ids to what exists (scripts/schemathesis-seed.py), so generated
# calls reach the logic behind the 404s.
token=$(python3 scripts/schemathesis-seed.py "http://127.0.0.1:$meta" "http://127.0.0.1:$send" "$dir")
# GET /api/ws answers 101 only to a WebSocket handshake (a fresh Sec-WebSocket-Key, then frames
# on the same socket), which Schemathesis does not make: every call it generates is refused with
# 400 `not_websocket`. Its checks (auth, the envelope, statuses) still run; only the warning that
# "most generated data was refused" says nothing about the document here. The handshake itself is
# tested by crates/server/tests and crates/fuzz.
cat > "$dir/gateway.toml" <<'TOML'
[[operations]]
include-name = "GET /api/ws"
warnings = false
TOML
# A body past the registry's size limit is refused with 413 `body_too_large` before it is read,
# which is a refusal too (Schemathesis counts only 4xx codes of the data's content by default).
cat > "$dir/registry.toml" <<'TOML'
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
TOML
# Ids in request bodies (a peer, messages): scripts/schemathesis_hooks.py.
export PYTHONPATH=$(pwd)/scripts PYTHONDONTWRITEBYTECODE=1 SCHEMATHESIS_HOOKS=schemathesis_hooks \
  ST_SEED=$dir/seed.json

# Every check but positive_data_acceptance: a schema cannot say everything the server refuses
# with a 400 (an id list naming no user, a member removing themselves), and JSON Schema's
# `integer` admits 7.0, which the server's integer fields do not.
status=0
st=$(pwd)/$venv/bin/st
# Send first: Meta's run dissolves and empties rooms, and Send's resends need theirs intact.
for port in $send $meta $gateway $registry; do
  echo "== schemathesis: http://127.0.0.1:$port/api/openapi.json"
  # Meta's and Send's operations have their ids bound to the seed; the gateway's one operation is
  # a WebSocket handshake.
  config=()
  [ "$port" = "$meta" ] && config=(--config-file "$dir/meta.toml")
  [ "$port" = "$send" ] && config=(--config-file "$dir/send.toml")
  [ "$port" = "$gateway" ] && config=(--config-file "$dir/gateway.toml")
  [ "$port" = "$registry" ] && config=(--config-file "$dir/registry.toml")
  # Run in the data dir: Schemathesis and Hypothesis keep their caches (.schemathesis,
  # .hypothesis) in the working directory, and they go with it.
  (cd "$dir" && "$st" "${config[@]}" run "http://127.0.0.1:$port/api/openapi.json" \
    -H "Authorization: Bearer $token" -H "X-Internal-Token: $internal" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples 50 --seed 1 --no-color "$@") || status=1
done
if grep -q "panicked" "$dir/all.log"; then
  echo "the server panicked during the schemathesis run:" >&2
  grep -n "panicked" "$dir/all.log" >&2
  status=1
fi
exit $status
