//! The crate graph follows ARCHITECTURE.md's dependency rules: each crate's `[dependencies]` name
//! only the workspace crates its row allows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const OURS: &[&str] = &[
    "proto", "kit", "store", "bus", "groups", "meta", "send", "registry", "gateway", "server",
    "client", "bench", "testkit",
];

fn repo(path: &str) -> PathBuf {
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
