//! `ruststacker-bench`: measurements against a running RustStacker, through its public API only.
//!
//! `idle`: registers a user, opens `--connections` WebSockets to the gateway and holds them idle,
//! then reads the server's resident memory from `/proc/<pid>/status` before and after, and prints
//! the memory per idle connection. Run it against `ruststacker all` (pass its pid);
//! `--compare-bare` measures a bare server's first, the same way, and gives the ratio.
//!
//! `send`: one user sends to a room of their own from `--concurrency` request loops for
//! `--seconds`; prints stored messages per second and the latency of a durable 200.
//!
//! `fanout`: `--users` members of one group (or of `--rooms N` rooms, one-to-one rooms and groups),
//! one WebSocket each, `--messages` (or `--seconds` of) messages sent by members round-robin over
//! the rooms; verifies every member got every message of its room once and in order and nothing
//! of other rooms, and reports deliveries per second, delivery latency and (optionally) Redis
//! calls, server CPU per delivery and server RSS. `--bare URL` drives a bare broadcast server
//! instead, `--compare-bare` measures one and then the server and reports the server's figures as
//! ratios of its (`--rounds R`: alternated R times, with medians), and `--procs N` spreads the
//! sockets over N client processes.
//!
//! `bare-server`: a WebSocket broadcast server with rooms and no auth or storage, the practical
//! limit of the push path on this machine.

mod bare;
mod compare;
mod fanout;
mod layout;
mod resp;
mod shard;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "ruststacker-bench",
    about = "Load and measurement tools for RustStacker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Memory per idle WebSocket connection.
    Idle {
        /// Meta's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        meta: String,
        /// Gateway's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8082/api/ws")]
        gateway: String,
        /// Pid of the server process whose memory is measured.
        #[arg(long)]
        pid: u32,
        /// Connections to open (keep below the open-files limit of this process).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Measure a bare server (a child process) first, then the server, and give the ratio.
        #[arg(long)]
        compare_bare: bool,
    },
    /// Durable sends per second (group commit) and their latency.
    Send {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        meta: String,
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        send: String,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Group fan-out: deliveries per second, latency, and a check that nothing was lost.
    Fanout(Box<fanout::FanoutArgs>),
    /// A bare WebSocket broadcast server (no auth, no storage) to measure the server against.
    BareServer(bare::BareArgs),
    /// One client process of `fanout --procs N` (driven over stdin/stdout; not for direct use).
    #[command(hide = true)]
    FanoutShard,
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

async fn token(meta: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let name = format!("bench_{}", std::process::id());
    let creds = json!({"username": name, "password": "bench-password-1"});
    // Registering twice (a rerun with the same pid) is fine: login decides.
    let _ = http
        .post(format!("{meta}/api/user/register"))
        .json(&creds)
        .send()
        .await?;
    let reply: Value = http
        .post(format!("{meta}/api/user/login"))
        .json(&creds)
        .send()
        .await?
        .json()
        .await?;
    reply["data"]["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("login failed: {reply}"))
}

async fn send_load(meta: &str, send: &str, concurrency: usize, seconds: u64) -> anyhow::Result<()> {
    let token = token(meta).await?;
    let http = reqwest::Client::new();
    let room: Value = http
        .post(format!("{meta}/api/group/create"))
        .bearer_auth(&token)
        .json(&json!({"name": "bench", "member_ids": []}))
        .send()
        .await?
        .json()
        .await?;
    let room_id = room["data"]["room_id"]
        .as_i64()
        .with_context(|| format!("group create failed: {room}"))?;
    let url = format!("{send}/api/chat/send_message");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"room_id": room_id, "content": "benchmark message"}))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "seconds": seconds,
            "stored": lat.len(),
            "errors": errors,
            "sends_per_sec": (lat.len() as f64 / seconds as f64).round(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}

/// Memory per idle connection of the server at `pid` (a bare server too, with `compare_bare`).
async fn idle(
    meta: &str,
    gateway: &str,
    pid: u32,
    n: usize,
    compare_bare: bool,
) -> anyhow::Result<()> {
    let token = token(meta).await?;
    let server_url = format!("{gateway}?token={token}");
    let out = if compare_bare {
        let bare = fanout::BareChild::start(0).await?;
        let ws = bare.url.replacen("http://", "ws://", 1);
        eprintln!("bare server at {} (pid {})", bare.url, bare.pid);
        let b = idle_on(&format!("{ws}/api/ws"), bare.pid, n).await;
        bare.stop().await;
        let b = b?;
        eprintln!("server");
        let s = idle_on(&server_url, pid, n).await?;
        let key = "bytes_per_idle_connection";
        let ratio = match (s[key].as_f64(), b[key].as_f64()) {
            (Some(s), Some(b)) if b > 0.0 => Some((s / b * 1000.0).round() / 1000.0),
            _ => None,
        };
        json!({"bare": b, "server": s, "server_to_bare": {key: ratio}})
    } else {
        idle_on(&server_url, pid, n).await?
    };
    println!("{out}");
    Ok(())
}

/// `pid`'s RSS once it has settled (under 64 KiB of change over a second, at most 10 s): an
/// allocator may still be returning what earlier work (a registration's password hash) freed.
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut last = rss_kib(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) < 64 || Instant::now() >= give_up {
            return Ok(now);
        }
        last = now;
    }
}

/// Opens `n` sockets to `url`, each waiting for its welcome frame, and measures `pid`'s RSS
/// growth per socket.
async fn idle_on(url: &str, pid: u32, n: usize) -> anyhow::Result<Value> {
    // Warm up: the first connection allocates per-process structures that are not per connection.
    let (mut warm, _) = tokio_tungstenite::connect_async(url).await?;
    warm.next().await;
    let before = settled_rss_kib(pid).await?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connection {i}"))?;
        // Wait for the welcome frame, so the server finished setting the connection up.
        match ws.next().await {
            Some(Ok(_)) => conns.push(ws),
            other => bail!("connection {i} got {other:?} instead of the welcome frame"),
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("{} connections", i + 1);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    // Signed: an allocator returning earlier garbage during the run shows as a negative growth
    // (rerun with more connections) rather than as a misleading 0.
    let per = (after as f64 - before as f64) * 1024.0 / n as f64;
    drop(conns);
    drop(warm);
    Ok(json!({
        "connections": n,
        "connect_secs": connect_secs,
        "server_rss_before_kib": before,
        "server_rss_after_kib": after,
        "bytes_per_idle_connection": per.round(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Idle {
            meta,
            gateway,
            pid,
            connections,
            compare_bare,
        } => idle(&meta, &gateway, pid, connections, compare_bare).await,
        Cmd::Send {
            meta,
            send,
            concurrency,
            seconds,
        } => send_load(&meta, &send, concurrency, seconds).await,
        Cmd::Fanout(args) => fanout::run(*args).await,
        Cmd::BareServer(args) => bare::run(args).await,
        Cmd::FanoutShard => {
            // Exit here: the runtime would otherwise wait on its blocking stdin reader.
            let code = match shard::child_main().await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fanout-shard: {e:#}");
                    1
                }
            };
            std::process::exit(code)
        }
    }
}
