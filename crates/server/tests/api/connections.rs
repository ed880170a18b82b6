//! The connection budget (docs/security.md, "Connection budget"), over raw sockets: caps per
//! listener and per source address, the header-read and idle timeouts, oversized heads answered
//! in the envelope, and a flood past every cap in a `ruststacker all` process held to a low
//! open-file limit, as on the machines where idle sockets once took every service down.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures_util::future::join_all;
use testkit::{Method, Process, Service, TestApp, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker");

/// How long past a timeout the server may take to close: generous, for a busy machine.
const MARGIN: Duration = Duration::from_secs(3);

/// A socket to `to` from the loopback address `from` (127.0.0.2, 127.0.0.3, ... are all this
/// machine on Linux, so one test can be several clients).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Reads until the server closes the socket (EOF or reset) and returns what it sent, or `None`
/// when it is still open after `within`.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().map(|()| got)
}

/// The status and the JSON body of a raw HTTP/1.1 reply.
fn parse_reply(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: body {body:?}"));
    (status, body)
}

/// Writes `request` (ignoring a write cut short by the server closing) while reading the reply.
async fn exchange(to: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let stream = connect_from(loopback(1), to).await;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(testkit::WAIT, read.read_to_end(&mut got)).await;
    drop(writer.await);
    got
}

/// A counter's value in Prometheus text, 0 when absent.
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_text(app: &testkit::Client, service: Service) -> String {
    reqwest::get(app.url(service, "/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text")
}

/// `ruststacker_http_connections_closed_total` of `service` for `reason`.
async fn closed_by_server(app: &TestApp, service: Service, reason: &str) -> f64 {
    let name = format!("{service:?}").to_lowercase();
    counter(
        &metrics_text(&app.api, service).await,
        "ruststacker_http_connections_closed_total",
        &[("service", &name), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickling_in_is_cut_at_the_header_read_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_secs = 1;
        c.http.idle_timeout_secs = 1;
    })
    .await;
    let mut stream = connect_from(loopback(1), app.addrs().meta).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let (mut read, mut write) = stream.into_split();
    // One header byte every 200 ms: never idle, never done.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = read_until_closed(&mut read, Duration::from_secs(1) + MARGIN).await;
    trickle.abort();
    assert!(
        closed.is_some(),
        "a head still incomplete after the header-read timeout must be cut"
    );
    assert!(closed_by_server(&app, Service::Meta, "header_timeout").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_secs = 60;
        c.http.idle_timeout_secs = 1;
    })
    .await;
    let addr = app.addrs().send;
    // A socket that never sends anything.
    let mut silent = connect_from(loopback(1), addr).await;
    // A kept-alive socket after one whole exchange.
    let mut kept = connect_from(loopback(1), addr).await;
    kept.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.expect("the reply");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Both well before the 60 s header-read timeout.
    let within = Duration::from_secs(1) + MARGIN;
    assert!(
        read_until_closed(&mut silent, within).await.is_some(),
        "a silent socket is closed"
    );
    assert!(
        read_until_closed(&mut kept, within).await.is_some(),
        "an idle kept-alive socket is closed"
    );
    assert!(closed_by_server(&app, Service::Send, "idle").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_urls_are_answered_in_the_envelope() {
    let app = TestApp::spawn().await;
    let addr = app.addrs().meta;
    let header = |bytes: usize| {
        format!(
            "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(bytes)
        )
        .into_bytes()
    };
    let many_headers = {
        let mut r = "GET /ping HTTP/1.1\r\nHost: x\r\n".to_owned();
        for i in 0..500 {
            r.push_str(&format!("X-H{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    let long_url = format!(
        "GET /ping?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(100_000)
    );
    for (what, request, status, error) in [
        (
            "a 1 MB header",
            header(1024 * 1024),
            431,
            "headers_too_large",
        ),
        (
            "a 100 KB header",
            header(100 * 1024),
            431,
            "headers_too_large",
        ),
        ("500 headers", many_headers, 431, "headers_too_large"),
        ("a 100 KB URL", long_url.into_bytes(), 414, "url_too_long"),
    ] {
        let reply = exchange(addr, request).await;
        let (got, body) = parse_reply(&reply);
        assert_eq!(got, status, "{what}");
        assert_eq!(body["code"], status, "{what}: {body}");
        assert_eq!(body["error"], error, "{what}: {body}");
        assert!(
            body["data"].is_null() && body["message"].is_string(),
            "{what}: {body}"
        );
    }
    // Within the limits it is served, on the same kind of socket.
    let reply = exchange(
        addr,
        [
            header(16 * 1024),
            b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ]
        .concat(),
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(
        text.matches("HTTP/1.1 200").count(),
        2,
        "a 16 KiB header passes, and the next request on the connection too: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_a_call_without_the_internal_token_before_reading_its_body() {
    let app = TestApp::spawn_with(|c| {
        c.internal_token = Some("internal-token-for-the-budget-test-0123456789".into());
    })
    .await;
    for path in [
        "/registry/gateway/register",
        "/registry/gateway/heartbeat",
        "/registry/send/register",
        "/registry/user/connect",
        "/registry/user/routes/batch",
    ] {
        for body in [&b"{not json"[..], b"[1,2]", b"{\"x\":1}"] {
            let reply = app
                .api
                .request(
                    Method::POST,
                    Service::Registry,
                    path,
                    None,
                    testkit::Body::json_bytes(body.to_vec()),
                )
                .await;
            reply.assert_error(401, "invalid_internal_token");
        }
    }
}

/// The flood of the issue: a `ruststacker all` held to 600 open files, its gateway filled with
/// WebSockets to the `max_connections` it derived from that limit, and two addresses opening
/// idle sockets past their cap on every port. Every service still answers `/health`, and Meta a
/// login, each within a second; the refusals are counted and summarised, not logged one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_every_cap_leaves_every_service_answering() {
    const OPEN_FILES: usize = 600;
    const RESERVED: usize = 200;
    const PER_LISTENER: usize = 24;
    const PER_IP: usize = 6;
    // What the process must derive: the limit less the reserve and four listeners' shares.
    const GATEWAY_MAX: usize = OPEN_FILES - RESERVED - 4 * PER_LISTENER;

    let wrapper = tempfile::tempdir().expect("a temp dir");
    let script = wrapper.path().join("ruststacker-limited");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nulimit -n {OPEN_FILES} || exit 97\nexec '{BIN}' \"$@\"\n"),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = Process::base_config(
        "",
        &format!(
            "http:\n  max_connections: {PER_LISTENER}\n  max_connections_per_ip: {PER_IP}\n  \
             reserved_files: {RESERVED}\n  header_read_timeout_secs: 120\n  idle_timeout_secs: 120\n  \
             refusal_log_interval_secs: 1\n\
             rate_limits:\n  enabled: false\n"
        ),
    );
    let p = Process::start(&script, &config);
    let budget_line = p
        .output()
        .lines()
        .find(|l| l.contains("connection budget"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the budget is logged at start:\n{}", p.output()));
    assert!(
        budget_line.contains(&format!("gateway_max_connections={GATEWAY_MAX}"))
            && budget_line.contains(&format!("open_files={OPEN_FILES}")),
        "the gateway's max_connections is derived from the open-file limit: {budget_line}"
    );
    let api = &p.api;
    let addrs = api.addrs;
    let user = api.register_and_login("budget").await;

    // Fill the gateway: WebSockets of several users, at most 16 each (the default cap per user:
    // one more would close that user's oldest instead of leaving the gateway full)
    // until it answers 503 `gateway_full`. One at a time: this client is held to its cap too.
    let mut users = Vec::new();
    for _ in 0..GATEWAY_MAX.div_ceil(16) + 1 {
        users.push(api.register_and_login("flood").await);
    }
    let mut sockets = Vec::new();
    let full = loop {
        let who = &users[sockets.len() % users.len()];
        let url = format!("ws://{}/api/ws?token={}", addrs.gateway, who.token);
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => sockets.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => break resp.status().as_u16(),
            Err(e) => panic!("after {} sockets: {e}", sockets.len()),
        }
        assert!(
            sockets.len() <= GATEWAY_MAX,
            "the gateway took more than its max"
        );
    };
    assert_eq!(full, 503);
    assert_eq!(
        sockets.len(),
        GATEWAY_MAX,
        "the gateway held its derived max"
    );

    // Two more clients, each opening three times its cap of idle sockets on every port.
    let floods = Service::ALL
        .into_iter()
        .flat_map(|service| [loopback(2), loopback(3)].map(|from| (service, from)))
        .map(|(service, from)| async move {
            let opened =
                join_all((0..3 * PER_IP).map(|_| connect_from(from, addrs.of(service)))).await;
            // A refused socket is answered and closed at once; a held one stays open.
            let checked = join_all(opened.into_iter().map(|mut s| async move {
                let closed = read_until_closed(&mut s, Duration::from_secs(2)).await;
                (s, closed)
            }))
            .await;
            (service, from, checked)
        });
    let mut held = Vec::new();
    for (service, from, checked) in join_all(floods).await {
        let mut refused = 0;
        for (s, closed) in checked {
            match closed {
                Some(reply) => {
                    refused += 1;
                    let text = String::from_utf8_lossy(&reply);
                    assert!(
                        text.starts_with("HTTP/1.1 503") && text.contains("too_many_connections"),
                        "{service:?} from {from}: {text:?}"
                    );
                }
                None => held.push(s),
            }
        }
        assert_eq!(
            refused,
            2 * PER_IP,
            "{service:?} from {from}: all past the cap refused"
        );
    }

    // Everyone else is still served, at once.
    let second = Duration::from_secs(1);
    for service in Service::ALL {
        let health = tokio::time::timeout(second, api.get(service, "/health", None))
            .await
            .unwrap_or_else(|_| panic!("{service:?} /health took over a second"));
        health.assert_success();
    }
    let login = tokio::time::timeout(second, api.login(&user.username, &user.password))
        .await
        .expect("a login within a second");
    login.assert_success();

    let m = metrics_text(api, Service::Meta).await;
    for service in ["meta", "send", "gateway", "registry"] {
        assert_eq!(
            counter(
                &m,
                "ruststacker_http_connections_refused_total",
                &[("service", service), ("reason", "per_ip")]
            ),
            (4 * PER_IP) as f64,
            "{service}:\n{m}"
        );
    }
    // Refusals are summarised once per interval per listener, never one line per socket.
    p.wait_for_logs(Duration::from_secs(10), "a refusal summary", |logs| {
        logs.contains("connections refused in the last")
    })
    .await;
    let summaries = p
        .output()
        .matches("connections refused in the last")
        .count();
    assert!(
        summaries < 4 * 4 * PER_IP,
        "{summaries} summary lines for {} refusals",
        4 * 4 * PER_IP
    );
    drop((held, sockets));
    p.stop();
}
