//! `fanout --procs 2 --source-addrs ...` against the bare server, as separate processes: the
//! shards' verdicts merge into one summary that counts every delivery once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker-bench");

/// Kills the bare server however the test ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_client_processes_from_two_source_addresses_merge_into_one_verdict() {
    let mut child = Command::new(BIN)
        .args(["bare-server", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the bare server");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("summary.json");
    let pid = server.0.id().to_string();
    let out = Command::new(BIN)
        .args(["fanout", "--bare", &url, "--users", "6", "--messages", "25"])
        .args(["--procs", "2", "--source-addrs", "127.0.0.2,127.0.0.3"])
        .args(["--timeout", "20", "--pids", &pid, "--json"])
        .arg(&json)
        .output()
        .expect("run fanout");
    assert!(
        out.status.success(),
        "fanout failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("json");
    assert_eq!(s["client_procs"], 2, "{s}");
    assert_eq!(s["deliveries"], 150, "{s}");
    for k in ["lost", "duplicates", "reordered", "gaps", "unexpected"] {
        assert_eq!(s[k], 0, "{k}: {s}");
    }
    assert!(s["server_cpu_us_per_delivery"].is_number(), "{s}");
    assert!(s["latency_ms"]["p999"].is_number(), "{s}");
}
