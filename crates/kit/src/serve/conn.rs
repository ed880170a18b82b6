//! One accepted socket: [`Io`] wraps it for hyper (it holds the socket's place in the listener's
//! budget for as long as the socket lives, WebSocket included, checks each request head as it is
//! read, and notes activity), and [`Watch`] is what the connection's task and its service share:
//! requests in flight, the last activity, whether it became a WebSocket.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::budget::{IpSlot, Slot};
use super::head::{HeadScan, Oversized, Replies};

/// What a connection's task, its service and its socket share.
#[derive(Debug)]
pub(crate) struct Watch {
    born: Instant,
    /// Milliseconds after `born` of the last byte read or written, or request begun or ended.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests ended so far: the head check starts afresh after each.
    ended: AtomicU64,
    upgraded: AtomicBool,
    /// Set when the head check refused a head, for the close reason.
    oversized: Mutex<Option<Oversized>>,
    /// The place in the source address's count, given back when the connection becomes a
    /// WebSocket or closes.
    ip_slot: Mutex<Option<IpSlot>>,
}

impl Watch {
    pub(crate) fn new(ip_slot: IpSlot) -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            oversized: Mutex::new(None),
            ip_slot: Mutex::new(Some(ip_slot)),
        })
    }

    /// Notes activity now. Not for a WebSocket: nothing here times it, and its writes are the
    /// push path's.
    fn touch(&self) {
        if self.upgraded.load(Ordering::Relaxed) {
            return;
        }
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// A request's head was read and its handler called; the guard ends it.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    /// No request in flight and not a WebSocket: closing it loses nothing.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.upgraded.load(Ordering::Acquire)
    }

    /// The connection answered 101 and is about to be a WebSocket: the head check and the idle
    /// timeout no longer apply (the gateway has its own), and it leaves its address's count.
    pub(crate) fn upgrading(&self) {
        self.upgraded.store(true, Ordering::Release);
        drop(
            self.ip_slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    pub(crate) fn oversized(&self) -> Option<Oversized> {
        *self.oversized.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once the connection has been idle (no request in flight, no byte read or
    /// written) for `timeout`; never for a WebSocket.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.last() + timeout).await;
            if self.upgraded.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            if self.is_idle() && self.last() + timeout <= Instant::now() {
                return;
            }
            if !self.is_idle() {
                // A request in flight: look again a whole timeout later.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

/// A request in flight, ended on drop (a handler's future may be dropped, not only finish).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// The socket as hyper sees it.
#[derive(Debug)]
pub(crate) struct Io {
    stream: TcpStream,
    watch: Arc<Watch>,
    scan: HeadScan,
    /// `Watch::ended` when the scan last started afresh.
    scan_of: u64,
    replies: Arc<Replies>,
    _slot: Slot,
}

impl Io {
    pub(crate) fn new(
        stream: TcpStream,
        watch: Arc<Watch>,
        scan: HeadScan,
        replies: Arc<Replies>,
        slot: Slot,
    ) -> Self {
        Self {
            stream,
            watch,
            scan,
            scan_of: 0,
            replies,
            _slot: slot,
        }
    }

    /// Checks newly read bytes when they belong to a request head: between requests, on a
    /// connection that is still HTTP.
    fn check_head(&mut self, read: &[u8]) -> Result<(), Oversized> {
        if !self.watch.is_idle() {
            return Ok(());
        }
        let ended = self.watch.ended.load(Ordering::Acquire);
        if ended != self.scan_of {
            self.scan_of = ended;
            self.scan.reset();
        }
        self.scan.feed(read)
    }

    /// Notes a write's progress as activity.
    fn wrote(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.touch();
        }
        written
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        this.watch.touch();
        if let Err(oversized) = this.check_head(read) {
            // The socket is idle between requests, so its send buffer is empty and this small
            // reply fits: one non-blocking write, then the error closes the connection.
            let _ = this.stream.try_write(this.replies.for_oversized(oversized));
            *this
                .watch
                .oversized
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(oversized);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head over the limits",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::budget::Budget;

    fn watch() -> Arc<Watch> {
        let b = Budget::new("test", 10, 10);
        let (_slot, ip) = b.admit("127.0.0.1".parse().expect("ip")).expect("a place");
        Watch::new(ip)
    }

    /// Equal to within the millisecond the activity is kept in (the clock is paused).
    fn about(d: Duration, expected: Duration) -> bool {
        d.abs_diff(expected) <= Duration::from_millis(1)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_due_after_the_timeout_and_a_busy_one_is_not() {
        let w = watch();
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        w.idle_for(timeout).await;
        assert!(about(start.elapsed(), timeout), "idle from the accept");

        let request = w.begin();
        let busy = tokio::time::timeout(Duration::from_secs(60), w.idle_for(timeout)).await;
        assert!(busy.is_err(), "never idle while a request is in flight");
        drop(request);
        let ended = Instant::now();
        w.idle_for(timeout).await;
        assert!(
            about(ended.elapsed(), timeout),
            "idle counts from the request's end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_is_never_idle_here() {
        let w = watch();
        w.upgrading();
        let r = tokio::time::timeout(
            Duration::from_secs(3600),
            w.idle_for(Duration::from_secs(1)),
        )
        .await;
        assert!(r.is_err());
        assert!(
            w.ip_slot.lock().expect("lock").is_none(),
            "left its address's count"
        );
    }
}
