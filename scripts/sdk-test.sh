#!/usr/bin/env bash
# Tests of the JavaScript SDK (clients/js) with node's test runner against real `ruststacker all`
# servers the tests start on free ports with fresh data dirs (clients/js/test/server.js). Installs
# nothing: the SDK has no dependencies. Also checks what `npm pack` would publish.
# The server binary is RUSTSTACKER_BIN, else the cargo target dir's debug build (built here).
# Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${RUSTSTACKER_BIN:-}" ]; then
  . scripts/ports.sh
  cargo build -p server --bin ruststacker
  RUSTSTACKER_BIN=$(target_dir)/debug/ruststacker
  export RUSTSTACKER_BIN
fi

cd clients/js
# Node 20's global WebSocket is behind --experimental-websocket (on by default from Node 22).
# One test file at a time: each starts its own server, and the machine may have few cores.
timeout 600 node --experimental-websocket --test --test-concurrency=1 test/*.test.js

# What the package would contain: the sources, the declarations and the README, nothing else.
packed=$(npm pack --dry-run --json 2>/dev/null)
echo "$packed" | node -e '
  const [p] = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const files = p.files.map((f) => f.path).sort();
  const want = ["README.md", "index.d.ts", "package.json"];
  const bad = files.filter((f) => !want.includes(f) && !/^src\/[a-z]+\.js$/.test(f));
  for (const w of want) if (!files.includes(w)) bad.push(`missing ${w}`);
  if (bad.length) { console.error(`npm pack: unexpected contents: ${bad.join(", ")}`); process.exit(1); }
  console.log(`npm pack --dry-run: ${p.filename}, ${files.length} files, ${p.size} bytes`);
'
