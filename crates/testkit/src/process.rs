//! The real `ruststacker all` binary as a child process, for what only a process shows: its log
//! output (stdout and log files), signals (SIGHUP, SIGTERM) and edits of its config file.
//!
//! Give it a config (every port 0, see [`Process::base_config`]); it learns the ports from the
//! lines the binary prints at start, and keeps everything the process writes to stdout and stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{Addrs, Client};

/// A running `ruststacker all`.
pub struct Process {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    /// The HTTP client, pointed at the ports the process printed.
    pub api: Client,
    /// The process's working dir: its config file, data dir and logs live here.
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// How long the process may take to start or stop.
const START: Duration = Duration::from_secs(60);

impl Process {
    /// A config for `ruststacker all` on port 0 everywhere with cheap password hashing; `extra`
    /// is appended (top-level keys other than meta/send/gateway/registry).
    pub fn base_config(send_extra: &str, extra: &str) -> String {
        format!(
            "meta:\n  port: 0\n  argon2_memory_kib: 256\n  argon2_iterations: 1\n\
             send:\n  port: 0\n{send_extra}\
             gateway:\n  port: 0\n\
             registry:\n  port: 0\n\
             {extra}"
        )
    }

    /// Writes `config` to `<dir>/ruststacker.yaml` and starts `bin all` with it; returns once
    /// every service listens.
    pub fn start(bin: &Path, config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ruststacker-process-")
            .tempdir()
            .expect("a temp dir for the process");
        std::fs::write(dir.path().join("ruststacker.yaml"), config).expect("write the config");
        let mut child = Command::new(bin)
            .arg("all")
            .arg("--config")
            .arg(dir.path().join("ruststacker.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let started = Instant::now();
        let addrs = loop {
            if let Some(a) = parse_addrs(&lock(&output)) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ruststacker exited ({status}) before listening:\n{}",
                    lock(&output)
                );
            }
            assert!(
                started.elapsed() < START,
                "ruststacker did not print its addresses within {START:?}:\n{}",
                lock(&output)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child: Some(child),
            output,
            api: Client::new(addrs),
            dir,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ruststacker.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        lock(&self.output).clone()
    }

    /// The concatenation of every file under `<dir>/logs` (the live log and its backups).
    pub fn log_files(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }

    /// Waits until `pred` holds for the process's output and log files (polled), or panics
    /// after `within` with what was written.
    pub async fn wait_for_logs(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let all = format!("{}{}", self.output(), self.log_files());
            if pred(&all) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "waited {within:?} for {what}; the logs:\n{all}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (a name `kill` knows: HUP, TERM) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// SIGTERM, then waits for a graceful exit; returns everything the process logged (output
    /// and log files).
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "ruststacker exited with {status}");
                break;
            }
            if started.elapsed() > START {
                let _ = child.kill();
                panic!("ruststacker did not stop within {START:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The reader threads end at EOF; give them the last lines.
        let drained = Instant::now();
        while drained.elapsed() < Duration::from_millis(500) && !self.output().contains("stopped") {
            std::thread::sleep(Duration::from_millis(10));
        }
        format!("{}{}", self.output(), self.log_files())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The four `  <service>  <scheme>://<addr>[/path]` lines `ruststacker` prints once listening.
fn parse_addrs(out: &str) -> Option<Addrs> {
    let find = |name: &str| -> Option<SocketAddr> {
        out.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            if words.next()? != name {
                return None;
            }
            let url = words.next()?;
            let rest = url.split("://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        })
    };
    Some(Addrs {
        meta: find("meta")?,
        send: find("send")?,
        gateway: find("gateway")?,
        registry: find("registry")?,
    })
}
