//! The workload shapes of `fanout` against a real deployment (`ruststacker all`, started by the
//! test on port 0) and the bare server, at small sizes: many rooms with alternated rounds, and
//! small rooms (one-to-one rooms and groups) for a duration at a fixed rate. Only the verifier's
//! counts are asserted, never a timing.

use std::path::Path;

use serde_json::Value;
use testkit::TestApp;

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker-bench");

/// Runs `fanout` against `app` with `args`, and returns its summary.
async fn fanout(app: &TestApp, dir: &Path, args: &[&str]) -> Value {
    let addrs = app.addrs();
    let json = dir.join("summary.json");
    let out = tokio::process::Command::new(BIN)
        .arg("fanout")
        .args(["--meta", &format!("http://{}", addrs.meta)])
        .args(["--send", &format!("http://{}", addrs.send)])
        .args(["--registry", &format!("http://{}", addrs.registry)])
        .args(["--timeout", "30", "--json"])
        .arg(&json)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run fanout");
    assert!(
        out.status.success(),
        "fanout {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("json")
}

/// Nothing lost, duplicated, reordered, from another room or never accepted; every expected
/// delivery made.
fn assert_verified(s: &Value) {
    for k in [
        "lost",
        "duplicates",
        "reordered",
        "gaps",
        "unexpected",
        "other_room_frames",
        "send_errors",
    ] {
        assert_eq!(s[k], 0, "{k}: {s}");
    }
    assert!(s["deliveries"].as_u64().is_some_and(|d| d > 0), "{s}");
    assert_eq!(s["deliveries"], s["expected_deliveries"], "{s}");
}

/// 3 groups of 4 on the server and 3 rooms of 4 on the bare server, two alternated rounds: the
/// server's users and groups are made once, every round verifies room by room, and the summary
/// has each round and the medians.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rooms_alternated_with_the_bare_server_verify_room_by_room() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = std::process::id().to_string();
    let s = fanout(
        &app,
        dir.path(),
        &[
            "--users",
            "12",
            "--rooms",
            "3",
            "--messages",
            "20",
            "--in-flight",
            "4",
            "--compare-bare",
            "--rounds",
            "2",
            "--pids",
            &pid,
        ],
    )
    .await;
    let rounds = s["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{s}");
    for r in rounds {
        for side in ["bare", "server"] {
            let x = &r[side];
            assert_verified(x);
            // 20 messages over 3 rooms of 4: 7 + 7 + 6 messages, 4 members each.
            assert_eq!(x["deliveries"], 80, "{side}: {x}");
            assert_eq!(x["rooms"], 3, "{side}: {x}");
            assert_eq!(x["room_sizes"]["4"], 3, "{side}: {x}");
        }
        assert!(r["server"]["server_rss_kib"]["peak"].is_u64(), "{r}");
        assert!(r["server_to_bare"]["deliveries_per_sec"].is_number(), "{r}");
    }
    let m = &s["median"];
    assert_eq!(m["rounds"], 2, "{s}");
    for side in ["bare", "server"] {
        assert_eq!(m[side]["lost"], 0.0, "{side}: {m}");
        assert!(m[side]["latency_p99_ms"].is_number(), "{side}: {m}");
    }
    assert!(m["server_to_bare"]["latency_p90_ms"].is_number(), "{m}");
    app.shutdown().await;
}

/// One-to-one rooms and groups of 5, sent to for a duration at a fixed rate by their members in
/// turn: every member gets its room's messages and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_rooms_for_a_duration_at_a_fixed_rate() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = fanout(
        &app,
        dir.path(),
        &[
            "--users",
            "14",
            "--room-sizes",
            "2,5",
            "--seconds",
            "1",
            "--rate",
            "40",
            "--in-flight",
            "4",
        ],
    )
    .await;
    assert_verified(&s);
    assert_eq!(s["rooms"], 4, "{s}");
    assert_eq!(s["room_sizes"]["2"], 2, "{s}");
    assert_eq!(s["room_sizes"]["5"], 2, "{s}");
    assert_eq!(s["seconds"], 1.0, "{s}");
    assert!(s["messages"].as_u64().is_some_and(|m| m > 0), "{s}");
    app.shutdown().await;
}
