# Sourced by the scripts that start an `ruststacker all` of their own on shifted ports.
# `pick_port_offset OFFSET...` prints the first offset at which 8080, 8081, 8082 and 8084 plus the
# offset are all free (nothing answers a connect), and fails when none is.
# `target_dir` prints where cargo puts what it builds (CARGO_TARGET_DIR or the config may move it
# away from ./target, and a binary left there by an older build must not be run instead).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port_offset() {
  local candidate p ok
  for candidate in "$@"; do
    ok=1
    for p in 8080 8081 8082 8084; do port_free $((p + candidate)) || ok=0; done
    if [ $ok = 1 ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}
