//! Layered configuration: the type's serde defaults, then an optional YAML file, then environment
//! variables `RUSTSTACKER_<SECTION>__<KEY>` (for example `RUSTSTACKER_SEND__MAX_CONTENT_BYTES=4096`).

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    File {
        path: String,
        source: config::ConfigError,
    },
    /// `sources` says where the settings came from (the file, the variables by name, never
    /// their values), because a message like "unknown field `x`" does not.
    #[error("invalid configuration (from {sources}): {source}")]
    Invalid {
        sources: String,
        source: config::ConfigError,
    },
}

/// A setting whose value cannot be used: which key, and what is wrong with it in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub problem: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

/// Loads `T` from its defaults, the YAML file at `file` (if any) and the environment under `prefix`.
/// Variables named by `reserved` belong to tools (the test harness, the cluster script), not to the
/// config, and are skipped: an entry ending in `_` names every `<prefix>_<R>...`, any other
/// entry the one variable `<prefix>_<R>` (so `BIN` skips `RUSTSTACKER_BIN`, not
/// `RUSTSTACKER_BIND`).
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    prefix: &str,
    reserved: &[&str],
) -> Result<T, ConfigError> {
    load_with_env(file, prefix, reserved, std::env::vars())
}

/// [`load`] with the environment passed in rather than read from the process: for tests and
/// fuzz targets, which must not change their process's environment (not thread-safe).
pub fn load_with_env<T: DeserializeOwned>(
    file: Option<&Path>,
    prefix: &str,
    reserved: &[&str],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                source: config::ConfigError::Message("file not found".into()),
            });
        }
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Yaml)
                .required(true),
        );
    }
    let skip: Vec<String> = reserved.iter().map(|r| format!("{prefix}_{r}")).collect();
    let reserved = |k: &str| {
        skip.iter().any(|s| {
            if s.ends_with('_') {
                k.starts_with(s.as_str())
            } else {
                k == s
            }
        })
    };
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix) && !reserved(k))
        .collect();
    let sources = sources(file, env.keys());
    builder = builder.add_source(
        config::Environment::with_prefix(prefix)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|source| ConfigError::Invalid { sources, source })
}

/// "config file F and RUSTSTACKER_A, RUSTSTACKER_B": where the settings came from.
fn sources<'a>(file: Option<&Path>, vars: impl Iterator<Item = &'a String>) -> String {
    let mut vars: Vec<&str> = vars.map(String::as_str).collect();
    vars.sort_unstable();
    let vars = match vars.len() {
        0 => None,
        1..=5 => Some(vars.join(", ")),
        n => Some(format!("{n} environment variables")),
    };
    match (file, vars) {
        (Some(f), Some(v)) => format!("config file {} and {v}", f.display()),
        (Some(f), None) => format!("config file {}", f.display()),
        (None, Some(v)) => v,
        (None, None) => "the defaults".to_owned(),
    }
}

/// Deserializes an optional list of strings from a list (YAML) or from one comma-separated string
/// (an environment variable, e.g. `RUSTSTACKER_HTTP__CORS_ORIGINS=http://a:1,http://b:2`), with
/// blanks around items dropped. Use with `#[serde(default, deserialize_with = ...)]`.
pub fn comma_list<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    let items = match <Option<Either> as serde::Deserialize>::deserialize(d)? {
        None => return Ok(None),
        Some(Either::List(l)) => l,
        Some(Either::One(s)) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(Some(
        items
            .into_iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Origins {
        #[serde(default, deserialize_with = "comma_list")]
        list: Option<Vec<String>>,
    }

    #[test]
    fn a_list_is_read_from_yaml_or_from_one_comma_separated_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "list: [\"http://a:1\", \"http://b:2\"]\n").expect("write");
        let from_file: Origins = load(Some(&path), "KITCOMMATEST", &[]).expect("loads");
        let want = Some(vec!["http://a:1".to_owned(), "http://b:2".to_owned()]);
        assert_eq!(from_file.list, want);
        let one: Origins =
            serde_json::from_value(serde_json::json!({"list": "http://a:1, http://b:2,"}))
                .expect("a string");
        assert_eq!(one.list, want);
        let unset: Origins = serde_json::from_value(serde_json::json!({})).expect("unset");
        assert_eq!(unset.list, None);
    }
}
