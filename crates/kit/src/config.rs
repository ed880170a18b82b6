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
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
}

/// Loads `T` from its defaults, the YAML file at `file` (if any) and the environment under `prefix`.
/// Variables `<prefix>_<R>...` for each `R` in `reserved` belong to tools (the test harness, the
/// cluster script), not to the config, and are skipped.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    prefix: &str,
    reserved: &[&str],
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
    let env: config::Map<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix) && !skip.iter().any(|s| k.starts_with(s.as_str())))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(prefix)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    let cfg = builder.build().map_err(|e| match file {
        Some(p) => ConfigError::File {
            path: p.display().to_string(),
            source: e,
        },
        None => ConfigError::Invalid(e),
    })?;
    Ok(cfg.try_deserialize()?)
}
