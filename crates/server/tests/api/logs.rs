//! What the real binary logs: to stdout and a size-rotated file, with request spans, and never a
//! secret (passwords, JWTs, refresh tokens, the JWT secret, the internal token), even at debug and
//! trace levels.

use testkit::{Body, Method, Process, Service, WsClient, json};

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker");
const JWT_SECRET: &str = "jwt-secret-for-the-log-test-0123456789abcdef";
const INTERNAL_TOKEN: &str = "internal-token-for-the-log-test-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_secret_reaches_the_logs_at_any_level() {
    // Every crate of ours at trace, the rest at debug: the most an operator can turn on.
    let level = "debug,server=trace,kit=trace,meta=trace,send=trace,gateway=trace,registry=trace,bus=trace,groups=trace,store=trace";
    let config = Process::base_config(
        "",
        &format!(
            "jwt:\n  secret: {JWT_SECRET}\ninternal_token: {INTERNAL_TOKEN}\n\
             log:\n  level: \"{level}\"\n  format: json\n  filename: logs/ruststacker.log\n  stdout: true\n"
        ),
    );
    let p = Process::start(BIN.as_ref(), &config);
    let api = &p.api;

    let first_password = "first-Passw0rd-never-logged";
    let second_password = "second-Passw0rd-never-logged";
    let alice = testkit::unique_username("alice");
    let bob = testkit::unique_username("bob");
    api.register(&alice, first_password, Some("Alice"))
        .await
        .assert_success();
    let bob_id = api
        .register(&bob, first_password, None)
        .await
        .assert_success()["user_id"]
        .as_i64()
        .expect("user_id");
    let login = api.login(&alice, first_password).await;
    let first_token = login.assert_success()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let bob_token = api.login(&bob, first_password).await.assert_success()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    api.login(&alice, "a-wrong-password-never-logged")
        .await
        .assert_error(401, "invalid_credentials");

    let room = api.create_group(&first_token, "logs", &[bob_id]).await;
    let room_id = room.assert_success()["room_id"].as_i64().expect("room_id");
    // The token in the handshake's query string, where a raw-URI log line would show it.
    let mut bob_ws = WsClient::connect(api.addrs.gateway, &bob_token)
        .await
        .expect("bob connects");
    api.send(&first_token, room_id, "hello from the log test")
        .await
        .assert_success();
    bob_ws.next_chat().await.expect("bob gets the message");

    let changed = api
        .change_password(&first_token, first_password, second_password)
        .await;
    let second_token = changed.assert_success()["token"]
        .as_str()
        .expect("a fresh token")
        .to_owned();
    api.joined_rooms(&first_token)
        .await
        .assert_error(401, "token_revoked");
    let third = api.login(&alice, second_password).await;
    let third_token = third.assert_success()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    // Refresh tokens: one spent (rotated), one refused as reused, the new one left alone.
    let refresh = third.assert_success()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let renewed = api.refresh(&refresh).await;
    let new_refresh = renewed.assert_success()["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_owned();
    api.refresh(&refresh)
        .await
        .assert_error(401, "refresh_token_reused");
    let renewed_token = renewed.assert_success()["token"]
        .as_str()
        .expect("the renewed token")
        .to_owned();
    api.send(&renewed_token, room_id, "after the change")
        .await
        .assert_success();
    // The internal token, right and wrong.
    let wrong_internal = "a-wrong-internal-token-never-logged-0123";
    for token in [INTERNAL_TOKEN, wrong_internal] {
        api.request_with_header(
            Method::POST,
            Service::Registry,
            "/registry/send/heartbeat",
            ("x-internal-token", token),
            Body::Json(json!({"instance_id": "send-x"})),
        )
        .await;
    }
    drop(bob_ws);

    let logs = p.stop();
    // The run really logged at debug level, with request spans: otherwise this test proves nothing.
    assert!(
        logs.contains("\"route\":\"/api/chat/send_message\"") && logs.contains("message stored"),
        "expected request spans and message events in the logs:\n{logs}"
    );
    assert!(logs.contains("\"user_id\":"), "connection spans: {logs}");
    for (what, secret) in [
        ("the first password", first_password),
        ("the second password", second_password),
        ("a wrong password", "a-wrong-password-never-logged"),
        ("the first JWT", first_token.as_str()),
        (
            "the fresh JWT from the password change",
            second_token.as_str(),
        ),
        ("the JWT after the change", third_token.as_str()),
        ("the renewed JWT", renewed_token.as_str()),
        ("a refresh token", refresh.as_str()),
        ("a rotated refresh token", new_refresh.as_str()),
        ("bob's JWT (in a handshake query)", bob_token.as_str()),
        ("the JWT secret", JWT_SECRET),
        ("the internal token", INTERNAL_TOKEN),
        ("a wrong internal token", wrong_internal),
    ] {
        assert!(
            !logs.contains(secret),
            "{what} appears in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // A JWT's signature is its most specific part; check it alone too (a log might cut the token).
    for token in [
        &first_token,
        &second_token,
        &third_token,
        &renewed_token,
        &bob_token,
    ] {
        let signature = token.rsplit('.').next().expect("three parts");
        assert!(!logs.contains(signature), "a JWT signature is in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_a_file_only_when_stdout_is_off() {
    let config = Process::base_config(
        "",
        "log:\n  level: debug\n  format: text\n  filename: logs/all.log\n  stdout: false\n",
    );
    let p = Process::start(BIN.as_ref(), &config);
    p.api.get(Service::Meta, "/health", None).await;
    let stdout = p.output();
    let logs = p.stop();
    assert!(
        !stdout.contains(" DEBUG ") && !stdout.contains(" INFO "),
        "stdout has only the start-up banner:\n{stdout}"
    );
    assert!(
        logs.contains("request{") && logs.contains("route=/health"),
        "text lines with the request span in the file:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let config = Process::base_config("", "log:\n  level: info\n  format: text\n");
    let p = Process::start(BIN.as_ref(), &config);
    p.api.get(Service::Meta, "/health", None).await;
    let stdout = p.output();
    p.stop();
    assert!(stdout.contains(" INFO "), "text lines on stdout:\n{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "stdout is a pipe here, so no terminal escape codes:\n{stdout:?}"
    );
}

#[test]
fn a_port_that_is_taken_is_named_with_how_to_move_the_service() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("ruststacker.yaml");
    let yaml =
        Process::base_config("", "").replace("send:\n  port: 0", &format!("send:\n  port: {port}"));
    std::fs::write(&config, yaml).expect("write the config");
    let out = std::process::Command::new(BIN)
        .arg("all")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run ruststacker all");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken port is fatal: {stderr}");
    assert!(
        stderr.contains(&format!("send: cannot listen on 127.0.0.1:{port}"))
            && stderr.contains("`send.port`")
            && stderr.contains("RUSTSTACKER_SEND__PORT"),
        "the message names the port and how to change it: {stderr}"
    );
}
