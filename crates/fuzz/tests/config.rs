//! Fuzz target: the configuration loader (`server::AllConfig` through `kit::config`) on arbitrary
//! YAML files and environment values. Whatever an operator writes, `ruststacker` answers with a
//! config or with an error that names the file or the setting, never with a panic; and a config
//! that loads goes through `validate` and every role's `for_role` without one either.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};
use server::{AllConfig, DispatcherConfig, MysqlConfig, RESERVED_ENV, RedisConfig, Roles};

/// Every setting as a dotted path, with its default (null where the default is unset).
fn settings() -> Vec<(String, Value)> {
    let full = AllConfig {
        mysql: Some(MysqlConfig::default()),
        redis: Some(RedisConfig::default()),
        dispatcher: Some(DispatcherConfig::default()),
        ..AllConfig::default()
    };
    let mut out = Vec::new();
    leaves(
        &serde_json::to_value(full).expect("the config serializes"),
        "",
        &mut out,
    );
    out
}

fn leaves(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        _ => out.push((at.to_owned(), v.clone())),
    }
}

/// A value for a setting whose default is `default`: one of its type (edges included), or
/// anything.
fn value_for(default: &Value) -> BoxedStrategy<Value> {
    let typed = match default {
        Value::Bool(_) => any::<bool>().prop_map(Value::Bool).boxed(),
        Value::Number(_) => fuzz::number().prop_map(Value::Number).boxed(),
        Value::String(_) => fuzz::text().prop_map(Value::String).boxed(),
        Value::Array(_) => prop::collection::vec(fuzz::text().prop_map(Value::String), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        _ => fuzz::json_value().boxed(),
    };
    prop_oneof![3 => typed, 1 => fuzz::json_value()].boxed()
}

/// Some settings with values, as a nested object (a YAML document when written as JSON, which
/// YAML 1.2 reads).
fn some_settings() -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::sample::select(settings()), 0..6)
        .prop_flat_map(|picked| {
            picked
                .into_iter()
                .map(|(path, default)| value_for(&default).prop_map(move |v| (path.clone(), v)))
                .collect::<Vec<_>>()
        })
        .prop_map(|pairs| {
            let mut root = Value::Object(Map::new());
            for (path, v) in pairs {
                set(&mut root, &path, v);
            }
            root
        })
}

/// Sets `path` in `root`, making the blocks on the way (a non-object on the way is replaced).
fn set(root: &mut Value, path: &str, v: Value) {
    let mut at = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let obj = at.as_object_mut().expect("made an object");
        if parts.peek().is_none() {
            obj.insert(part.to_owned(), v);
            return;
        }
        at = obj.entry(part).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// The same settings in YAML's block style with plain (unquoted) scalars, so that YAML's own
/// reading of `yes`, `~`, `0x10`, `1e3`, `:` or `#` is in play.
fn block_yaml(v: &Value, indent: usize, out: &mut String) {
    let Some(m) = v.as_object() else {
        return;
    };
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(k);
        out.push(':');
        match v {
            Value::Object(_) => {
                out.push('\n');
                block_yaml(v, indent + 2, out);
            }
            Value::String(s) => {
                out.push(' ');
                out.push_str(s);
                out.push('\n');
            }
            other => {
                out.push(' ');
                out.push_str(&other.to_string());
                out.push('\n');
            }
        }
    }
}

/// Texts of a config file: settings in flow or block style, near-JSON bytes, and YAML's
/// punctuation at random.
fn yaml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => some_settings().prop_map(|v| v.to_string()),
        3 => some_settings().prop_map(|v| {
            let mut out = String::new();
            block_yaml(&v, 0, &mut out);
            out
        }),
        1 => fuzz::json_text(),
        1 => "[-:?&*!|>'\"%@` #\\[\\]{},\n\ta-z0-9_.]{0,120}",
        1 => fuzz::text(),
    ]
}

/// Environment variables: settings' names (`RUSTSTACKER_SECTION__KEY`) with any value, near
/// misses of the names, and strangers under the prefix.
fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    let names: Vec<String> = settings()
        .into_iter()
        .map(|(path, _)| format!("RUSTSTACKER_{}", path.replace('.', "__").to_uppercase()))
        .collect();
    let name = prop_oneof![
        6 => prop::sample::select(names),
        1 => "RUSTSTACKER_[A-Z_]{0,20}",
        1 => "RUSTSTACKER_[A-Za-z0-9_\\[\\].-]{0,20}",
    ];
    let value = prop_oneof![
        3 => fuzz::text(),
        1 => fuzz::json_text(),
        1 => "[0-9,.:-]{0,12}",
    ];
    prop::collection::vec((name, value), 0..4)
}

fn load(file: Option<&Path>, env: Vec<(String, String)>) -> Result<AllConfig, String> {
    kit::config::load_with_env::<AllConfig>(file, "RUSTSTACKER", RESERVED_ENV, env)
        .map_err(|e| e.to_string())
}

/// A config that loads is validated and mapped to each role: answers, not panics.
fn use_it(cfg: AllConfig) {
    let _ = server::validate(&cfg);
    for roles in [
        Roles::ALL,
        Roles::META,
        Roles::SEND,
        Roles::GATEWAY,
        Roles::REGISTRY,
    ] {
        if let Ok(c) = cfg.clone().for_role(roles) {
            let _ = server::validate(&c);
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config_scaled(2))]

    #[test]
    fn any_file_loads_or_is_refused_naming_the_file(text in yaml_text(), env in env()) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &text).expect("write");
        match load(Some(&path), env) {
            Ok(cfg) => use_it(cfg),
            Err(e) => prop_assert!(e.contains(&path.display().to_string()), "{}", e),
        }
    }

    #[test]
    fn any_environment_loads_or_is_refused_naming_the_variables(env in env()) {
        let named: Vec<String> = env
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !RESERVED_ENV.iter().any(|r| k.starts_with(&format!("RUSTSTACKER_{r}"))))
            .collect();
        match load(None, env) {
            Ok(cfg) => use_it(cfg),
            Err(e) => {
                for name in named {
                    prop_assert!(e.contains(&name), "{} is not named in: {}", name, e);
                }
            }
        }
    }

    /// A word where a number or a switch belongs is refused with the setting's name.
    #[test]
    fn a_mistyped_setting_is_named_in_the_error(
        (path, _) in prop::sample::select(typed_settings()),
        word in "[a-z]{3,10}",
        in_env in any::<bool>(),
    ) {
        // Words the config layer reads as values on purpose: switches (`yes`/`no`, `on`/`off`
        // are 1/0 where a number is asked for too, a behaviour of the `config` crate), null and
        // the float specials.
        prop_assume!(!matches!(
            word.as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "nan" | "inf"
        ));
        let dir = tempfile::tempdir().expect("a temp dir");
        let result = if in_env {
            let name = format!("RUSTSTACKER_{}", path.replace('.', "__").to_uppercase());
            load(None, vec![(name, word.clone())])
        } else {
            let file = dir.path().join("config.yaml");
            let mut root = Value::Object(Map::new());
            set(&mut root, &path, Value::String(word.clone()));
            let mut yaml = String::new();
            block_yaml(&root, 0, &mut yaml);
            std::fs::write(&file, yaml).expect("write");
            load(Some(&file), Vec::new())
        };
        match result {
            Ok(_) => return Err(TestCaseError::fail(format!("{path} = {word:?} loaded"))),
            Err(e) => prop_assert!(e.contains(&path), "{} = {:?}: {}", path, word, e),
        }
    }
}

/// Settings whose default is a number or a switch.
fn typed_settings() -> Vec<(String, Value)> {
    settings()
        .into_iter()
        .filter(|(_, d)| d.is_number() || d.is_boolean())
        .collect()
}
