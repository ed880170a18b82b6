//! `ruststacker-bench`: measurements against a running RustStacker, through its public API only.
//!
//! `idle`: registers a user, opens `--connections` WebSockets to the gateway and holds them idle,
//! then reads the server's resident memory from `/proc/<pid>/status` before and after, and prints
//! the memory per idle connection. Run it against `ruststacker all` (pass its pid).
//!
//! `send`: one user sends to a room of their own from `--concurrency` request loops for
//! `--seconds`; prints stored messages per second and the latency of a durable 200.
//!
//! `fanout`: `--users` members of one group, one WebSocket each, `--messages` sent by the owner;
//! verifies every receiver got every message once and in order, and reports deliveries per
//! second, delivery latency and (optionally) Redis calls and server CPU per delivery. `--bare URL`
//! drives a bare broadcast server instead, `--compare-bare` measures one first and reports the
//! server's figures as ratios of its, and `--procs N` spreads the sockets over N client processes.
//!
//! `bare-server`: a WebSocket broadcast server with no auth and no storage, the practical limit of
//! the push path on this machine.

mod bare;
mod fanout;
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

async fn idle(meta: &str, gateway: &str, pid: u32, n: usize) -> anyhow::Result<()> {
    let token = token(meta).await?;
    let url = format!("{gateway}?token={token}");
    // Warm up: the first connection allocates per-process structures that are not per connection.
    let (mut warm, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    warm.next().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
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
    let per = (after.saturating_sub(before) as f64) * 1024.0 / n as f64;
    println!(
        "{}",
        json!({
            "connections": n,
            "connect_secs": connect_secs,
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "bytes_per_idle_connection": per.round(),
        })
    );
    drop(conns);
    drop(warm);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Idle {
            meta,
            gateway,
            pid,
            connections,
        } => idle(&meta, &gateway, pid, connections).await,
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
