#!/usr/bin/env bash
# Runs the whole test suite. Starts the local MariaDB and Redis that the distributed backends'
# tests use when they are not answering (they are pre-started on the project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."

start_services() {
  if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || echo "warning: redis did not start"
  fi
  if command -v mariadb-admin >/dev/null && ! mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
    echo "starting mariadbd"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || echo "warning: mariadb did not start"
    for _ in $(seq 1 30); do mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 && break; sleep 1; done
  fi
}
start_services

export RUSTSTACKER_TEST_MYSQL_URL="${RUSTSTACKER_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
export RUSTSTACKER_TEST_REDIS_URL="${RUSTSTACKER_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
# The fuzz targets' budget (crates/fuzz; about 30 s on 2 cores), and every other proptest's.
export PROPTEST_CASES="${PROPTEST_CASES:-4096}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The JavaScript SDK (clients/js) with node's test runner against real `ruststacker all`s.
scripts/sdk-test.sh

# The distributed deployment as separate processes (scripts/cluster.sh), checked end to end.
scripts/cluster-smoke.sh

# The six-gateway benchmark script at its small size (600 sockets over 3 gateways): it still runs
# and every delivery verifies (docs/scaling.md has the 100,000-socket run).
HK_PROFILE=debug scripts/hundred-k.sh small

# Every operation of the OpenAPI documents, fuzzed against a running `ruststacker all`.
scripts/schemathesis.sh

# The web chat page in Debian's chromium (playwright-core): two users, offline and restart.
scripts/browser-test.sh
