#!/usr/bin/env bash
# Supply chain, offline: every package that builds for this machine (Cargo.lock as committed,
# `cargo metadata --locked --offline`) must
#   - come from crates.io, or be a path package inside this workspace (no git, no other registry);
#   - carry a licence expression that the allowlist below satisfies (SPDX: `OR` needs one side,
#     `AND` both, `WITH` an exception of the allowlist; the old `MIT/Apache-2.0` is an `OR`).
# Run by .ci/run before the tests. It reads only what earlier builds downloaded (a `cargo build`
# or `cargo fetch` fetches it); advisories are a release step (docs/security.md, "Supply chain").
# A package that needs an exception is added to EXCEPTIONS with the reason, never silently.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
# Only what builds for this host: the other platforms' packages are never compiled here, and
# offline their manifests are not even on disk.
cargo metadata --locked --offline --format-version 1 --filter-platform "$host" >"$meta"

python3 - "$meta" "$(pwd)" <<'PY'
import json, os, re, sys

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib",
    "Unicode-3.0", "Unicode-DFS-2016", "CC0-1.0", "Unlicense", "BSL-1.0",
}
ALLOWED_EXCEPTIONS = {"LLVM-exception"}
# name -> why it is allowed although its licence is not (none so far).
EXCEPTIONS = {}
CRATES_IO = {
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
}


def tokens(expr):
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expr.replace("/", " OR "))


def allowed(expr):
    """Whether the SPDX expression `expr` is satisfied by ALLOWED (True/False), or a
    ValueError when it is not an expression."""
    toks = tokens(expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary():
        t = take() if peek() is not None else None
        if t == "(":
            v = disjunction()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return v
        if t is None or t in ("AND", "OR", "WITH", ")"):
            raise ValueError(f"a licence expected, not {t!r}")
        ok = t in ALLOWED
        if peek() == "WITH":
            take()
            exception = take() if peek() is not None else None
            ok = ok and exception in ALLOWED_EXCEPTIONS
        return ok

    def conjunction():
        v = primary()
        while peek() == "AND":
            take()
            rhs = primary()  # parsed whatever v is: no short circuit past tokens
            v = v and rhs
        return v

    def disjunction():
        v = conjunction()
        while peek() == "OR":
            take()
            rhs = conjunction()
            v = v or rhs
        return v

    v = disjunction()
    if pos != len(toks):
        raise ValueError(f"unexpected {toks[pos]!r}")
    return v


# The evaluator checks itself first, so that a bug in it cannot pass everything.
for expr, want in [
    ("MIT", True), ("GPL-3.0", False), ("MIT OR GPL-3.0", True), ("MIT AND GPL-3.0", False),
    ("(MIT OR Apache-2.0) AND Unicode-3.0", True), ("MIT/Apache-2.0", True),
    ("Apache-2.0 WITH LLVM-exception OR GPL-2.0", True), ("GPL-2.0 WITH LLVM-exception", False),
    ("Apache-2.0 WITH Classpath-exception-2.0", False), ("(MIT AND GPL-3.0) OR ISC", True),
]:
    assert allowed(expr) == want, f"licence evaluator: {expr!r} should be {want}"

meta = json.load(open(sys.argv[1]))
root = os.path.realpath(sys.argv[2])
members = set(meta["workspace_members"])
problems = []
for p in meta["packages"]:
    name = f'{p["name"]} {p["version"]}'
    src = p["source"]
    if src is None:
        inside = os.path.realpath(p["manifest_path"]).startswith(root + os.sep)
        if p["id"] not in members or not inside:
            problems.append(f"{name}: a path dependency outside the workspace ({p['manifest_path']})")
    elif src not in CRATES_IO:
        problems.append(f"{name}: source {src} is not crates.io")
    if src is None:
        continue  # our own crates: the workspace licence
    lic = p.get("license")
    if p["name"] in EXCEPTIONS:
        continue
    if not lic:
        problems.append(f"{name}: no SPDX licence expression (license-file {p.get('license_file')})")
        continue
    try:
        if not allowed(lic):
            problems.append(f"{name}: licence {lic!r} is not in the allowlist")
    except ValueError as e:
        problems.append(f"{name}: licence {lic!r} does not parse ({e})")

third = sum(1 for p in meta["packages"] if p["source"] is not None)
if problems:
    print("dependency check failed:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"dependency check: {third} crates.io packages, all licences allowed; "
      f"{len(members)} workspace crates")
PY
