//! `fanout`: a load generator and delivery verifier for group fan-out, through the public API only.
//!
//! Registers `--users` users, puts them all in one group, connects one WebSocket per user to the
//! gateway the registry names, has the group's owner send `--messages` messages through the Send
//! URLs, and checks that every receiver got every accepted message once, in `seq` order. Prints
//! one JSON summary on stdout (and to `--json FILE`); exits non-zero when a message was lost or
//! reordered (or a send failed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use proto::api::{CreateGroupReply, GatewayView, LoginReply, SendMessageReply};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::resp;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Meta's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    meta: String,
    /// Send's base URL; repeat or comma-separate for several (sends go round-robin).
    #[arg(
        long = "send",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    send: Vec<String>,
    /// Registry's base URL (asked where each user connects).
    #[arg(long, default_value = "http://127.0.0.1:8084")]
    registry: String,
    /// Receivers: all members of one room, the sender included (the server's default cap on a
    /// group is 1001 members).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Messages the room's owner sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Send requests in flight at once.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Cap on messages per second (default: as fast as `--in-flight` allows).
    #[arg(long)]
    rate: Option<f64>,
    /// Connect with `?ack=true` and acknowledge (cumulatively) what arrives.
    #[arg(long)]
    ack: bool,
    /// Redis to read `INFO commandstats` from, before and after (redis://[:pw@]host[:port]).
    #[arg(long)]
    redis_url: Option<String>,
    /// Server pids whose CPU time (utime + stime) is measured over the run.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Also write the summary JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds to wait for missing deliveries after the last send answered.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Registrations (argon2 on the server: ~20 ms CPU each) in flight at once.
    #[arg(long, default_value_t = 8)]
    register_concurrency: usize,
    /// WebSocket connects in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

/// The JSON envelope of every reply.
#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

/// Sends the request and returns the envelope's `data`, or the whole reply as the error.
async fn call<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status.is_success()
        && let Ok(Envelope { data: Some(d) }) = serde_json::from_slice::<Envelope<T>>(&body)
    {
        return Ok(d);
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        bail!(
            "HTTP 429: the server rate-limits this load (it all comes from one address); start it \
             with RUSTSTACKER_RATE_LIMITS__ENABLED=false: {}",
            String::from_utf8_lossy(&body)
        );
    }
    bail!("HTTP {status}: {}", String::from_utf8_lossy(&body))
}

/// Only the fields of a server frame the verifier looks at; the payload is skipped unparsed.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: i64,
    #[serde(default)]
    room_id: i64,
    #[serde(default)]
    seq: i64,
}

struct User {
    id: i64,
    token: String,
}

/// Counters the progress line and the wait loop read while receivers and senders run.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    send_errors: AtomicU64,
    /// Distinct (receiver, message) pairs so far.
    delivered: AtomicU64,
    /// Receivers whose socket closed or failed before the end.
    socket_errors: AtomicU64,
    alive: AtomicUsize,
}

/// What one receiver saw.
#[derive(Default)]
struct RecvStats {
    /// Each distinct message once: (message id, µs after the run's base instant).
    receipts: Vec<(i64, u64)>,
    duplicates: u64,
    reordered: u64,
    /// A distinct seq more than one past the previous one.
    gaps: u64,
    bad_frames: u64,
    other_rooms: u64,
    /// Why the socket ended before the run did, if it did.
    ended: Option<String>,
}

fn open_files_limit() -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/self/limits")?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let soft = f.next().and_then(|v| v.parse().ok());
    let hard = f.next().and_then(|v| v.parse().ok());
    Ok((soft, hard))
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its ')' start at field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/<pid>/stat")
    };
    // utime is field 14 and stime 15, i.e. 11 and 12 after the state (field 3).
    Ok(num(11)? + num(12)?)
}

const USER_HZ: f64 = 100.0;

fn micros_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_micros() as u64
}

async fn register_and_login(
    http: &reqwest::Client,
    meta: &str,
    username: String,
) -> anyhow::Result<User> {
    let creds = json!({"username": username, "password": "fanout-password-1"});
    let _: Value = call(http.post(format!("{meta}/api/user/register")).json(&creds))
        .await
        .with_context(|| format!("registering {username}"))?;
    let login: LoginReply = call(http.post(format!("{meta}/api/user/login")).json(&creds))
        .await
        .with_context(|| format!("logging {username} in"))?;
    Ok(User {
        id: login.user_id,
        token: login.token,
    })
}

async fn connect(
    http: &reqwest::Client,
    registry: &str,
    user: &User,
    ack: bool,
) -> anyhow::Result<(Ws, String)> {
    let gw: GatewayView = call(http.get(format!(
        "{registry}/registry/gateway/available?user_id={}",
        user.id
    )))
    .await
    .with_context(|| format!("asking the registry for user {}", user.id))?;
    let url = format!(
        "ws://{}:{}/api/ws?token={}{}",
        gw.address,
        gw.port,
        user.token,
        if ack { "&ack=true" } else { "" }
    );
    // Small read chunks: thousands of sockets in one process, small frames.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
            .await
            .with_context(|| {
                format!(
                    "user {} connecting to {} ({}:{})",
                    user.id, gw.gateway_id, gw.address, gw.port
                )
            })?;
    // Wait for the welcome frame: the server has registered the connection.
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .with_context(|| format!("user {}: no welcome frame within 10 s", user.id))?;
    match first {
        Some(Ok(Message::Text(t)))
            if serde_json::from_str::<Frame<'_>>(t.as_str()).is_ok_and(|f| f.kind == "system") => {}
        other => bail!(
            "user {}: expected the welcome frame from {}, got {other:?}",
            user.id,
            gw.gateway_id
        ),
    }
    Ok((ws, gw.gateway_id))
}

/// Reads frames until told to stop (or the socket ends), recording each distinct chat message.
async fn receive(
    mut ws: Ws,
    room_id: i64,
    messages: usize,
    ack: bool,
    base: Instant,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> RecvStats {
    let mut st = RecvStats {
        receipts: Vec::with_capacity(messages),
        ..RecvStats::default()
    };
    let mut seen: HashSet<i64> = HashSet::with_capacity(messages);
    let mut last_seq: Option<i64> = None;
    let mut to_ack: Option<i64> = None;
    'run: loop {
        let mut next = tokio::select! {
            biased;
            _ = stop.changed() => break 'run,
            m = ws.next() => m,
        };
        // Handle everything already readable, then acknowledge once (cumulative ack).
        loop {
            match next {
                None => {
                    st.ended = Some("connection closed".into());
                    break 'run;
                }
                Some(Err(e)) => {
                    st.ended = Some(format!("read error: {e}"));
                    break 'run;
                }
                Some(Ok(Message::Close(c))) => {
                    st.ended = Some(match c {
                        Some(c) => format!("closed by server: {} {}", u16::from(c.code), c.reason),
                        None => "closed by server".into(),
                    });
                    break 'run;
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame<'_>>(t.as_str()) {
                    Ok(f) if f.kind == "chat" => {
                        if f.room_id != room_id {
                            st.other_rooms += 1;
                        } else if !seen.insert(f.id) {
                            st.duplicates += 1;
                        } else {
                            st.receipts.push((f.id, micros_since(base, Instant::now())));
                            live.delivered.fetch_add(1, Relaxed);
                            if let Some(prev) = last_seq {
                                if f.seq <= prev {
                                    st.reordered += 1;
                                } else if f.seq > prev + 1 {
                                    st.gaps += 1;
                                }
                            }
                            last_seq = Some(f.seq);
                            to_ack = Some(to_ack.map_or(f.seq, |s| s.max(f.seq)));
                        }
                    }
                    Ok(_) => {} // system, ack, pong
                    Err(_) => st.bad_frames += 1,
                },
                Some(Ok(_)) => {} // ping/pong/binary
            }
            match ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        if ack && let Some(seq) = to_ack.take() {
            let frame = format!(r#"{{"type":"ack","room_id":{room_id},"seq":{seq}}}"#);
            if let Err(e) = ws.send(Message::text(frame)).await {
                st.ended = Some(format!("write error: {e}"));
                break 'run;
            }
        }
    }
    if st.ended.is_some() {
        live.socket_errors.fetch_add(1, Relaxed);
    }
    live.alive.fetch_sub(1, Relaxed);
    st
}

fn progress(live: &Live, messages: usize, expected: u64) {
    eprint!(
        "\rsent {}/{messages}  delivered {}/{expected}  errors {}   ",
        live.sent.load(Relaxed),
        live.delivered.load(Relaxed),
        live.send_errors.load(Relaxed) + live.socket_errors.load(Relaxed),
    );
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("fo{:08x}", mix & 0xffff_ffff)
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    if a.users == 0 || a.messages == 0 || a.in_flight == 0 {
        bail!("--users, --messages and --in-flight must be at least 1");
    }
    if a.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    let send_urls: Vec<String> = a
        .send
        .iter()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if send_urls.is_empty() {
        bail!("--send needs at least one URL");
    }
    let meta = a.meta.trim_end_matches('/');
    let registry = a.registry.trim_end_matches('/');

    // One socket per user plus HTTP connections (sends, setup) and the runtime's own files.
    let needed = (a.users
        + a.in_flight * send_urls.len()
        + a.register_concurrency.max(a.connect_concurrency)
        + 64) as u64;
    match open_files_limit()? {
        (Some(soft), hard) if soft < needed => bail!(
            "{} sockets need about {needed} open files, but this process may open {soft} \
             (ulimit -n; hard limit {}). Raise it (ulimit -n {needed}) or split the users over \
             several runs.",
            a.users,
            hard.map_or("unlimited".into(), |h| h.to_string()),
        ),
        _ => {}
    }

    let http = reqwest::Client::new();
    let prefix = run_prefix();

    // 1. Users (argon2 on the server: keep the concurrency small) and the group.
    let t_setup = Instant::now();
    let mut users = Vec::with_capacity(a.users);
    {
        let mut regs = futures_util::stream::iter(0..a.users)
            .map(|i| register_and_login(&http, meta, format!("{prefix}_{i}")))
            .buffered(a.register_concurrency.max(1));
        while let Some(u) = regs.next().await {
            users.push(u?);
            if users.len() % 25 == 0 || users.len() == a.users {
                eprint!("\rregistered {}/{}", users.len(), a.users);
            }
        }
        eprintln!(" ({:.1} s)", t_setup.elapsed().as_secs_f64());
    }
    let owner = &users[0];
    let members: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
    let group: CreateGroupReply = call(
        http.post(format!("{meta}/api/group/create"))
            .bearer_auth(&owner.token)
            .json(&json!({"name": format!("fanout {prefix}"), "member_ids": members})),
    )
    .await
    .context(
        "creating the group (the server caps a group at meta.max_group_members members, the \
         owner included, 1000 by default, so --users may be at most that)",
    )?;
    let room_id = group.room_id;

    // 2. One socket per user, where the registry says.
    let t_connect = Instant::now();
    let mut sockets = Vec::with_capacity(a.users);
    let mut gateways: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut conns = futures_util::stream::iter(&users)
            .map(|u| connect(&http, registry, u, a.ack))
            .buffered(a.connect_concurrency.max(1));
        while let Some(c) = conns.next().await {
            let (ws, gw) = c?;
            *gateways.entry(gw).or_default() += 1;
            sockets.push(ws);
            if sockets.len() % 100 == 0 || sockets.len() == a.users {
                eprint!("\rconnected {}/{}", sockets.len(), a.users);
            }
        }
        eprintln!(
            " ({:.1} s) {}",
            t_connect.elapsed().as_secs_f64(),
            json!(gateways)
        );
    }

    let live = Arc::new(Live::default());
    live.alive.store(a.users, Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            tokio::spawn(receive(
                ws,
                room_id,
                a.messages,
                a.ack,
                base,
                live.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    // Measurements start here: setup costs (argon2, connects) are not in them.
    let redis_before = match &a.redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (before)")?),
        None => None,
    };
    let pid_names: Vec<String> = a.pids.iter().map(u32::to_string).collect();
    let cpu_before = pid_names
        .iter()
        .map(|p| cpu_ticks(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let self_before = cpu_ticks("self")?;

    // 3. The owner sends, round-robin over the Send URLs, at most `in_flight` at once.
    let expected_total = (a.users * a.messages) as u64;
    let ticker = {
        let live = live.clone();
        let mut stop = stop_rx.clone();
        let messages = a.messages;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => progress(&live, messages, expected_total),
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let permits = Arc::new(Semaphore::new(a.in_flight));
    let token = Arc::new(owner.token.clone());
    let t0 = Instant::now();
    let mut sends = Vec::with_capacity(a.messages);
    for i in 0..a.messages {
        if let Some(rate) = a.rate {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let req = http
            .post(format!(
                "{}/api/chat/send_message",
                send_urls[i % send_urls.len()]
            ))
            .bearer_auth(token.as_str())
            .json(&json!({
                "room_id": room_id,
                "content": format!("fanout {prefix} #{i}"),
                "client_msg_id": format!("{prefix}-{i}"),
            }));
        let live = live.clone();
        sends.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = call::<SendMessageReply>(req).await;
            drop(permit);
            match r {
                Ok(reply) => {
                    live.sent.fetch_add(1, Relaxed);
                    Ok((reply.message_id, start))
                }
                Err(e) => {
                    live.send_errors.fetch_add(1, Relaxed);
                    Err(e)
                }
            }
        }));
    }
    let mut started: HashMap<i64, u64> = HashMap::with_capacity(a.messages);
    let mut first_start = u64::MAX;
    let mut send_error_samples = Vec::new();
    for s in sends {
        match s.await? {
            Ok((id, start)) => {
                let us = micros_since(base, start);
                first_start = first_start.min(us);
                started.insert(id, us);
            }
            Err(e) => {
                if send_error_samples.len() < 5 {
                    send_error_samples.push(format!("{e:#}"));
                }
            }
        }
    }
    let sends_ok = started.len();
    let sends_done = Instant::now();

    // 5. Wait for every receiver to have every accepted message, or the timeout.
    let want = (a.users * sends_ok) as u64;
    let deadline = sends_done + Duration::from_secs(a.timeout);
    let timed_out = loop {
        if live.delivered.load(Relaxed) >= want || live.alive.load(Relaxed) == 0 {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu_after = pid_names
        .iter()
        .map(|p| cpu_ticks(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let self_after = cpu_ticks("self")?;
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    progress(&live, a.messages, expected_total);
    eprintln!();
    let redis_after = match &a.redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (after)")?),
        None => None,
    };

    // Verify.
    let mut deliveries = 0u64;
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut reordered = 0u64;
    let mut gaps = 0u64;
    let mut unexpected = 0u64;
    let mut bad_frames = 0u64;
    let mut other_rooms = 0u64;
    let mut incomplete_receivers = 0u64;
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_delivery = 0u64;
    let mut latencies: Vec<u64> = Vec::with_capacity(a.users * sends_ok);
    for r in receivers {
        let st = r.await?;
        let mut got = 0usize;
        for &(id, at) in &st.receipts {
            match started.get(&id) {
                Some(&start) => {
                    got += 1;
                    latencies.push(at.saturating_sub(start));
                    last_delivery = last_delivery.max(at);
                }
                None => unexpected += 1,
            }
        }
        deliveries += got as u64;
        let missing = (sends_ok - got) as u64;
        lost += missing;
        incomplete_receivers += u64::from(missing > 0);
        duplicates += st.duplicates;
        reordered += st.reordered;
        gaps += st.gaps;
        bad_frames += st.bad_frames;
        other_rooms += st.other_rooms;
        if let Some(why) = st.ended {
            *ended.entry(why).or_default() += 1;
        }
    }
    latencies.sort_unstable();
    let duration_secs = if deliveries > 0 {
        last_delivery.saturating_sub(first_start) as f64 / 1e6
    } else {
        0.0
    };
    let per_delivery = |x: f64| {
        if deliveries > 0 {
            Some(x / deliveries as f64)
        } else {
            None
        }
    };

    let mut summary = json!({
        "users": a.users,
        "messages": a.messages,
        "room_id": room_id,
        "ack": a.ack,
        "in_flight": a.in_flight,
        "rate": a.rate,
        "send_urls": send_urls,
        "gateways": gateways,
        "sends_ok": sends_ok,
        "send_errors": a.messages - sends_ok,
        "deliveries": deliveries,
        "expected_deliveries": a.users * a.messages,
        "duration_secs": duration_secs,
        "deliveries_per_sec": if duration_secs > 0.0 { (deliveries as f64 / duration_secs).round() } else { 0.0 },
        "send_secs": sends_done.saturating_duration_since(t0).as_secs_f64(),
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
            "max": latencies.last().map_or(0.0, |&l| l as f64 / 1000.0),
        },
        "lost": lost,
        "incomplete_receivers": incomplete_receivers,
        "duplicates": duplicates,
        "reordered": reordered,
        "gaps": gaps,
        "unexpected": unexpected,
        "timed_out": timed_out,
        "bench_cpu_us_per_delivery": per_delivery(
            (self_after.saturating_sub(self_before)) as f64 / USER_HZ * 1e6
        ),
    });
    if bad_frames > 0 {
        summary["bad_frames"] = json!(bad_frames);
    }
    if other_rooms > 0 {
        summary["other_room_frames"] = json!(other_rooms);
    }
    if !ended.is_empty() {
        summary["sockets_ended_early"] = json!(ended);
    }
    if !send_error_samples.is_empty() {
        summary["send_error_samples"] = json!(send_error_samples);
    }
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        // Our own INFO calls are not the server's.
        let delta: BTreeMap<&str, u64> = after
            .iter()
            .filter(|(k, _)| k.as_str() != "info" && k.as_str() != "auth")
            .map(|(k, &v)| {
                (
                    k.as_str(),
                    v.saturating_sub(before.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|&(_, d)| d > 0)
            .collect();
        let calls: u64 = delta.values().sum();
        summary["redis_calls"] = json!(calls);
        summary["redis_calls_by_command"] = json!(delta);
        summary["redis_calls_per_delivery"] = json!(per_delivery(calls as f64));
    }
    if !pid_names.is_empty() {
        let ticks: u64 = cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        let cpu_secs = ticks as f64 / USER_HZ;
        let by_pid: BTreeMap<&str, f64> = pid_names
            .iter()
            .zip(cpu_after.iter().zip(&cpu_before))
            .map(|(p, (a, b))| (p.as_str(), a.saturating_sub(*b) as f64 / USER_HZ))
            .collect();
        summary["server_cpu_secs"] = json!(cpu_secs);
        summary["server_cpu_secs_by_pid"] = json!(by_pid);
        summary["server_cpu_us_per_delivery"] = json!(per_delivery(cpu_secs * 1e6));
    }

    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &a.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if lost > 0 || reordered > 0 || sends_ok < a.messages {
        bail!(
            "delivery check failed: {lost} lost, {reordered} reordered, {} send errors",
            a.messages - sends_ok
        );
    }
    Ok(())
}
