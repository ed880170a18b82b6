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
pub fn load<T: DeserializeOwned>(file: Option<&Path>, prefix: &str) -> Result<T, ConfigError> {
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
    // `<PREFIX>_TEST_*` variables belong to the test harness, not to the config.
    let test_vars = format!("{prefix}_TEST_");
    let env: config::Map<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix) && !k.starts_with(&test_vars))
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
