//! Logging and metrics set-up. Both are process-wide and installed at most once, so that tests
//! that start several apps in one process share them.
//!
//! Logs go to stdout and/or a file rotated by size ([`crate::logfile`]), as text or JSON lines,
//! through one `EnvFilter` behind a reload handle, so the level can change while running
//! ([`set_log_level`], used by the config reload).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::InvalidSetting;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of counts (batch sizes, queue depths), 1 to 16384.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// How often histogram samples are folded into their buckets. Without it they pile up between
/// scrapes (forever, when nothing scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder (once per process).
pub fn init_metrics() {
    PROMETHEUS.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), COUNT_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_depth".into()), COUNT_BUCKETS))
            .and_then(|b| b.install_recorder());
        match built {
            Ok(handle) => {
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-upkeep".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "metrics upkeep thread not started");
                }
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render_metrics() -> String {
    init_metrics();
    PROMETHEUS
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Logging (the seed's `log:` block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level or an env-filter directive ("info", "info,gateway=debug"); `RUST_LOG` overrides
    /// it. Reloadable.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
    /// Also (or only, with `stdout: false`) write to this file, rotated by size. Unset: stdout only.
    pub filename: Option<PathBuf>,
    /// Write to stdout. With no `filename` logs always go to stdout.
    pub stdout: bool,
    /// Rotate the file when it would grow past this many megabytes (at least 1).
    pub max_size: u64,
    /// Rotated files kept (newest first); 0 keeps them all.
    pub max_backups: usize,
    /// Days a rotated file is kept; 0 keeps them whatever their age.
    pub max_age: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
            filename: None,
            stdout: true,
            max_size: 100,
            max_backups: 10,
            max_age: 30,
        }
    }
}

impl LogConfig {
    /// Checks every key, so a bad edit is refused before anything is applied.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        parse_level(&self.level)?;
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(InvalidSetting::new(
                "log.format",
                format!("must be text or json, not {:?}", self.format),
            ));
        }
        if self.max_size == 0 {
            return Err(InvalidSetting::new(
                "log.max_size",
                "must be at least 1 (megabytes)",
            ));
        }
        if self
            .filename
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(InvalidSetting::new(
                "log.filename",
                "must not be empty (leave it unset for stdout only)",
            ));
        }
        Ok(())
    }
}

/// Parses a level or env-filter directive, refusing what `EnvFilter` would silently ignore.
pub fn parse_level(level: &str) -> Result<EnvFilter, InvalidSetting> {
    const KEY: &str = "log.level";
    if level.trim().is_empty() {
        return Err(InvalidSetting::new(KEY, "must not be empty"));
    }
    // Directives are ASCII (levels, module paths, span and field names); EnvFilter's parser
    // panics on some other characters (it slices a directive inside a multi-byte character).
    if let Some(c) = level.chars().find(|c| !c.is_ascii_graphic() && *c != ' ') {
        return Err(InvalidSetting::new(
            KEY,
            format!(
                "{level:?}: {c:?} is not allowed (a level, or target=level directives, in ASCII)"
            ),
        ));
    }
    // A bare word is a target to EnvFilter ("debgu" would enable everything under a target of
    // that name and silently log nothing else): here a directive without `=` must be a level.
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && !LEVELS.contains(&part.to_ascii_lowercase().as_str()) {
            return Err(InvalidSetting::new(
                KEY,
                format!(
                    "{level:?}: {part:?} is not a level (trace, debug, info, warn, error, off); write target=level for a target"
                ),
            ));
        }
    }
    EnvFilter::builder().parse(level).map_err(|e| {
        InvalidSetting::new(
            KEY,
            format!("{level:?} is not a level or filter directive: {e}"),
        )
    })
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

static LOG_FILTER: OnceLock<FilterHandle> = OnceLock::new();
/// `RUST_LOG` was set at start: it wins over `log.level`, also on reload.
static RUST_LOG_SET: OnceLock<bool> = OnceLock::new();

/// Keeps the file writer's thread alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops file logging"]
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global `tracing` subscriber described by `cfg` (validated first). A second call
/// in one process (tests) changes nothing.
pub fn init_logging(cfg: &LogConfig) -> Result<LogGuard, InvalidSetting> {
    cfg.validate()?;
    let from_env = EnvFilter::try_from_default_env().ok();
    let _ = RUST_LOG_SET.set(from_env.is_some());
    let filter = match from_env {
        Some(f) => f,
        None => parse_level(&cfg.level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let json = cfg.format == "json";
    let mut layers: Vec<Box<dyn Layer<Filtered> + Send + Sync>> = Vec::new();
    if cfg.stdout || cfg.filename.is_none() {
        // Colours only for a person at a terminal: a pipe, a file or a journal gets plain text.
        let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        layers.push(if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(ansi)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer().with_ansi(ansi).boxed()
        });
    }
    let mut guard = None;
    if let Some(path) = &cfg.filename {
        let file = crate::logfile::RotatingFile::open(
            path,
            cfg.max_size.saturating_mul(1024 * 1024),
            cfg.max_backups,
            (cfg.max_age > 0).then(|| Duration::from_secs(cfg.max_age.saturating_mul(86_400))),
        )
        .map_err(|e| InvalidSetting::new("log.filename", format!("{}: {e}", path.display())))?;
        let (writer, g) = tracing_appender::non_blocking(file);
        guard = Some(g);
        layers.push(if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(writer)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .boxed()
        });
    }
    if Registry::default()
        .with(filter)
        .with(layers)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(handle);
    }
    Ok(LogGuard(guard))
}

/// What [`set_log_level`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelChange {
    Applied,
    /// `RUST_LOG` was set at start and keeps winning.
    OverriddenByRustLog,
    /// No subscriber of ours is installed (a library embedding, a test).
    NoSubscriber,
}

/// Changes the log level of the running process.
pub fn set_log_level(level: &str) -> Result<LevelChange, InvalidSetting> {
    let filter = parse_level(level)?;
    if RUST_LOG_SET.get().copied().unwrap_or(false) {
        return Ok(LevelChange::OverriddenByRustLog);
    }
    let Some(handle) = LOG_FILTER.get() else {
        return Ok(LevelChange::NoSubscriber);
    };
    handle
        .reload(filter)
        .map_err(|e| InvalidSetting::new("log.level", format!("not changed: {e}")))?;
    Ok(LevelChange::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_levels_and_formats_are_refused() {
        let ok = LogConfig::default();
        assert!(ok.validate().is_ok());
        // The last: found by the config fuzz target, it made EnvFilter's parser panic.
        for bad in [
            "",
            "loud",
            "info,gateway=loudest",
            "info,a\u{a1}=a\u{a1}",
            "info\t",
        ] {
            let cfg = LogConfig {
                level: bad.into(),
                ..LogConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
        let cfg = LogConfig {
            format: "xml".into(),
            ..LogConfig::default()
        };
        assert!(cfg.validate().is_err());
        for good in ["debug", "info,gateway=debug", "warn,send::commit=trace"] {
            assert!(parse_level(good).is_ok(), "{good}");
        }
    }
}
