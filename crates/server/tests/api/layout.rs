//! The crate graph follows ARCHITECTURE.md's dependency rules: each crate's `[dependencies]` name
//! only the workspace crates its row allows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const OURS: &[&str] = &[
    "proto", "kit", "store", "bus", "groups", "meta", "send", "registry", "gateway", "server",
    "client", "bench", "testkit", "fuzz",
];

/// `path` inside the repository.
pub(crate) fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The workspace crates named in the `[dependencies]` table of `crates/{krate}/Cargo.toml`.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let path = repo(&format!("crates/{krate}/Cargo.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps {
            continue;
        }
        let name = line
            .split(|c: char| c == '.' || c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if OURS.contains(&name) {
            out.insert(name.to_owned());
        }
    }
    out
}

#[test]
fn each_crate_imports_only_what_the_dependency_rules_allow() {
    let services = ["proto", "kit", "store", "bus", "groups"];
    let allowed: BTreeMap<&str, Vec<&str>> = [
        ("proto", vec![]),
        ("kit", vec!["proto"]),
        ("store", vec!["proto"]),
        ("bus", vec!["proto"]),
        ("groups", vec!["proto", "store"]),
        ("meta", services.to_vec()),
        ("send", services.to_vec()),
        ("gateway", services.to_vec()),
        ("registry", services.to_vec()),
        (
            "server",
            vec![
                "proto", "kit", "store", "bus", "groups", "meta", "send", "gateway", "registry",
                "client",
            ],
        ),
        ("client", vec!["proto"]),
        ("bench", vec!["proto"]),
        ("testkit", vec!["server", "store", "proto"]),
        ("fuzz", vec![]),
    ]
    .into_iter()
    .collect();

    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("crates"))
        .expect("crates/")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let ruled: BTreeSet<String> = allowed.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        on_disk, ruled,
        "every crate has a row in ARCHITECTURE.md's dependency rules and in this test"
    );

    for (krate, may) in &allowed {
        let deps = dependencies(krate);
        let extra: Vec<_> = deps.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on {extra:?}, which ARCHITECTURE.md's dependency rules forbid"
        );
    }
    // The parser sees real tables: the composition root depends on every service.
    assert!(dependencies("server").contains("gateway"));
}

/// The text of the repository's file at `path`.
pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `.rs` files under `dir`, recursively.
pub(crate) fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_service_crate_names_a_backend() {
    // A service speaks to the traits of `bus` and `store`; which backend is behind them is the
    // composition root's choice. Comments may mention Redis; code may not.
    let forbidden = [
        "redis",
        "Redis",
        "store::mysql",
        "MySqlStore",
        "store::sqlite",
        "SqliteStore",
    ];
    let mut offences = Vec::new();
    for krate in ["meta", "send", "gateway", "registry"] {
        let mut files = Vec::new();
        rust_files(&repo(&format!("crates/{krate}/src")), &mut files);
        assert!(!files.is_empty(), "{krate} has sources");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            // Unit tests may open a real SQLite store in a temp dir: that is a test's choice of
            // backend, not the service's.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                let code_part = line.split("//").next().unwrap_or("");
                if forbidden.iter().any(|f| code_part.contains(f)) {
                    offences.push(format!("{}:{}: {line}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "backend names in service code: {offences:#?}"
    );
}
