#!/usr/bin/env bash
# Browser test of the web chat page (web/tests/chat.test.mjs): playwright-core, pinned in
# web/tests/package-lock.json, drives Debian's chromium against a `ruststacker all` on ports of
# its own (15080/15081/15082/15084, or the next free range below 32768) with a fresh data dir.
# Screenshots of the main views go to target/screenshots/. Run by scripts/test.sh.
# Installs chromium (apt) when /usr/bin/chromium is missing, and the npm packages into the
# gitignored web/tests/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (apt)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d web/tests/node_modules/playwright-core ] \
   || ! (cd web/tests && npm ls playwright-core >/dev/null 2>&1); then
  # The browser is Debian's: playwright's own download is not wanted (and does not work here).
  (cd web/tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

. scripts/ports.sh
cargo build -p server --bin ruststacker
bin=$(target_dir)/debug/ruststacker

# Below the ephemeral range (32768+); clear of the defaults and of scripts/schemathesis.sh's.
offset=$(pick_port_offset 7000 8000 9000 10000) \
  || { echo "no free port range for the browser test" >&2; exit 1; }

dir=$(mktemp -d)
# The server's data dir holds its generated JWT secret: that goes first.
trap 'rm -f "$dir/jwt_secret"; rm -rf "$dir"' EXIT
shots=$(pwd)/target/screenshots
mkdir -p "$shots"
RUSTSTACKER_BIN=$bin WEB_TEST_DATA=$dir SCREENSHOTS=$shots CHROMIUM=/usr/bin/chromium \
  WEB_TEST_PORTS="$((8080 + offset)),$((8081 + offset)),$((8082 + offset)),$((8084 + offset))" \
  timeout 240 node web/tests/chat.test.mjs
