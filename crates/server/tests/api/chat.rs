//! `ruststacker chat`, the terminal client, as a user runs it: real processes of the binary
//! against a real `ruststacker all`, synchronised on the lines they print.

use std::time::Duration;

use testkit::proto::api::{CreateGroupReply, JoinedRoomsReply, MessageView};
use testkit::{Cli, Finished, PASSWORD, Process, TestUser, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker");
/// How long one client command may take (it logs in, maybe connects, sends or reads).
const RUN: Duration = Duration::from_secs(30);

/// `all` on port 0 everywhere with cheap password hashing; `gateway_extra` goes into the
/// gateway block.
fn start(gateway_extra: &str) -> Process {
    let config = format!(
        "meta:\n  port: 0\n  argon2_memory_kib: 256\n  argon2_iterations: 1\n\
         send:\n  port: 0\n\
         gateway:\n  port: 0\n{gateway_extra}\
         registry:\n  port: 0\n"
    );
    Process::start(BIN.as_ref(), &config)
}

/// `ruststacker chat` pointed at `p`'s services, as `user` with `password`, plus `args`.
fn chat(p: &Process, user: &str, password: &str, args: &[&str], with_stdin: bool) -> Cli {
    let a = p.api.addrs;
    let (meta, send, registry) = (
        format!("http://{}", a.meta),
        format!("http://{}", a.send),
        format!("http://{}", a.registry),
    );
    let mut all = vec![
        "chat",
        "--server",
        &meta,
        "--send-url",
        &send,
        "--registry-url",
        &registry,
        "--user",
        user,
        "--password",
        password,
    ];
    all.extend_from_slice(args);
    Cli::spawn(BIN.as_ref(), &all, with_stdin)
}

/// Runs a scripted command to its end and asserts it succeeded.
async fn chat_ok(p: &Process, user: &str, args: &[&str]) -> Vec<String> {
    let done = chat(p, user, PASSWORD, args, false).finish(RUN).await;
    assert_eq!(
        done.code(),
        0,
        "`chat {args:?}` failed: {}",
        done.transcript()
    );
    done.stdout
}

/// Runs a scripted command that must fail; returns its exit code and its stderr.
async fn chat_err(p: &Process, user: &str, password: &str, args: &[&str]) -> (i32, String) {
    let done = chat(p, user, password, args, false).finish(RUN).await;
    assert_ne!(
        done.code(),
        0,
        "`chat {args:?}` succeeded: {}",
        done.transcript()
    );
    (done.code(), done.stderr.join("\n"))
}

/// Registers `name` through the client (`--register --rooms`) and returns its user id.
async fn register(p: &Process, name: &str) -> i64 {
    chat_ok(p, name, &["--register", "--rooms"]).await;
    p.api.login_ok(name, PASSWORD).await.user_id
}

/// `user` listening to `room` for `count` messages as JSON lines, once it says it listens.
async fn listener(p: &Process, user: &str, room: &str, count: u32) -> Cli {
    let count = count.to_string();
    let cli = chat(
        p,
        user,
        PASSWORD,
        &["--listen", room, "--count", &count, "--json"],
        false,
    );
    cli.wait_stderr("listening on room", RUN).await;
    cli
}

/// The messages a `--json` listener printed.
fn messages(done: &Finished) -> Vec<MessageView> {
    done.stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a message ({e}): {l}")))
        .collect()
}

/// Alice (registered through the API) and Bob (through the client) in a group of Alice's named
/// `name`; returns Alice, Bob's username and id, and the room id.
async fn alice_and_bob(p: &Process, name: &str) -> (TestUser, String, i64, i64) {
    let alice = p.api.register_and_login("alice").await;
    let bob = testkit::unique_username("bob");
    let bob_id = register(p, &bob).await;
    let room_id = p
        .api
        .create_group(&alice.token, name, &[bob_id])
        .await
        .data::<CreateGroupReply>()
        .room_id;
    (alice, bob, bob_id, room_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_prints_exactly_what_another_user_sends_in_order() {
    let p = start("");
    let alice = testkit::unique_username("alice");
    let bob = testkit::unique_username("bob");
    register(&p, &alice).await;
    let bob_id = register(&p, &bob).await;
    // Registering again only logs in.
    chat_ok(&p, &alice, &["--register", "--rooms"]).await;
    let token = p.api.login_ok(&alice, PASSWORD).await.token;
    let group = format!("g{}", &alice[alice.len() - 6..]);
    let room_id = p
        .api
        .create_group(&token, &group, &[bob_id])
        .await
        .assert_success()["room_id"]
        .as_i64()
        .expect("room_id");
    p.api
        .send(&token, room_id, "before the listener")
        .await
        .assert_success();
    let room = room_id.to_string();

    let rooms = chat_ok(&p, &bob, &["--rooms", "--json"]).await;
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    let listed: serde_json::Value = serde_json::from_str(&rooms[0]).expect("a JSON room");
    assert_eq!(
        (listed["room_id"].as_i64(), listed["last_seq"].as_i64()),
        (Some(room_id), Some(1))
    );

    let listener = listener(&p, &bob, &room, 3).await;
    let texts = ["first line", "second: by name", "third, with its ACK"];
    let sent = chat_ok(&p, &alice, &["--send", &room, texts[0]]).await;
    assert!(
        sent[0].starts_with("sent message ") && sent[0].ends_with("(seq 2)"),
        "{sent:?}"
    );
    chat_ok(&p, &alice, &["--send", &group, texts[1]]).await;
    let acked = chat_ok(&p, &alice, &["--send", &room, texts[2], "--wait-ack"]).await;
    assert!(
        acked.len() == 2
            && acked[1].starts_with("delivered message ")
            && acked[1].ends_with("(seq 4)"),
        "{acked:?}"
    );

    let done = listener.finish(RUN).await;
    assert_eq!(done.code(), 0, "{}", done.transcript());
    let got = messages(&done);
    let summary: Vec<(i64, &str)> = got.iter().map(|m| (m.seq, m.content.as_str())).collect();
    assert_eq!(summary, [(2, texts[0]), (3, texts[1]), (4, texts[2])]);
    assert!(
        got.iter()
            .all(|m| m.room_id == room_id && m.sender_id != bob_id)
    );

    // Plain text: `[room] sender: text`, and history from a chosen seq.
    let plain = chat_ok(
        &p,
        &bob,
        &["--listen", &room, "--after-seq", "3", "--count", "1"],
    )
    .await;
    assert_eq!(plain, [format!("[{group}] {alice}: {}", texts[2])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_one_clear_line() {
    let p = start("");
    let alice = testkit::unique_username("alice");
    register(&p, &alice).await;

    let (code, err) = chat_err(&p, &alice, "a-wrong-password", &["--rooms"]).await;
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(
        !err.contains("a-wrong-password"),
        "the password is never printed: {err}"
    );

    let (code, err) = chat_err(&p, &alice, PASSWORD, &["--send", "999999", "hello"]).await;
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("room_not_found") || err.contains("not_member"),
        "{err}"
    );
    let (code, err) = chat_err(&p, &alice, PASSWORD, &["--listen", "999999"]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not one of your rooms"), "{err}");
    let (code, err) = chat_err(&p, &alice, PASSWORD, &["--send", "no-such-room", "hi"]).await;
    assert_eq!(code, 5, "{err}");

    // No prompt when stdin is not a terminal: missing credentials are a usage error.
    let (code, err) = chat_err(&p, &alice, "", &["--rooms"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no password") && err.contains("RUSTSTACKER_PASSWORD"),
        "{err}"
    );

    let down = Cli::spawn(
        BIN.as_ref(),
        &[
            "chat",
            "--server",
            "http://127.0.0.1:1",
            "--user",
            &alice,
            "--password",
            PASSWORD,
            "--rooms",
        ],
        false,
    )
    .finish(RUN)
    .await;
    assert_eq!(down.code(), 4, "{}", down.transcript());
    assert!(
        down.stderr
            .join("\n")
            .contains("cannot reach meta at http://127.0.0.1:1/"),
        "{}",
        down.transcript()
    );
}

/// Given Meta's URL alone, the client asks Meta where Send and the registry are: on ports other
/// than the seed's, a send waits for its ACK (Send, the registry's placement and the gateway)
/// without `--send-url` or `--registry-url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_only_meta_the_client_finds_send_and_the_registry() {
    let p = start("");
    let name = testkit::unique_username("group");
    let (_alice, bob, _, room) = alice_and_bob(&p, &name).await;
    let meta = format!("http://{}", p.api.addrs.meta);
    let room = room.to_string();
    let args = [
        "chat",
        "--server",
        &meta,
        "--user",
        &bob,
        "--password",
        PASSWORD,
        "--send",
        &room,
        "found",
        "--wait-ack",
    ];
    let done = Cli::spawn(BIN.as_ref(), &args, false).finish(RUN).await;
    assert_eq!(done.code(), 0, "{}", done.transcript());
    assert!(
        done.stdout.join("\n").contains("delivered message"),
        "{}",
        done.transcript()
    );
}

/// A listener with a time limit and no count succeeds when it listened that long, and fails
/// (exit 6) when it never reached a gateway: here the registry places clients on an address
/// nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_connected_does_not_exit_0() {
    let p = start("  address: 127.0.0.2\n");
    let name = testkit::unique_username("group");
    let (_alice, bob, _, _) = alice_and_bob(&p, &name).await;
    let (code, err) = chat_err(&p, &bob, PASSWORD, &["--listen", &name, "--timeout", "2"]).await;
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("without reaching a gateway"), "{err}");

    let p = start("");
    let (_alice, bob, _, _) = alice_and_bob(&p, &name).await;
    chat_ok(&p, &bob, &["--listen", &name, "--timeout", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_mode_takes_commands_and_messages_from_piped_stdin() {
    let p = start("");
    let group = testkit::unique_username("group");
    let (alice, bob, bob_id, room_id) = alice_and_bob(&p, &group).await;
    p.api
        .send(&alice.token, room_id, "earlier, from alice")
        .await
        .assert_success();
    let mut alice_ws = WsClient::connect(p.api.addrs.gateway, &alice.token)
        .await
        .expect("alice connects");
    assert_eq!(
        alice_ws.next_chat().await.expect("her own message").content,
        "earlier, from alice"
    );

    let mut session = chat(&p, &bob, PASSWORD, &[], true);
    session.write_line(&format!("/join {room_id}"));
    session.write_line("hello");
    session.write_line("/join nowhere-at-all");
    session.write_line(&format!("/join {group}"));
    session.write_line("//slash at the start");
    session.write_line("/dm no-such-user-anywhere");
    session.write_line(&format!("/dm {}", alice.username));
    session.write_line("just between us");
    session.write_line(&format!(
        "/create {group}-3 {},no-such-user-anywhere",
        alice.username
    ));
    session.write_line(&format!(
        "/create {group}-2 {}",
        alice.username.to_uppercase()
    ));
    session.write_line("in the new group");
    session.write_line("/quit");
    let done = session.finish(RUN).await;
    assert_eq!(done.code(), 0, "{}", done.transcript());

    let got = alice_ws.new_chats(4).await.expect("alice gets bob's lines");
    let texts: Vec<&str> = got.iter().map(|c| c.content.as_str()).collect();
    assert_eq!(
        texts,
        [
            "hello",
            "/slash at the start",
            "just between us",
            "in the new group"
        ]
    );
    assert!(got.iter().all(|c| c.sender_id == bob_id));
    assert!(got[..2].iter().all(|c| c.room_id == room_id));
    let rooms: std::collections::BTreeSet<i64> = got.iter().map(|c| c.room_id).collect();
    assert_eq!(
        rooms.len(),
        3,
        "the group, the direct room and the new group: {got:?}"
    );

    let out = done.stdout.join("\n");
    for expected in [
        format!("[{group}] {}: earlier, from alice", alice.username),
        format!("[{group}] {bob}: hello"),
        format!("[{group}-2] {bob}: in the new group"),
        // A one-to-one room is named after the other member.
        format!("[@{}] {bob}: just between us", alice.username),
        "delivered message".to_owned(),
    ] {
        assert!(
            out.contains(&expected),
            "missing {expected:?}; {}",
            done.transcript()
        );
    }
    let err = done.stderr.join("\n");
    for expected in [
        "no room named \"nowhere-at-all\"",
        "no user named \"no-such-user-anywhere\"",
    ] {
        assert!(
            err.contains(expected),
            "missing {expected:?}; {}",
            done.transcript()
        );
    }
    assert_eq!(
        err.matches("no user named").count(),
        2,
        "the /dm and the /create with an unknown member: {}",
        done.transcript()
    );
    let rooms = p
        .api
        .joined_rooms(&alice.token)
        .await
        .data::<JoinedRoomsReply>();
    assert!(
        !rooms.rooms.iter().any(|r| r.name == format!("{group}-3")),
        "a group with an unknown member is not created: {:?}",
        rooms.rooms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_reconnects_and_loses_nothing_when_its_socket_keeps_dropping() {
    // The gateway closes a socket that sends nothing for 1 s (4001); the client pings every 20 s,
    // so its socket drops every second and it reconnects each time.
    let p = start("  ping_interval_secs: 60\n  idle_timeout_secs: 1\n");
    let (alice, bob, _, room_id) = alice_and_bob(&p, "flaky").await;
    let room = room_id.to_string();
    let listener = listener(&p, &bob, &room, 6).await;
    for round in 1..=3 {
        // Two messages around each reconnect: one right after it, one a moment later.
        listener.wait_stderr_count("reconnected", round, RUN).await;
        for half in ["a", "b"] {
            p.api
                .send(&alice.token, room_id, &format!("{round}{half}"))
                .await
                .assert_success();
        }
    }
    let done = listener.finish(RUN).await;
    assert_eq!(done.code(), 0, "{}", done.transcript());
    let got: Vec<String> = messages(&done).into_iter().map(|m| m.content).collect();
    assert_eq!(
        got,
        ["1a", "1b", "2a", "2b", "3a", "3b"],
        "{}",
        done.transcript()
    );
    assert!(
        done.stderr.iter().any(|l| l.contains("connection lost")),
        "{}",
        done.transcript()
    );
}

#[test]
fn the_clients_credential_variables_are_not_read_as_server_config() {
    // A shell that exported them for `ruststacker chat` must still start a server.
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = std::process::Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .env("RUSTSTACKER_USER", "alice")
        .env("RUSTSTACKER_PASSWORD", "password123")
        .output()
        .expect("run ruststacker migrate");
    assert!(
        out.status.success(),
        "migrate refused the environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_renews_its_session_past_the_access_tokens_expiry() {
    // Access tokens of two seconds: the token the client logged in with is dead by the time the
    // second line is typed, so only a renewal keeps the session going. The test's own calls log
    // in right before each use.
    let config = "meta:\n  port: 0\n  argon2_memory_kib: 256\n  argon2_iterations: 1\n\
         send:\n  port: 0\ngateway:\n  port: 0\nregistry:\n  port: 0\n\
         jwt:\n  expire_secs: 2\n  refresh_expire_secs: 600\n";
    let p = Process::start(BIN.as_ref(), config);
    let bob = testkit::unique_username("bob");
    let bob_id = register(&p, &bob).await;
    let alice = p.api.register_ok(&testkit::unique_username("alice")).await;
    let token = p.api.login_ok(&alice.username, PASSWORD).await.token;
    let room_id = p
        .api
        .create_group(&token, "renewals", &[bob_id])
        .await
        .data::<CreateGroupReply>()
        .room_id;
    let token = p.api.login_ok(&alice.username, PASSWORD).await.token;
    let mut alice_ws = WsClient::connect(p.api.addrs.gateway, &token)
        .await
        .expect("alice connects");

    let mut session = chat(&p, &bob, PASSWORD, &[], true);
    session.write_line(&format!("/join {room_id}"));
    session.write_line("before expiry");
    let first = alice_ws.next_chat().await.expect("the first line");
    assert_eq!(
        (first.content.as_str(), first.sender_id),
        ("before expiry", bob_id)
    );
    // The token Bob's client logged in with expires: a token of Bob's issued after it (the
    // client logged in before its first line arrived) is refused first, so once this one is,
    // the client's first token is past its expiry too.
    let later = p.api.login_ok(&bob, PASSWORD).await.token;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while p.api.me(&later).await.status != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 2 s token still accepted after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session.write_line("after expiry");
    session.write_line("/quit");
    let got = alice_ws.next_chat().await.expect("the line after expiry");
    assert_eq!(
        (got.content.as_str(), got.sender_id),
        ("after expiry", bob_id)
    );
    let done = session.finish(RUN).await;
    assert_eq!(done.code(), 0, "{}", done.transcript());
}
