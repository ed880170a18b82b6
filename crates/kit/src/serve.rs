//! The accept loop of every HTTP listener ([`serve`]), in place of `axum::serve`, which sets
//! neither a header-read timeout nor head limits and counts no connection. Around each socket:
//!
//! - a budget checked at accept (`budget`): at most `max_connections` sockets on the listener and
//!   `max_connections_per_ip` HTTP sockets from one source address; over either the socket gets
//!   a 503 `too_many_connections` envelope (one non-blocking write, best effort) and is closed;
//! - the request head checked as it is read (`head`): 431 `headers_too_large` and 414
//!   `url_too_long` in the envelope;
//! - hyper's header-read timeout: a request head must be complete within
//!   `header_read_timeout` of the moment the server starts waiting for it (accept, or the end
//!   of the previous response), however slowly its bytes trickle in;
//! - an idle timeout (`conn::Watch`): a connection with no request in flight and no byte read or
//!   written for `idle_timeout` is closed. hyper's header timer runs while a connection waits
//!   between requests, so it is also an upper bound on idleness; the idle timeout is the
//!   shorter, cheaper close of sockets that send nothing at all;
//! - `ConnectInfo<SocketAddr>` in every request (the rate limits key on the client address);
//! - WebSocket upgrades (`with_upgrades`): an upgraded socket keeps its place in the listener's
//!   count until it closes, and leaves its address's count and the timeouts here.
//!
//! Refusals and closes are counted in metrics (docs/metrics.md) and refusals summarised in the
//! log once per `refusal_log_interval`, never one line per socket.

mod budget;
mod conn;
mod head;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use head::HeadLimits;

use budget::{Budget, IpSlot, Slot};
use conn::{Io, Watch};
use head::{HeadScan, Replies};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Most sockets open at once (WebSockets included).
    pub max_connections: usize,
    /// Most HTTP sockets open at once from one source address (an IPv4 address or an IPv6
    /// /64). A socket upgraded to a WebSocket no longer counts here.
    pub max_connections_per_ip: usize,
    /// A request head must be complete within this, counted from when the server starts
    /// waiting for it.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight and no traffic for this long is closed.
    pub idle_timeout: Duration,
    pub head: HeadLimits,
    /// How often refusals are summarised in the log.
    pub refusal_log_interval: Duration,
}

/// What every connection of a listener shares.
struct Shared {
    router: Router,
    http: http1::Builder,
    limits: ListenerLimits,
    replies: Arc<Replies>,
    service: &'static str,
}

/// A pause after a failed `accept` (out of file descriptors, most often), so the loop does not
/// spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop`, then stops accepting, lets each connection finish
/// its request in flight (an idle one is closed at once) and returns when all have closed.
/// `service` labels the metrics and log lines.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    service: &'static str,
    limits: ListenerLimits,
    stop: CancellationToken,
) {
    let budget = Budget::new(
        service,
        limits.max_connections,
        limits.max_connections_per_ip,
    );
    for reason in CLOSE_REASONS {
        closed_counter(service, reason).increment(0);
    }
    let shared = Arc::new(Shared {
        http: http_builder(&limits),
        router,
        limits,
        replies: Arc::new(Replies::new(limits.head)),
        service,
    });
    let tracker = TaskTracker::new();
    let mut summary = tokio::time::interval(limits.refusal_log_interval);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = summary.tick() => budget.log_refusals(limits.refusal_log_interval.as_secs()),
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => match budget.admit(remote.ip()) {
                    Ok((slot, ip_slot)) => {
                        tracker.spawn(connection(
                            stream,
                            remote,
                            slot,
                            ip_slot,
                            shared.clone(),
                            stop.clone(),
                        ));
                    }
                    Err(_) => {
                        // Best effort: a client that already sent its request may see a reset.
                        let _ = stream.try_write(&shared.replies.too_many_connections);
                    }
                },
                Err(e) => {
                    tracing::debug!(service, error = %e, "accept failed");
                    budget.accept_failed();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    budget.log_refusals(limits.refusal_log_interval.as_secs());
    tracker.close();
    tracker.wait().await;
}

/// hyper's HTTP/1 settings: its header-read timeout, and its head limits a little above ours
/// (ours answer first, in the envelope; hyper's are the backstop).
fn http_builder(limits: &ListenerLimits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.head.max_head_bytes + 1024);
    // hyper keeps up to 100 headers on the stack; more costs an allocation per request.
    if limits.head.max_headers >= 100 {
        http.max_headers(limits.head.max_headers + 1);
    }
    http
}

/// The metric's reasons for a connection the server closed.
const CLOSE_REASONS: [&str; 4] = [
    "idle",
    "header_timeout",
    "headers_too_large",
    "url_too_long",
];

fn closed_counter(service: &'static str, reason: &'static str) -> metrics::Counter {
    metrics::counter!(
        "ruststacker_http_connections_closed_total",
        "service" => service,
        "reason" => reason
    )
}

/// Serves one socket until it closes, upgrades, idles out or the server stops.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    ip_slot: IpSlot,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let watch = Watch::new(ip_slot);
    let io = Io::new(
        stream,
        watch.clone(),
        HeadScan::new(shared.limits.head),
        shared.replies.clone(),
        slot,
    );
    let router = shared.router.clone();
    let in_service = watch.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let in_flight = in_service.begin();
        let watch = in_service.clone();
        let call = router.clone().oneshot(req);
        async move {
            let resp = call.await;
            if resp
                .as_ref()
                .is_ok_and(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
            {
                watch.upgrading();
            }
            drop(in_flight);
            resp
        }
    });
    let conn = shared
        .http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = watch.idle_for(shared.limits.idle_timeout);
    tokio::pin!(idle);
    let mut stopping = false;
    let closed_because = loop {
        tokio::select! {
            res = conn.as_mut() => break match res {
                Ok(()) => None,
                Err(e) if e.is_timeout() => Some("header_timeout"),
                Err(e) => {
                    tracing::trace!(service = shared.service, error = %e, "connection ended with an error");
                    watch.oversized().map(head::Oversized::reason)
                }
            },
            () = &mut idle => break Some("idle"),
            () = stop.cancelled(), if !stopping => {
                if watch.is_idle() {
                    break None;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(reason) = closed_because {
        closed_counter(shared.service, reason).increment(1);
    }
}
