//! Config reload in the real binary: an edit of its config file (or SIGHUP) changes the log level,
//! the rate limits and the content limits of the running process; keys that need a restart are
//! reported; an invalid edit is refused and the old values stay.

use std::time::Duration;

use testkit::{Process, Service};

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker");
const WITHIN: Duration = Duration::from_secs(15);

fn config(max_content: usize, send_rate: &str, level: &str, commit_batch: usize) -> String {
    Process::base_config(
        &format!("  max_content_bytes: {max_content}\n  commit_batch: {commit_batch}\n"),
        &format!(
            "rate_limits:\n  enabled: true\n  send_per_user: {send_rate}\n\
             log:\n  level: {level}\n  format: text\n  filename: logs/ruststacker.log\n  stdout: false\n"
        ),
    )
}

/// Replaces the file the way an editor that saves atomically does.
fn save(p: &Process, text: &str) {
    let tmp = p.dir.path().join(".ruststacker.yaml.swp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, p.config_path()).expect("rename");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_file_changes_limits_and_log_level_and_a_bad_edit_is_refused() {
    let generous = "{ per_minute: 600, burst: 200 }";
    let p = Process::start(BIN.as_ref(), &config(100, generous, "info", 256));
    let api = &p.api;
    let users = api.register_users(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = api
        .create_group_ok(alice, "reload", &[bob, carol])
        .await
        .room_id;
    let long = "x".repeat(150);
    api.send(&alice.token, room, &long)
        .await
        .assert_error(413, "content_too_large");
    api.get(Service::Meta, "/health", None).await;
    assert!(!p.log_files().contains(" DEBUG "), "info level at start");

    // An edit: new content limit, a strict send rate, debug logs, and a key that needs a restart.
    save(&p, &config(1000, "{ per_minute: 1, burst: 2 }", "debug", 7));
    p.wait_for_logs(WITHIN, "the reload", |l| {
        l.contains("config reloaded: applied") && l.contains("need a restart")
    })
    .await;
    let logs = p.log_files();
    for applied in [
        "log.level=debug",
        "rate_limits.send_per_user",
        "send.max_content_bytes=1000",
    ] {
        assert!(
            logs.contains(applied),
            "{applied} reported applied:\n{logs}"
        );
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("need a restart") && l.contains("send.commit_batch")),
        "{logs}"
    );

    api.send(&alice.token, room, &long).await.assert_success();
    api.send(&alice.token, room, "two").await.assert_success();
    api.send(&alice.token, room, "three")
        .await
        .assert_error(429, "rate_limited");
    api.get(Service::Meta, "/health", None).await;
    p.wait_for_logs(WITHIN, "debug lines after the reload", |l| {
        l.contains(" DEBUG ")
    })
    .await;

    // A bad edit is refused as a whole: the running values stay (content limit 1000, not the
    // default 16384 and not the file's nonsense).
    save(
        &p,
        &config(1000, "{ per_minute: 600, burst: 200 }", "debug", 7)
            .replace("max_content_bytes: 1000", "max_content_bytes: lots"),
    );
    p.wait_for_logs(WITHIN, "the refusal", |l| {
        l.contains("config reload refused")
    })
    .await;
    api.send(&carol.token, room, &"y".repeat(1001))
        .await
        .assert_error(413, "content_too_large");
    api.send(&carol.token, room, &"y".repeat(1000))
        .await
        .assert_success();
    api.send(&carol.token, room, "one too many")
        .await
        .assert_error(429, "rate_limited");

    // SIGHUP reloads too, without an edit.
    let before = count(&p.log_files(), "SIGHUP");
    p.signal("HUP");
    p.wait_for_logs(WITHIN, "a reload on SIGHUP", |l| {
        count(l, "SIGHUP") > before
    })
    .await;
    let logs = p.stop();
    assert!(
        logs.lines()
            .any(|l| l.contains("SIGHUP") && l.contains("config reload refused")),
        "the file is still invalid, so the SIGHUP reload is refused too:\n{logs}"
    );
}
