//! A command-line program (`ruststacker chat …`) as a child process whose output a test reads line
//! by line as it comes, waiting for a line rather than for time, and whose stdin it can write.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines a pipe delivered so far, and whether it reached its end.
#[derive(Debug, Default)]
struct Pipe {
    lines: Vec<String>,
    closed: bool,
}

/// A running command with its stdout and stderr collected line by line.
#[derive(Debug)]
pub struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Pipe>>,
    stderr: Arc<Mutex<Pipe>>,
    /// How many stdout lines [`Cli::next_line`] has handed out.
    read: usize,
}

/// How a finished command ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    /// The exit code (`-1` when a signal ended the process).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Everything it printed, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code(),
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

impl Cli {
    /// Starts `bin args…` with stdout and stderr piped and stdin piped (`with_stdin`) or empty.
    /// `RUSTSTACKER_USER` and `RUSTSTACKER_PASSWORD` are removed from its environment so only
    /// what the test passes counts.
    pub fn spawn(bin: &Path, args: &[&str], with_stdin: bool) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("RUSTSTACKER_USER")
            .env_remove("RUSTSTACKER_PASSWORD")
            .env_remove("RUST_LOG")
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let into = Arc::new(Mutex::new(Pipe::default()));
            let sink = into.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lock(&sink).lines.push(line);
                }
                lock(&sink).closed = true;
            });
            into
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("piped stderr")));
        Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            read: 0,
        }
    }

    /// Writes `line` and a newline to its stdin.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("started with stdin");
        writeln!(stdin, "{line}").expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Closes its stdin (the end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line not handed out yet, waiting up to `within`; panics with the output
    /// so far when none comes.
    pub async fn next_line(&mut self, within: Duration) -> String {
        let started = Instant::now();
        loop {
            let (line, closed) = {
                let out = lock(&self.stdout);
                (out.lines.get(self.read).cloned(), out.closed)
            };
            if let Some(line) = line {
                self.read += 1;
                return line;
            }
            assert!(
                !closed,
                "stdout ended without another line; {}",
                self.so_far()
            );
            assert!(
                started.elapsed() < within,
                "no stdout line within {within:?}; {}",
                self.so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until some stderr line contains `needle` (counting from the start) and returns it.
    pub async fn wait_stderr(&self, needle: &str, within: Duration) -> String {
        self.wait_stderr_count(needle, 1, within).await
    }

    /// Waits until `n` stderr lines contain `needle` and returns the `n`th.
    pub async fn wait_stderr_count(&self, needle: &str, n: usize, within: Duration) -> String {
        let started = Instant::now();
        loop {
            let found = lock(&self.stderr)
                .lines
                .iter()
                .filter(|l| l.contains(needle))
                .nth(n - 1)
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                started.elapsed() < within,
                "stderr showed {needle:?} fewer than {n} times within {within:?}; {}",
                self.so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit (killing it after `within`, which fails the test) and for
    /// its pipes to drain.
    pub async fn finish(mut self, within: Duration) -> Finished {
        self.stdin = None;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                break status;
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running after {within:?}; {}", self.so_far());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader threads reach EOF right after the exit.
        let drained = Instant::now();
        while !(lock(&self.stdout).closed && lock(&self.stderr).closed)
            && drained.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Finished {
            status,
            stdout: lock(&self.stdout).lines.clone(),
            stderr: lock(&self.stderr).lines.clone(),
        }
    }

    fn so_far(&self) -> String {
        format!(
            "stdout so far:\n{}\nstderr so far:\n{}",
            lock(&self.stdout).lines.join("\n"),
            lock(&self.stderr).lines.join("\n")
        )
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lock(m: &Mutex<Pipe>) -> std::sync::MutexGuard<'_, Pipe> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
