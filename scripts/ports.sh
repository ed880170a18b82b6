# Sourced by the scripts that start an `ruststacker all` of their own on shifted ports.
# `pick_port_offset OFFSET...` prints the first offset at which 8080, 8081, 8082 and 8084 plus the
# offset are all free (nothing answers a connect), and fails when none is.
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
