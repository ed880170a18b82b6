//! `fanout`: a load generator and delivery verifier for group fan-out, through the public API only.
//!
//! Registers `--users` users, puts them all in one group, connects one WebSocket per user to the
//! gateway the registry names, has the group's owner send `--messages` messages through the Send
//! URLs, and checks that every receiver got every accepted message once, in `seq` order. Prints
//! one JSON summary on stdout (and to `--json FILE`); exits non-zero when a message was lost or
//! reordered (or a send failed).
//!
//! `--bare URL` drives a bare broadcast server (`ruststacker-bench bare-server`) the same way:
//! same sockets, messages, in-flight requests and verifier, no users or group. `--compare-bare`
//! starts one as a child process, measures it first, then the server, and reports every figure
//! of the server as a ratio of the bare server's.
//!
//! The sockets live in shards ([`crate::shard`]): one in this process, or `--procs N` child
//! processes, each with its own open-files limit, optionally binding to `--source-addrs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use proto::api::{CreateGroupReply, LoginReply, SendMessageReply};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::resp;
use crate::shard::{
    self, ConnectTarget, Events, ShardEvent, ShardJob, SocketSpec, StopCmd, Verdict, wall_us,
};

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
    /// group is 1000 members; a bare server has no cap).
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
    /// WebSocket connects in flight at once (per client process).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Drive a bare broadcast server (`ruststacker-bench bare-server`) at this base URL instead
    /// of RustStacker: the same sockets, messages and verifier, no users, group or registry.
    #[arg(long, conflicts_with = "compare_bare")]
    bare: Option<String>,
    /// Start a bare broadcast server as a child process, measure it (with its pid for the CPU
    /// figures), stop it, then measure RustStacker; print both and the server-to-bare ratios.
    #[arg(long)]
    compare_bare: bool,
    /// Client processes to spread the sockets over (each has its own open-files limit). 1 keeps
    /// them in this process.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Local addresses client sockets bind to, round-robin (e.g. 127.0.0.2,127.0.0.3), when one
    /// address's ephemeral ports are not enough.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
}

/// The JSON envelope of every reply.
#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

/// Sends the request and returns the envelope's `data`, or the whole reply as the error.
pub async fn call<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> anyhow::Result<T> {
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

struct User {
    id: i64,
    token: String,
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

/// Resident memory of all `pids` together, in KiB (0 when a pid cannot be read: it exited).
fn rss_all(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| crate::rss_kib(p).unwrap_or(0)).sum()
}

/// Samples the servers' resident memory every 20 ms until stopped, and answers the highest seen.
fn rss_peak_sampler(pids: Vec<u32>) -> (watch::Sender<bool>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut peak = rss_all(&pids);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => peak = peak.max(rss_all(&pids)),
                _ = stopped.changed() => return peak.max(rss_all(&pids)),
            }
        }
    });
    (stop, task)
}

fn cpu_all(pids: &[String]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|p| cpu_ticks(p)).collect()
}

const USER_HZ: f64 = 100.0;

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

fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("fo{:08x}", mix & 0xffff_ffff)
}

/// What a round drives.
enum Target {
    Server {
        meta: String,
        send_urls: Vec<String>,
        registry: String,
    },
    Bare {
        base: String,
    },
}

/// Where the owner's messages go.
enum SendTo {
    Server { urls: Vec<String>, token: String },
    Bare { url: String },
}

impl SendTo {
    fn request(&self, http: &reqwest::Client, i: usize) -> reqwest::RequestBuilder {
        match self {
            Self::Server { urls, token } => http
                .post(format!("{}/api/chat/send_message", urls[i % urls.len()]))
                .bearer_auth(token),
            Self::Bare { url } => http.post(url),
        }
    }
}

/// What the coordinator knows of one shard, from its events.
#[derive(Default)]
struct ShardState {
    connected: usize,
    ready: bool,
    delivered: u64,
    alive: usize,
    socket_errors: u64,
    failed: Option<String>,
    done: Option<Verdict>,
}

#[derive(Default)]
struct Agg {
    shards: Mutex<Vec<ShardState>>,
    gateways: Mutex<BTreeMap<String, u64>>,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    connected: usize,
    ready: usize,
    done: usize,
    delivered: u64,
    alive: usize,
    socket_errors: u64,
}

impl Agg {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShardState>> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn totals(&self) -> anyhow::Result<Totals> {
        let shards = self.lock();
        let mut t = Totals::default();
        for (i, s) in shards.iter().enumerate() {
            if let Some(e) = &s.failed {
                bail!("client shard {i}: {e}");
            }
            t.connected += s.connected;
            t.ready += usize::from(s.ready);
            t.done += usize::from(s.done.is_some());
            t.delivered += s.delivered;
            t.alive += s.alive;
            t.socket_errors += s.socket_errors;
        }
        Ok(t)
    }

    fn apply(&self, i: usize, e: ShardEvent) {
        if let ShardEvent::Ready { gateways } = &e {
            let mut g = self
                .gateways
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, v) in gateways {
                *g.entry(k.clone()).or_default() += v;
            }
        }
        let mut shards = self.lock();
        let Some(s) = shards.get_mut(i) else { return };
        match e {
            ShardEvent::Connected { count } => s.connected = count,
            ShardEvent::Ready { .. } => s.ready = true,
            ShardEvent::Progress {
                delivered,
                alive,
                socket_errors,
            } => {
                s.delivered = delivered;
                s.alive = alive;
                s.socket_errors = socket_errors;
            }
            ShardEvent::Failed { error } => s.failed = Some(error),
            ShardEvent::Done { verdict } => s.done = Some(verdict),
        }
    }
}

/// A shard in this process or in a child process.
enum ShardHandle {
    Local {
        stop: Option<oneshot::Sender<StopCmd>>,
    },
    Child {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
    },
}

impl ShardHandle {
    async fn start(job: ShardJob, in_process: bool, events: Events) -> anyhow::Result<Self> {
        let i = job.shard;
        if in_process {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                if let Err(e) = shard::run(job, events.clone(), rx).await {
                    let _ = events.send((
                        i,
                        ShardEvent::Failed {
                            error: format!("{e:#}"),
                        },
                    ));
                }
            });
            return Ok(Self::Local { stop: Some(tx) });
        }
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .arg("fanout-shard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a client process")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = serde_json::to_vec(&job)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ended = false;
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<ShardEvent>(&l) {
                    Ok(e) => {
                        ended |= matches!(e, ShardEvent::Done { .. } | ShardEvent::Failed { .. });
                        let _ = events.send((i, e));
                    }
                    Err(_) => eprintln!("client shard {i}: {l}"),
                }
            }
            if !ended {
                let _ = events.send((
                    i,
                    ShardEvent::Failed {
                        error: "the client process exited".into(),
                    },
                ));
            }
        });
        Ok(Self::Child {
            child: Box::new(child),
            stdin: Some(stdin),
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Child { child, .. } => child.id(),
            Self::Local { .. } => None,
        }
    }

    async fn stop(&mut self, started: &[(i64, u64)]) -> anyhow::Result<()> {
        match self {
            Self::Local { stop } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(StopCmd {
                        started: started.to_vec(),
                    });
                }
            }
            Self::Child { stdin, .. } => {
                if let Some(mut s) = stdin.take() {
                    let mut line = serde_json::to_vec(&StopCmd {
                        started: started.to_vec(),
                    })?;
                    line.push(b'\n');
                    s.write_all(&line).await?;
                    s.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(self) {
        if let Self::Child { mut child, .. } = self {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

fn progress(sent: u64, messages: usize, t: Totals, expected: u64, errors: u64) {
    eprint!(
        "\rsent {sent}/{messages}  delivered {}/{expected}  errors {}   ",
        t.delivered,
        errors + t.socket_errors,
    );
}

/// One measured round and whether its delivery check failed.
struct Round {
    summary: Value,
    failure: Option<String>,
}

/// Ephemeral ports per (source address, destination), to warn before a run runs out of them.
fn ephemeral_ports() -> Option<u64> {
    let r = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = r.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()?, it.next()?);
    Some(hi.saturating_sub(lo) + 1)
}

#[allow(clippy::too_many_lines)] // one run, top to bottom, reads best in one place
async fn round(a: &FanoutArgs, target: &Target, pids: &[u32]) -> anyhow::Result<Round> {
    let http = reqwest::Client::new();
    let prefix = run_prefix();
    let rss_start = rss_all(pids);
    let procs = a.procs.max(1);
    let in_process = procs == 1;
    let n_send = match target {
        Target::Server { send_urls, .. } => send_urls.len(),
        Target::Bare { .. } => 1,
    };
    // HTTP connections (sends, setup) and the runtime's own files; the sockets too when the
    // shard is in this process (a child process checks its own).
    let needed = a.in_flight * n_send
        + a.register_concurrency.max(a.connect_concurrency)
        + 64
        + if in_process { a.users } else { 3 * procs };
    shard::check_open_files(needed as u64, &format!("{} sockets and the sends", a.users))?;
    if let Some(ports) = ephemeral_ports() {
        let per_source = a.users.div_ceil(a.source_addrs.len().max(1)) as u64;
        if per_source > ports {
            eprintln!(
                "warning: {per_source} sockets per source address, but only {ports} ephemeral \
                 ports (ip_local_port_range): add --source-addrs"
            );
        }
    }

    // 1. Who connects where, and where the messages go.
    let (room_id, specs, connect_target, send_to) = match target {
        Target::Server {
            meta,
            send_urls,
            registry,
        } => {
            // Users (argon2 on the server: keep the concurrency small) and the group.
            let t_setup = Instant::now();
            let mut users = Vec::with_capacity(a.users);
            let mut regs = futures_util::stream::iter(0..a.users)
                .map(|i| register_and_login(&http, meta, format!("{prefix}_{i}")))
                .buffered(a.register_concurrency.max(1));
            while let Some(u) = regs.next().await {
                users.push(u?);
                if users.len() % 25 == 0 || users.len() == a.users {
                    eprint!("\rregistered {}/{}", users.len(), a.users);
                }
            }
            drop(regs);
            eprintln!(" ({:.1} s)", t_setup.elapsed().as_secs_f64());
            let owner = &users[0];
            let members: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
            let group: CreateGroupReply = call(
                http.post(format!("{meta}/api/group/create"))
                    .bearer_auth(&owner.token)
                    .json(&json!({"name": format!("fanout {prefix}"), "member_ids": members})),
            )
            .await
            .context(
                "creating the group (the server caps a group at meta.max_group_members members, \
                 the owner included, 1000 by default, so --users may be at most that)",
            )?;
            let specs: Vec<SocketSpec> = users
                .iter()
                .enumerate()
                .map(|(index, u)| SocketSpec {
                    index,
                    user_id: u.id,
                    token: Some(u.token.clone()),
                })
                .collect();
            let send_to = SendTo::Server {
                urls: send_urls.clone(),
                token: owner.token.clone(),
            };
            (
                group.room_id,
                specs,
                ConnectTarget::Registry {
                    registry: registry.clone(),
                },
                send_to,
            )
        }
        Target::Bare { base } => {
            let ws_base = if let Some(rest) = base.strip_prefix("https://") {
                format!("wss://{rest}")
            } else if let Some(rest) = base.strip_prefix("http://") {
                format!("ws://{rest}")
            } else {
                base.clone()
            };
            let specs = (0..a.users)
                .map(|index| SocketSpec {
                    index,
                    user_id: index as i64,
                    token: None,
                })
                .collect();
            (
                1,
                specs,
                ConnectTarget::Url {
                    ws_url: format!("{ws_base}/api/ws"),
                },
                SendTo::Bare {
                    url: format!("{base}/api/broadcast"),
                },
            )
        }
    };

    // 2. The sockets, in shards.
    let t_connect = Instant::now();
    let agg = Arc::new(Agg::default());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let pump = {
        let agg = agg.clone();
        tokio::spawn(async move {
            while let Some((i, e)) = ev_rx.recv().await {
                agg.apply(i, e);
            }
        })
    };
    let per_shard = a.users.div_ceil(procs).max(1);
    let mut shards = Vec::with_capacity(procs);
    for (i, chunk) in specs.chunks(per_shard).enumerate() {
        agg.lock().push(ShardState {
            alive: chunk.len(),
            ..ShardState::default()
        });
        let job = ShardJob {
            shard: i,
            room_id,
            messages: a.messages,
            ack: a.ack,
            connect_concurrency: a.connect_concurrency,
            source_addrs: a.source_addrs.clone(),
            target: connect_target.clone(),
            sockets: chunk.to_vec(),
        };
        shards.push(ShardHandle::start(job, in_process, ev_tx.clone()).await?);
    }
    drop(ev_tx);
    drop(specs);
    let mut last_print = Instant::now();
    loop {
        let t = agg.totals()?;
        if t.ready == shards.len() {
            break;
        }
        if last_print.elapsed() >= Duration::from_millis(250) {
            last_print = Instant::now();
            eprint!("\rconnected {}/{}", t.connected, a.users);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gateways = agg
        .gateways
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    eprintln!(
        "\rconnected {}/{} ({:.1} s, {} client process{}) {}",
        a.users,
        a.users,
        t_connect.elapsed().as_secs_f64(),
        if in_process { 1 } else { shards.len() },
        if in_process || shards.len() == 1 {
            ""
        } else {
            "es"
        },
        json!(gateways)
    );

    // Measurements start here: setup costs (argon2, connects) are not in them.
    let redis_url = match target {
        Target::Server { .. } => a.redis_url.as_deref(),
        Target::Bare { .. } => None,
    };
    let redis_before = match redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (before)")?),
        None => None,
    };
    let pid_names: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut bench_pids = vec!["self".to_owned()];
    bench_pids.extend(
        shards
            .iter()
            .filter_map(ShardHandle::pid)
            .map(|p| p.to_string()),
    );
    let cpu_before = cpu_all(&pid_names)?;
    let bench_before = cpu_all(&bench_pids)?;
    let rss_ready = rss_all(pids);
    let (rss_stop, rss_peak) = rss_peak_sampler(pids.to_vec());

    // 3. The owner sends, at most `in_flight` at once.
    let expected_total = (a.users * a.messages) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let send_errors = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let ticker = {
        let (agg, sent, send_errors) = (agg.clone(), sent.clone(), send_errors.clone());
        let messages = a.messages;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => if let Ok(t) = agg.totals() {
                        progress(sent.load(Relaxed), messages, t, expected_total, send_errors.load(Relaxed));
                    },
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let permits = Arc::new(Semaphore::new(a.in_flight));
    let t0 = Instant::now();
    let mut sends = Vec::with_capacity(a.messages);
    for i in 0..a.messages {
        if let Some(rate) = a.rate {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let req = send_to.request(&http, i).json(&json!({
            "room_id": room_id,
            "content": format!("fanout {prefix} #{i}"),
            "client_msg_id": format!("{prefix}-{i}"),
        }));
        let (sent, send_errors) = (sent.clone(), send_errors.clone());
        sends.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = call::<SendMessageReply>(req).await;
            drop(permit);
            match r {
                Ok(reply) => {
                    sent.fetch_add(1, Relaxed);
                    Ok((reply.message_id, start))
                }
                Err(e) => {
                    send_errors.fetch_add(1, Relaxed);
                    Err(e)
                }
            }
        }));
    }
    let mut started: Vec<(i64, u64)> = Vec::with_capacity(a.messages);
    let mut first_start = u64::MAX;
    let mut send_error_samples = Vec::new();
    for s in sends {
        match s.await? {
            Ok((id, start)) => {
                let us = wall_us(start);
                first_start = first_start.min(us);
                started.push((id, us));
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

    // 4. Wait for every receiver to have every accepted message, or the timeout.
    let want = (a.users * sends_ok) as u64;
    let deadline = sends_done + Duration::from_secs(a.timeout);
    let timed_out = loop {
        let t = agg.totals()?;
        if t.delivered >= want || t.alive == 0 {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu_after = cpu_all(&pid_names)?;
    let bench_after = cpu_all(&bench_pids)?;
    let _ = rss_stop.send(true);
    let rss_peak = rss_peak.await.unwrap_or(0);
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    if let Ok(t) = agg.totals() {
        progress(
            sent.load(Relaxed),
            a.messages,
            t,
            expected_total,
            send_errors.load(Relaxed),
        );
    }
    eprintln!();
    let redis_after = match redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (after)")?),
        None => None,
    };

    // 5. Every shard checks its receivers against the accepted messages; merge the verdicts.
    for s in &mut shards {
        s.stop(&started).await?;
    }
    let verdict_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if agg.totals()?.done == shards.len() {
            break;
        }
        if Instant::now() >= verdict_deadline {
            bail!("the client shards did not report within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in shards {
        s.finish().await;
    }
    pump.abort();
    // What the servers keep once the burst is over (the sockets are still open): memory that
    // does not come back is a leak or an allocator holding freed pages.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_all(pids);
    let mut v = Verdict::default();
    for s in agg.lock().iter_mut() {
        if let Some(d) = s.done.take() {
            v.merge(d);
        }
    }

    let deliveries = v.deliveries;
    let duration_secs = if deliveries > 0 {
        v.last_delivery_us.saturating_sub(first_start) as f64 / 1e6
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
    let ticks = |after: &[u64], before: &[u64]| -> u64 {
        after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum()
    };

    let mut summary = json!({
        "target": match target { Target::Server { .. } => "server", Target::Bare { .. } => "bare" },
        "users": a.users,
        "messages": a.messages,
        "room_id": room_id,
        "ack": a.ack,
        "in_flight": a.in_flight,
        "rate": a.rate,
        "client_procs": if in_process { 1 } else { bench_pids.len() - 1 },
        "gateways": gateways,
        "sends_ok": sends_ok,
        "send_errors": a.messages - sends_ok,
        "deliveries": deliveries,
        "expected_deliveries": a.users * a.messages,
        "duration_secs": duration_secs,
        "deliveries_per_sec": if duration_secs > 0.0 { (deliveries as f64 / duration_secs).round() } else { 0.0 },
        "send_secs": sends_done.saturating_duration_since(t0).as_secs_f64(),
        "latency_ms": {
            "p50": v.latency.percentile_ms(0.50),
            "p99": v.latency.percentile_ms(0.99),
            "p999": v.latency.percentile_ms(0.999),
            "max": v.latency.max_ms(),
        },
        "lost": v.lost,
        "incomplete_receivers": v.incomplete_receivers,
        "duplicates": v.duplicates,
        "reordered": v.reordered,
        "gaps": v.gaps,
        "unexpected": v.unexpected,
        "timed_out": timed_out,
        "bench_cpu_us_per_delivery": per_delivery(
            ticks(&bench_after, &bench_before) as f64 / USER_HZ * 1e6
        ),
    });
    match &send_to {
        SendTo::Server { urls, .. } => summary["send_urls"] = json!(urls),
        SendTo::Bare { url } => summary["bare_url"] = json!(url),
    }
    if !a.source_addrs.is_empty() {
        summary["source_addrs"] = json!(a.source_addrs);
    }
    if v.bad_frames > 0 {
        summary["bad_frames"] = json!(v.bad_frames);
    }
    if v.other_rooms > 0 {
        summary["other_room_frames"] = json!(v.other_rooms);
    }
    if !v.ended.is_empty() {
        summary["sockets_ended_early"] = json!(v.ended);
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
    if !pids.is_empty() {
        summary["server_rss_kib"] = json!({
            "start": rss_start,
            "ready": rss_ready,
            "peak": rss_peak,
            "after": rss_after,
        });
    }
    if !pid_names.is_empty() {
        let cpu_secs = ticks(&cpu_after, &cpu_before) as f64 / USER_HZ;
        let by_pid: BTreeMap<&str, f64> = pid_names
            .iter()
            .zip(cpu_after.iter().zip(&cpu_before))
            .map(|(p, (a, b))| (p.as_str(), a.saturating_sub(*b) as f64 / USER_HZ))
            .collect();
        summary["server_cpu_secs"] = json!(cpu_secs);
        summary["server_cpu_secs_by_pid"] = json!(by_pid);
        summary["server_cpu_us_per_delivery"] = json!(per_delivery(cpu_secs * 1e6));
    }
    let failure = (v.lost > 0 || v.reordered > 0 || sends_ok < a.messages).then(|| {
        format!(
            "delivery check failed: {} lost, {} reordered, {} send errors",
            v.lost,
            v.reordered,
            a.messages - sends_ok
        )
    });
    Ok(Round { summary, failure })
}

/// A bare server in a child process, for `--compare-bare`.
struct BareChild {
    child: Child,
    pid: u32,
    url: String,
}

impl BareChild {
    async fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .args(["bare-server", "--bind", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the bare server")?;
        let pid = child.id().context("the bare server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .context("the bare server did not start within 10 s")??
        .context("the bare server exited at once")?;
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the bare server: {line}"))?
            .to_owned();
        Ok(Self { child, pid, url })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `server / bare` for the figure at `ptr`, when both have it.
fn ratio(server: &Value, bare: &Value, ptr: &str) -> Option<f64> {
    let s = server.pointer(ptr)?.as_f64()?;
    let b = bare.pointer(ptr)?.as_f64()?;
    (b > 0.0).then(|| (s / b * 1000.0).round() / 1000.0)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    if a.users == 0 || a.messages == 0 || a.in_flight == 0 || a.procs == 0 {
        bail!("--users, --messages, --in-flight and --procs must be at least 1");
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
    let server = Target::Server {
        meta: a.meta.trim_end_matches('/').to_owned(),
        send_urls,
        registry: a.registry.trim_end_matches('/').to_owned(),
    };

    let (out, failures) = if a.compare_bare {
        let bare = BareChild::start().await?;
        eprintln!("bare round: bare server at {} (pid {})", bare.url, bare.pid);
        let b = round(
            &a,
            &Target::Bare {
                base: bare.url.clone(),
            },
            &[bare.pid],
        )
        .await;
        bare.stop().await;
        let b = b?;
        eprintln!("server round");
        let s = round(&a, &server, &a.pids).await?;
        let r = |p: &str| ratio(&s.summary, &b.summary, p);
        let ratios = json!({
            "deliveries_per_sec": r("/deliveries_per_sec"),
            "latency_p50": r("/latency_ms/p50"),
            "latency_p99": r("/latency_ms/p99"),
            "latency_p999": r("/latency_ms/p999"),
            "server_cpu_us_per_delivery": r("/server_cpu_us_per_delivery"),
        });
        eprintln!(
            "server / bare: deliveries/s {} (target >= 0.9x), server CPU per delivery {} \
             (target <= 1.25x), latency p50 {}, p99 {}, p999 {}",
            fmt_ratio(r("/deliveries_per_sec")),
            fmt_ratio(r("/server_cpu_us_per_delivery")),
            fmt_ratio(r("/latency_ms/p50")),
            fmt_ratio(r("/latency_ms/p99")),
            fmt_ratio(r("/latency_ms/p999")),
        );
        let mb = |v: &Value, key: &str| {
            v.pointer(&format!("/server_rss_kib/{key}"))
                .and_then(Value::as_u64)
                .map_or_else(|| "n/a".into(), |k| format!("{:.0}", k as f64 / 1024.0))
        };
        for (name, v) in [("bare", &b.summary), ("server", &s.summary)] {
            eprintln!(
                "{name} RSS MB: start {}, ready {}, peak {}, after {}",
                mb(v, "start"),
                mb(v, "ready"),
                mb(v, "peak"),
                mb(v, "after")
            );
        }
        let failures: Vec<String> = [("bare", b.failure), ("server", s.failure)]
            .into_iter()
            .filter_map(|(k, f)| f.map(|f| format!("{k} round: {f}")))
            .collect();
        let out = json!({
            "bare": b.summary,
            "server": s.summary,
            "server_to_bare": ratios,
            "targets": {"deliveries_per_sec": ">= 0.9", "server_cpu_us_per_delivery": "<= 1.25"},
        });
        (out, failures)
    } else {
        let target = match &a.bare {
            Some(base) => Target::Bare {
                base: base.trim_end_matches('/').to_owned(),
            },
            None => server,
        };
        let r = round(&a, &target, &a.pids).await?;
        (r.summary, r.failure.into_iter().collect())
    };

    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(path) = &a.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: FanoutArgs,
    }

    /// The bare server, served in this process, broadcasts to 3 sockets and the verifier counts
    /// every delivery once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bare_server_broadcasts_to_every_socket_and_the_verifier_counts_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                crate::bare::router(crate::bare::BareArgs::default()),
            )
            .await
        });
        let base = format!("http://{addr}");
        let a = Cli::parse_from([
            "fanout",
            "--bare",
            &base,
            "--users",
            "3",
            "--messages",
            "20",
            "--in-flight",
            "4",
            "--timeout",
            "10",
        ])
        .a;
        let r = round(&a, &Target::Bare { base: base.clone() }, &[])
            .await
            .expect("round");
        let s = &r.summary;
        assert!(r.failure.is_none(), "{s}");
        assert_eq!(s["deliveries"], 60, "{s}");
        assert_eq!(s["lost"], 0, "{s}");
        assert_eq!(s["duplicates"], 0, "{s}");
        assert_eq!(s["reordered"], 0, "{s}");
        assert_eq!(s["gaps"], 0, "{s}");
        assert!(s["latency_ms"]["p999"].as_f64().is_some(), "{s}");
    }
}
