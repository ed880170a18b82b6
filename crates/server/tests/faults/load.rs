//! Steady traffic through the public API and a checker, as the trusted messaging systems test
//! delivery (reference/reliability-practice.md): senders post at a fixed rate to both Send
//! instances and, when a request fails or times out, retry it with the same `client_msg_id` (on
//! the other instance); receivers hold WebSockets in `ack=true` mode placed by the registry, ACK
//! cumulatively, and reconnect through the registry whenever their socket ends. The checker counts,
//! per receiver, acknowledged messages never received (lost), receipts of an id already received
//! (duplicates, which a client dedupes), and new ids arriving below the highest `seq` already seen
//! (reordered).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub token: String,
}

/// Where the public API is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub meta: String,
    pub registry: String,
    pub sends: Vec<String>,
}

/// Calls the API and unwraps the envelope's `data`, or says what came back.
pub async fn call(req: reqwest::RequestBuilder) -> Result<Value, String> {
    let r = req
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| format!("{status}: {e}"))?;
    if status.is_success() {
        Ok(body["data"].clone())
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Registers and logs in `n` users named `<prefix>-<i>`.
pub async fn users(http: &reqwest::Client, meta: &str, prefix: &str, n: usize) -> Vec<User> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let body = json!({"username": name, "password": "password123"});
        call(http.post(format!("{meta}/api/user/register")).json(&body))
            .await
            .unwrap_or_else(|e| panic!("register {name}: {e}"));
        let login = call(http.post(format!("{meta}/api/user/login")).json(&body))
            .await
            .unwrap_or_else(|e| panic!("login {name}: {e}"));
        out.push(User {
            id: login["user_id"].as_i64().expect("user_id"),
            token: login["token"].as_str().expect("token").to_owned(),
        });
    }
    out
}

/// What one receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every message id received (deduped).
    pub ids: HashSet<i64>,
    /// Every chat frame of the room, repeats included.
    pub frames: u64,
    /// New ids that arrived below the highest `seq` already seen.
    pub reordered: u64,
    pub max_seq: i64,
    /// Successful WebSocket handshakes.
    pub connects: u64,
    /// Placements asked for and handshakes tried, successful or not.
    pub attempts: u64,
    /// When the current socket was opened.
    pub connected_at: Option<Instant>,
    pub connected: bool,
    /// The gateway port of the current (or last) socket.
    pub gateway_port: u64,
}

/// One acknowledged send.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub client_msg_id: String,
    pub message_id: i64,
    pub seq: i64,
    /// When the first attempt started and when the 200 came back.
    pub started: Instant,
    pub answered: Instant,
    pub attempts: u32,
}

/// What the senders did.
#[derive(Debug, Default)]
pub struct Sent {
    pub accepted: Vec<Accepted>,
    /// Ids given up on (never answered 200 within the retry budget).
    pub abandoned: Vec<String>,
    /// Attempts that failed and were retried, by the first words of the failure.
    pub failures: HashMap<String, u64>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Traffic in one room: `receivers` hold sockets, `senders` post.
pub struct Traffic {
    pub room: i64,
    pub seen: Vec<(User, Arc<Mutex<Seen>>)>,
    pub sent: Arc<Mutex<Sent>>,
    stop_senders: Arc<AtomicBool>,
    stop_receivers: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
    /// Messages handed to a sender task so far.
    pub issued: Arc<AtomicU64>,
    started: Instant,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Asks the registry where `user` should connect, leaving out `avoid` (the gateway this client
/// lost last, as the real clients do), and opens the socket there. A failed handshake sets
/// `avoid` to the gateway that failed.
async fn connect(
    http: &reqwest::Client,
    ep: &Endpoints,
    user: &User,
    avoid: &mut Option<String>,
) -> Result<(Ws, u64, String), String> {
    let exclude = avoid
        .as_deref()
        .map(|g| format!("&exclude={g}"))
        .unwrap_or_default();
    let gw = call(http.get(format!(
        "{}/registry/gateway/available?user_id={}{exclude}",
        ep.registry, user.id
    )))
    .await
    .inspect_err(|_| *avoid = None)?;
    let port = gw["port"].as_u64().unwrap_or(0);
    let id = gw["gateway_id"].as_str().unwrap_or_default().to_owned();
    let url = format!(
        "ws://{}:{port}/api/ws?token={}&ack=true",
        gw["address"].as_str().unwrap_or("127.0.0.1"),
        user.token
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())
    .and_then(|r| r.map_err(|e| format!("handshake: {e}")))
    .inspect_err(|_| *avoid = Some(id.clone()))?;
    Ok((ws, port, id))
}

/// Holds `user`'s socket until told to stop, reconnecting through the registry whenever it ends.
async fn receive(
    http: reqwest::Client,
    ep: Endpoints,
    user: User,
    room: i64,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut avoid = None;
    while !stop.load(Ordering::Relaxed) {
        lock(&seen).attempts += 1;
        let (mut ws, port, id) = match connect(&http, &ep, &user, &mut avoid).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut s = lock(&seen);
            s.connects += 1;
            s.connected = true;
            s.connected_at = Some(Instant::now());
            s.gateway_port = port;
        }
        loop {
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => continue,
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(_)) | None) => {
                    // Dropped without a close frame: the gateway may be dead.
                    avoid = Some(id.clone());
                    break;
                }
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(close) => {
                    // Going away (1001): the gateway is shutting down.
                    if close.is_some_and(|c| u16::from(c.code) == 1001) {
                        avoid = Some(id.clone());
                    }
                    break;
                }
                _ => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["type"] != "chat" || v["room_id"].as_i64() != Some(room) {
                continue;
            }
            let (Some(id), Some(seq)) = (v["id"].as_i64(), v["seq"].as_i64()) else {
                continue;
            };
            let ack_to = {
                let mut s = lock(&seen);
                s.frames += 1;
                if s.ids.insert(id) {
                    if seq < s.max_seq {
                        s.reordered += 1;
                    }
                    s.max_seq = s.max_seq.max(seq);
                }
                s.max_seq
            };
            let ack = json!({"type": "ack", "room_id": room, "seq": ack_to}).to_string();
            if ws.send(Message::Text(ack.into())).await.is_err() {
                break;
            }
        }
        lock(&seen).connected = false;
        let _ = ws.close(None).await;
    }
}

/// Posts one message every `period`, retrying each (same `client_msg_id`, next Send instance)
/// until it is answered 200 or `give_up` passes.
async fn send_loop(
    ctx: (reqwest::Client, Endpoints),
    user: User,
    room: i64,
    period: Duration,
    sent: Arc<Mutex<Sent>>,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
) {
    let (http, ep) = ctx;
    let give_up = Duration::from_secs(30);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        issued.fetch_add(1, Ordering::Relaxed);
        let cmid = format!("u{}-{n}", user.id);
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let base = &ep.sends[(n as usize + attempts as usize) % ep.sends.len()];
            attempts += 1;
            let body =
                json!({"room_id": room, "content": format!("m {cmid}"), "client_msg_id": cmid});
            let r = call(
                http.post(format!("{base}/api/chat/send_message"))
                    .bearer_auth(&user.token)
                    .json(&body),
            )
            .await;
            match r {
                Ok(d) => {
                    lock(&sent).accepted.push(Accepted {
                        client_msg_id: cmid.clone(),
                        message_id: d["message_id"].as_i64().expect("message_id"),
                        seq: d["seq"].as_i64().expect("seq"),
                        started,
                        answered: Instant::now(),
                        attempts,
                    });
                    break;
                }
                Err(e) => {
                    let kind: String = e.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                    *lock(&sent).failures.entry(kind).or_default() += 1;
                    if started.elapsed() > give_up {
                        lock(&sent).abandoned.push(cmid.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The checker's counts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub accepted: usize,
    pub abandoned: usize,
    pub retried_attempts: u64,
    pub receivers: usize,
    /// (receiver, acknowledged message) pairs never received.
    pub lost: u64,
    /// The first few lost pairs, as (receiver's user id, message seq).
    pub lost_examples: Vec<(i64, i64)>,
    /// Repeated receipts of an id (a client drops them by id).
    pub duplicates: u64,
    pub reordered: u64,
    /// Received ids that no sender was answered (a message stored twice would show here).
    pub unexpected: u64,
    /// `client_msg_id`s answered with more than one message id.
    pub split_ids: usize,
    pub reconnects: u64,
    pub failures: HashMap<String, u64>,
    pub secs: f64,
}

impl Traffic {
    /// Starts `receivers` on sockets and `senders` posting `rate` messages per second in total.
    pub async fn start(
        http: &reqwest::Client,
        ep: &Endpoints,
        room: i64,
        receivers: &[User],
        senders: &[User],
        rate: f64,
    ) -> Self {
        let stop_receivers = Arc::new(AtomicBool::new(false));
        let stop_senders = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Sent::default()));
        let issued = Arc::new(AtomicU64::new(0));
        let mut seen = Vec::new();
        let mut rtasks = Vec::new();
        for u in receivers {
            let s = Arc::new(Mutex::new(Seen::default()));
            seen.push((u.clone(), s.clone()));
            rtasks.push(tokio::spawn(receive(
                http.clone(),
                ep.clone(),
                u.clone(),
                room,
                s,
                stop_receivers.clone(),
            )));
        }
        let t = Self {
            room,
            seen,
            sent,
            stop_senders,
            stop_receivers,
            senders: Vec::new(),
            receivers: rtasks,
            issued,
            started: Instant::now(),
        };
        t.wait_until("every receiver connected", Duration::from_secs(30), |t| {
            t.seen.iter().all(|(_, s)| lock(s).connected)
        })
        .await;
        let period = Duration::from_secs_f64(senders.len() as f64 / rate);
        let mut t = t;
        t.started = Instant::now();
        for u in senders {
            t.senders.push(tokio::spawn(send_loop(
                (http.clone(), ep.clone()),
                u.clone(),
                room,
                period,
                t.sent.clone(),
                t.stop_senders.clone(),
                t.issued.clone(),
            )));
        }
        t
    }

    /// Polls `pred` every 50 ms until it holds; panics after `within`.
    pub async fn wait_until(&self, what: &str, within: Duration, pred: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !pred(self) {
            assert!(
                started.elapsed() < within,
                "waited {within:?} for {what}: {}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs until `n` more messages were acknowledged.
    pub async fn run_for_messages(&self, n: usize, within: Duration) {
        let target = lock(&self.sent).accepted.len() + n;
        self.wait_until(&format!("{n} more acknowledged sends"), within, |t| {
            lock(&t.sent).accepted.len() >= target
        })
        .await;
    }

    /// Waits until every receiver has every message acknowledged so far.
    pub async fn caught_up(&self, within: Duration) {
        let accepted: Vec<i64> = lock(&self.sent)
            .accepted
            .iter()
            .map(|a| a.message_id)
            .collect();
        self.wait_until(
            "every receiver to have every acknowledged message",
            within,
            |t| {
                t.seen.iter().all(|(_, s)| {
                    let s = lock(s);
                    accepted.iter().all(|id| s.ids.contains(id))
                })
            },
        )
        .await;
    }

    /// What receiver `user_id` saw.
    pub fn seen_by(&self, user_id: i64) -> Arc<Mutex<Seen>> {
        self.seen
            .iter()
            .find(|(u, _)| u.id == user_id)
            .map(|(_, s)| s.clone())
            .expect("a receiver")
    }

    /// The acknowledged sends so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.sent).accepted.clone()
    }

    /// The acknowledged sends per second since traffic started.
    pub fn accepted_rate(&self) -> f64 {
        lock(&self.sent).accepted.len() as f64 / self.started.elapsed().as_secs_f64()
    }

    fn summary(&self) -> String {
        let sent = lock(&self.sent);
        let seen: Vec<String> = self
            .seen
            .iter()
            .map(|(u, s)| {
                let s = lock(s);
                format!("{}:{}/{}c{}", u.id, s.ids.len(), s.frames, s.connects)
            })
            .collect();
        format!(
            "accepted {}, abandoned {}, failures {:?}; receivers (user:ids/frames, connects) {}",
            sent.accepted.len(),
            sent.abandoned.len(),
            sent.failures,
            seen.join(" ")
        )
    }

    /// Stops the senders, waits (up to `settle`) until every receiver has every acknowledged
    /// message, stops the receivers and counts. `expected` says which receiver should get which
    /// acknowledged send (all of them, unless a test says otherwise).
    pub async fn finish(
        mut self,
        settle: Duration,
        expected: impl Fn(&User, &Accepted) -> bool,
    ) -> Verdict {
        self.stop_senders.store(true, Ordering::Relaxed);
        for t in self.senders.drain(..) {
            t.await.expect("a sender task");
        }
        let secs = self.started.elapsed().as_secs_f64();
        let accepted = lock(&self.sent).accepted.clone();
        let missing = |t: &Self| -> u64 {
            t.seen
                .iter()
                .map(|(u, s)| {
                    let s = lock(s);
                    accepted
                        .iter()
                        .filter(|a| expected(u, a) && !s.ids.contains(&a.message_id))
                        .count() as u64
                })
                .sum()
        };
        let started = Instant::now();
        while missing(&self) > 0 && started.elapsed() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop_receivers.store(true, Ordering::Relaxed);
        for t in self.receivers.drain(..) {
            t.await.expect("a receiver task");
        }
        let sent = lock(&self.sent);
        let mut by_cmid: HashMap<&str, HashSet<i64>> = HashMap::new();
        for a in &sent.accepted {
            by_cmid
                .entry(&a.client_msg_id)
                .or_default()
                .insert(a.message_id);
        }
        let known: HashSet<i64> = sent.accepted.iter().map(|a| a.message_id).collect();
        let (mut duplicates, mut reordered, mut reconnects, mut unexpected) = (0, 0, 0, 0);
        for (_, s) in &self.seen {
            let s = lock(s);
            unexpected += s.ids.iter().filter(|id| !known.contains(id)).count() as u64;
            duplicates += s.frames - s.ids.len() as u64;
            reordered += s.reordered;
            reconnects += s.connects.saturating_sub(1);
        }
        let mut lost_examples = Vec::new();
        for (u, s) in &self.seen {
            let s = lock(s);
            for a in accepted
                .iter()
                .filter(|a| expected(u, a) && !s.ids.contains(&a.message_id))
            {
                if lost_examples.len() < 20 {
                    lost_examples.push((u.id, a.seq));
                }
            }
        }
        Verdict {
            lost_examples,
            accepted: sent.accepted.len(),
            abandoned: sent.abandoned.len(),
            retried_attempts: sent
                .accepted
                .iter()
                .map(|a| u64::from(a.attempts - 1))
                .sum(),
            receivers: self.seen.len(),
            lost: missing(&self),
            duplicates,
            reordered,
            unexpected,
            split_ids: by_cmid.values().filter(|ids| ids.len() > 1).count(),
            reconnects,
            failures: sent.failures.clone(),
            secs,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop_senders.store(true, Ordering::Relaxed);
        self.stop_receivers.store(true, Ordering::Relaxed);
        for t in self.senders.iter().chain(&self.receivers) {
            t.abort();
        }
    }
}
