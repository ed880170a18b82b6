//! Config reload: on SIGHUP or an edit of the config file, the file (and the environment) is read
//! and validated again, and what can change safely in a running process is applied — the log
//! level, the rate limits and Send's content limits. Every other changed key is reported as
//! needing a restart and keeps its running value; an invalid file is refused as a whole. Which
//! key is which is in `docs/config.md`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::limit::RateLimits;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{AllConfig, Roles};

/// Keys applied without a restart (a prefix ending in `.` covers a whole block).
pub const RELOADABLE: &[&str] = &[
    "log.level",
    "rate_limits.",
    "send.max_content_bytes",
    "send.history_max_limit",
];

fn reloadable(key: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|r| key == *r || (r.ends_with('.') && key.starts_with(r)))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file says what is running already.
    Unchanged,
    /// `applied` took effect; `restart` changed in the file but not in the process.
    Changed {
        applied: Vec<String>,
        restart: Vec<String>,
    },
    /// The new config is invalid; nothing changed.
    Refused(String),
}

/// What a running process can change in itself.
pub struct Reloader {
    file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    roles: Roles,
    /// The configuration in force: as started, with every applied change since.
    current: Mutex<AllConfig>,
    limits: Arc<RateLimits>,
    send: Option<Arc<send::ContentLimits>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(
        cfg: AllConfig,
        roles: Roles,
        limits: Arc<RateLimits>,
        send: Option<Arc<send::ContentLimits>>,
    ) -> Self {
        Self {
            file: None,
            data_dir: None,
            roles,
            current: Mutex::new(cfg),
            limits,
            send,
        }
    }

    /// Where the config is read from on reload, and the `--data-dir` that overrides its
    /// `data_dir` (as at start).
    pub fn with_source(mut self, file: Option<PathBuf>, data_dir: Option<PathBuf>) -> Self {
        self.file = file;
        self.data_dir = data_dir;
        self
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn load(&self) -> anyhow::Result<AllConfig> {
        let mut cfg = AllConfig::load(self.file.as_deref())?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        let cfg = cfg.for_role(self.roles)?;
        crate::validate(&cfg)?;
        Ok(cfg)
    }

    /// Reads, validates and applies the config; logs what happened (`trigger` says why:
    /// `SIGHUP`, `file changed`).
    pub fn reload(&self, trigger: &str) -> Outcome {
        let outcome = self.reload_quietly();
        match &outcome {
            Outcome::Unchanged => {
                tracing::info!(trigger, "config reloaded: nothing changed");
            }
            Outcome::Changed { applied, restart } => {
                if !applied.is_empty() {
                    tracing::info!(trigger, applied = %applied.join(", "), "config reloaded: applied");
                }
                if !restart.is_empty() {
                    tracing::warn!(
                        trigger,
                        keys = %restart.join(", "),
                        "config reloaded: these changed keys need a restart; their old values stay in force"
                    );
                }
            }
            Outcome::Refused(why) => {
                tracing::error!(
                    trigger,
                    error = %why,
                    "config reload refused: the running configuration is unchanged"
                );
            }
        }
        outcome
    }

    fn reload_quietly(&self) -> Outcome {
        let new = match self.load() {
            Ok(c) => c,
            Err(e) => return Outcome::Refused(format!("{e:#}")),
        };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = diff(&current, &new);
        if changed.is_empty() {
            return Outcome::Unchanged;
        }
        let (apply, restart): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| reloadable(k));
        if apply.is_empty() {
            return Outcome::Changed {
                applied: Vec::new(),
                restart,
            };
        }
        // The level first: it is the one step that can still fail (nothing applied yet then).
        let mut applied = Vec::new();
        if current.log.level != new.log.level {
            match kit::telemetry::set_log_level(&new.log.level) {
                Ok(kit::telemetry::LevelChange::OverriddenByRustLog) => {
                    applied.push(format!(
                        "log.level={} (RUST_LOG is set and still wins)",
                        new.log.level
                    ));
                }
                Ok(_) => applied.push(format!("log.level={}", new.log.level)),
                Err(e) => return Outcome::Refused(e.to_string()),
            }
            current.log.level = new.log.level.clone();
        }
        for name in self.limits.apply(&current.rate_limits, &new.rate_limits) {
            applied.push(format!("rate_limits.{name}"));
        }
        if current.rate_limits != new.rate_limits {
            if applied.iter().all(|a| !a.starts_with("rate_limits.")) {
                // Changed where it makes no difference (a limit's rate while all are off).
                applied.push("rate_limits (no limit in force changed)".into());
            }
            current.rate_limits = new.rate_limits.clone();
        }
        let (content, history) = (new.send.max_content_bytes, new.send.history_max_limit);
        if (
            current.send.max_content_bytes,
            current.send.history_max_limit,
        ) != (content, history)
        {
            if let Some(s) = &self.send {
                s.set(content, history);
            }
            if current.send.max_content_bytes != content {
                applied.push(format!("send.max_content_bytes={content}"));
            }
            if current.send.history_max_limit != history {
                applied.push(format!("send.history_max_limit={history}"));
            }
            current.send.max_content_bytes = content;
            current.send.history_max_limit = history;
        }
        Outcome::Changed { applied, restart }
    }
}

/// The dotted paths of every leaf that differs between `a` and `b` (`send.max_content_bytes`).
/// Only names: values may be secrets.
fn diff(a: &AllConfig, b: &AllConfig) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &path,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let to = |c: &AllConfig| serde_json::to_value(c).unwrap_or_default();
    let mut out = Vec::new();
    walk("", &to(a), &to(b), &mut out);
    out
}

/// How long the config file must stay quiet after an event before it is read: editors write in
/// several steps (truncate, write, rename).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Reloads on SIGHUP and, when the config came from a file, on every change of that file
/// (debounced), until `stop`.
pub fn watch(reloader: Arc<Reloader>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel::<()>(16);
        // The watcher must live as long as the loop.
        let _watcher = reloader.file().and_then(|f| watch_file(f, tx));
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP not handled; config reloads on file edits only");
                None
            }
        };
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = hangup => {
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                }
                Some(()) = rx.recv() => {
                    // Debounce: wait until the file has been quiet for a moment.
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            Some(()) = rx.recv() => continue,
                            () = tokio::time::sleep(DEBOUNCE) => break,
                        }
                    }
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("file changed")).await;
                }
            }
        }
    })
}

/// Watches the file's directory (an editor's rename replaces the file, which a watch on the file
/// itself would lose) and signals `tx` on each event that concerns the file.
fn watch_file(file: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file.parent()?.to_path_buf();
    let name = file.file_name()?.to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == Some(&name)) {
            // Full: a reload is already coming.
            let _ = tx.try_send(());
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "config file not watched; reload with SIGHUP");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloader_for(yaml: &str) -> (tempfile::TempDir, Reloader, Arc<RateLimits>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, yaml).expect("write");
        let cfg = AllConfig::load(Some(&file)).expect("loads");
        let limits = Arc::new(RateLimits::new(&cfg.rate_limits));
        let r = Reloader::new(cfg, Roles::ALL, limits.clone(), None).with_source(Some(file), None);
        (dir, r, limits)
    }

    #[test]
    fn reloadable_keys_are_applied_and_the_rest_reported_for_a_restart() {
        let (dir, r, limits) = reloader_for("send:\n  max_content_bytes: 100\n");
        assert_eq!(r.reload("test"), Outcome::Unchanged);
        std::fs::write(
            dir.path().join("c.yaml"),
            "send:\n  max_content_bytes: 200\n  port: 9999\nrate_limits:\n  send_per_user: { per_minute: 1, burst: 1 }\njwt:\n  secret: a-new-secret-that-is-long-enough-0123456789\n",
        )
        .expect("write");
        let Outcome::Changed { applied, restart } = r.reload("test") else {
            panic!("a change");
        };
        assert_eq!(
            applied,
            vec!["rate_limits.send_per_user", "send.max_content_bytes=200"]
        );
        assert_eq!(restart, vec!["jwt.secret", "send.port"]);
        assert!(limits.send_per_user.check(&1).is_ok());
        assert!(
            limits.send_per_user.check(&1).is_err(),
            "the new limit is in force"
        );
        // The restart keys stay reported while they differ; the applied ones do not.
        let Outcome::Changed { applied, restart } = r.reload("test") else {
            panic!("still differs");
        };
        assert!(applied.is_empty());
        assert_eq!(restart, vec!["jwt.secret", "send.port"]);
    }

    #[test]
    fn an_invalid_file_is_refused_and_nothing_changes() {
        let (dir, r, limits) =
            reloader_for("rate_limits:\n  send_per_user: { per_minute: 1, burst: 1 }\n");
        for bad in [
            "rate_limits:\n  send_per_user: { per_minute: 600, burst: 200 }\nsend:\n  max_content_byte: 5\n",
            "log:\n  level: loudest\n",
            "send:\n  max_content_bytes: [\n",
            "send:\n  max_content_bytes: 0\n",
        ] {
            std::fs::write(dir.path().join("c.yaml"), bad).expect("write");
            assert!(matches!(r.reload("test"), Outcome::Refused(_)), "{bad}");
        }
        assert!(limits.send_per_user.check(&1).is_ok());
        assert!(
            limits.send_per_user.check(&1).is_err(),
            "the old limit stays"
        );
    }
}
