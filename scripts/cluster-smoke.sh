#!/usr/bin/env bash
# The distributed deployment as real processes: scripts/cluster.sh up, then a fan-out through
# both gateways and both Send instances checked by ruststacker-bench (nothing lost, duplicated
# or reordered), then scripts/cluster.sh down. Uses a database and key prefix of its own.
# Run by scripts/test.sh. It moves every port by an offset at which all six are free.
# Everything it made goes on exit, whatever the outcome: the processes, the database, the Redis
# keys, and the cluster directory (the JWT secret and internal token first) unless
# RUSTSTACKER_CLUSTER_DIR named one to keep.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ports.sh

profile=${RUSTSTACKER_SMOKE_PROFILE:-debug}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag -p server -p bench --bins
target=$(target_dir)/$profile
export RUSTSTACKER_BIN=$target/ruststacker
made_dir=""
if [ -z "${RUSTSTACKER_CLUSTER_DIR:-}" ]; then
  RUSTSTACKER_CLUSTER_DIR=$(mktemp -d)
  made_dir=$RUSTSTACKER_CLUSTER_DIR
fi
export RUSTSTACKER_CLUSTER_DIR
id=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RUSTSTACKER_CLUSTER_DB=rs_smoke_$id RUSTSTACKER_CLUSTER_PREFIX=rssmoke$id

cleanup() {
  scripts/cluster.sh down >/dev/null 2>&1 || true
  if [ -n "$made_dir" ]; then
    rm -f "$made_dir/jwt_secret" "$made_dir/internal_token"
    rm -rf "$made_dir"
  fi
  mariadb -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $RUSTSTACKER_CLUSTER_DB" 2>/dev/null || true
  redis-cli -h 127.0.0.1 --scan --pattern "$RUSTSTACKER_CLUSTER_PREFIX*" 2>/dev/null \
    | xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
}
trap cleanup EXIT

offset=""
for candidate in 20000 21000 22000 23000 24000 25000; do
  ok=1
  for p in 8080 8081 8082 8084 8181 8182; do port_free $((p + candidate)) || ok=0; done
  if [ $ok = 1 ]; then offset=$candidate; break; fi
done
[ -n "$offset" ] || { echo "no free port range for the cluster smoke" >&2; exit 1; }
export RUSTSTACKER_CLUSTER_PORT_OFFSET=$offset
# One client address drives 40 users: the per-IP rate limits would refuse most registrations.
export RUSTSTACKER_RATE_LIMITS__ENABLED=false

scripts/cluster.sh up
"$target/ruststacker-bench" fanout --users 40 --messages 30 --timeout 20 \
  --meta http://127.0.0.1:$((8080 + offset)) --registry http://127.0.0.1:$((8084 + offset)) \
  --send http://127.0.0.1:$((8081 + offset)),http://127.0.0.1:$((8181 + offset)) \
  --json "$RUSTSTACKER_CLUSTER_DIR/fanout.json" 2>/dev/null
python3 - "$RUSTSTACKER_CLUSTER_DIR/fanout.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
gws = d.get("gateways", {})
assert len(gws) == 2 and all(n > 0 for n in gws.values()), f"sockets not spread over both gateways: {gws}"
for k in ("lost", "duplicates", "reordered", "send_errors"):
    assert d.get(k, 0) == 0, f"{k} = {d.get(k)}"
print(f"cluster smoke: {d['deliveries']} deliveries over {gws}, nothing lost")
PY

# The web page on meta finds the cluster's send-1 and registry, and each lets the page's origin
# call it (CORS) while another origin gets no allow header.
meta=http://127.0.0.1:$((8080 + offset))
curl -fsS "$meta/" | grep -q '/web/app.js' || { echo "meta does not serve the web page" >&2; exit 1; }
curl -fsS "$meta/api/web/config" | python3 -c "
import json, sys
d = json.load(sys.stdin)['data']
want = {'send_url': 'http://127.0.0.1:$((8081 + offset))', 'registry_url': 'http://127.0.0.1:$((8084 + offset))'}
assert d == want, f'web config {d}, want {want}'
"
preflight() {
  curl -fsS -o /dev/null -D - -X OPTIONS "$1" -H "Origin: $2" \
    -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: authorization,content-type' \
    | tr -d '\r' | sed -n 's/^access-control-allow-origin: //Ip'
}
for url in "http://127.0.0.1:$((8081 + offset))/api/chat/send_message" \
           "http://127.0.0.1:$((8181 + offset))/api/chat/send_message" \
           "http://127.0.0.1:$((8084 + offset))/registry/gateway/available"; do
  [ "$(preflight "$url" "$meta")" = "$meta" ] || { echo "$url refuses the page's origin $meta" >&2; exit 1; }
  [ -z "$(preflight "$url" http://evil.example)" ] || { echo "$url allows another origin" >&2; exit 1; }
done
echo "cluster smoke: the web page's config and CORS point at the cluster"
