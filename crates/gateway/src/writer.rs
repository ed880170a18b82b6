//! One connection's writer, the only owner of the socket's sink. It sends the welcome, resyncs
//! every room from the delivery cursor, then serves its queue and the client's commands,
//! coalescing everything queued into one flush. It keeps, per room, the last `seq` it sent: a
//! repeat is dropped and a gap is filled from the database, so a connection sees each room in
//! `seq` order without holes whatever the push path did.
//!
//! The writer is generic over its sink (any `Sink<Message>`) and over [`Env`], what it reads from
//! the gateway, so its unit tests drive it with channels and a real SQLite store instead of a
//! socket and a whole gateway.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use groups::{CachedGroups, Groups};
use proto::frame::ServerFrame;
use proto::stream::PushMessage;
use proto::{CloseCode, RoomId, Seq, UserId};
use store::Store;
use tokio::sync::Notify;

use crate::conn::chat_text;
use crate::cursor::CursorBook;
use crate::hub::{CLOSE_ABORT, ConnShared, Fast, Meters, Outbound, Signal};
use crate::receipts::ReadBook;

/// Most queue items and commands handled per flush.
const COALESCE: usize = 64;

/// Client commands waiting for the writer before the reader stops reading.
const COMMANDS: usize = 16;

/// What the writer reads besides its queue: the gateway's state in service, a hand-built one in
/// tests.
pub(crate) trait Env {
    fn store(&self) -> &dyn Store;
    fn groups(&self) -> &CachedGroups;
    fn cursors(&self) -> &CursorBook;
    /// Messages read per resync query.
    fn resync_chunk(&self) -> u32;
    /// The gateway's metric handles.
    fn meters(&self) -> &Meters;
    /// When, after connect, the catch-up resync runs (`None`: it does not).
    fn catch_up_after(&self) -> Option<Duration>;
    /// Where `read` frames wait to be written.
    fn reads(&self) -> &ReadBook;
}

/// What the client asked for, handed from the connection's reader to its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// The client has everything in `room` up to `seq`.
    Ack { room: RoomId, seq: Seq },
    /// The client wants everything in `room` after `after`.
    Sync { room: RoomId, after: Seq },
    /// The user has read `room` up to `seq`.
    Read { room: RoomId, seq: Seq },
    /// An application ping, answered with a pong.
    Ping,
}

/// The client's commands on their way from the reader to the writer, apart from the push queue:
/// a full push queue closes the connection as a slow consumer, and a command put there could only
/// be dropped. Here none is dropped: when [`COMMANDS`] are waiting, the reader waits too (and TCP
/// holds the client back). Not a tokio channel: one costs about 1 KiB per connection up front (a
/// cache-padded header and a first block of 32 slots), a sixth of an idle connection's memory,
/// where this queue allocates nothing until the client sends a command. The writer's side takes
/// no lock unless a command is waiting: it reads a count; it is woken through the connection's
/// shared state ([`ConnShared::commanded`]), so it waits on one waker slot for frames and
/// commands alike.
#[derive(Debug, Default)]
pub(crate) struct Commands {
    queue: Mutex<VecDeque<Command>>,
    /// Commands in `queue`.
    waiting: AtomicUsize,
    taken: Notify,
}

impl Commands {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Command>> {
        // The lock is never held across a panic-prone call; a poisoned queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `cmd`, waiting while the queue is full, and wakes the writer of `shared`. Only the
    /// connection's reader pushes, so a queue seen with room keeps it until this push.
    pub(crate) async fn push(&self, cmd: Command, shared: &ConnShared) {
        while self.queue().len() >= COMMANDS {
            // A take between the check and this wait leaves a permit: no wakeup is missed.
            self.taken.notified().await;
        }
        self.queue().push_back(cmd);
        self.waiting.fetch_add(1, Ordering::Release);
        shared.commanded();
    }

    /// The oldest command, if any.
    pub(crate) fn try_take(&self) -> Option<Command> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return None;
        }
        let cmd = self.queue().pop_front();
        if cmd.is_some() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.taken.notify_one();
        }
        cmd
    }
}

#[derive(Debug)]
enum WriteError {
    /// The socket failed: nothing more can be sent.
    Socket,
    /// The database failed during a resync: close with 1011 so the client retries.
    Store(store::StoreError),
}

impl From<store::StoreError> for WriteError {
    fn from(e: store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// How long the catch-up pass waits, once due, for live traffic to make it unneeded.
const CATCH_UP_GRACE: Duration = Duration::from_secs(1);

/// The catch-up pass after connect, once due: the rooms it would still query. A chat frame of a
/// room stored at or after `since_ms` settles that room: the frame's `seq` is higher than that of
/// any message fanned out before the Send instances saw the connect, so a gap before it is filled
/// as any gap is, and the database need not be asked.
#[derive(Debug)]
struct CatchUpWatch {
    since_ms: i64,
    rooms: std::collections::HashSet<RoomId, Fast>,
}

struct Writer<S, E> {
    sink: S,
    env: E,
    user: UserId,
    /// The device the connection named (`None`: the default device, the user's cursor).
    device: Option<Arc<str>>,
    ack_mode: bool,
    last_sent: HashMap<RoomId, Seq, Fast>,
    unflushed: HashMap<RoomId, Seq, Fast>,
    /// The catch-up pass's unsettled rooms, between its due time and its end (boxed: most
    /// connections are past it, and an idle one keeps its writer resident).
    watch: Option<Box<CatchUpWatch>>,
    /// Chat frames fed since the last flush, and when the first live one of them was stored
    /// (0: none), for the metrics recorded once per flush.
    fed: u64,
    first_live_ms: i64,
}

impl<S, E> Writer<S, E>
where
    S: Sink<Message> + Unpin,
    E: Env,
{
    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), WriteError> {
        self.sink
            .feed(Message::Text(text))
            .await
            .map_err(|_| WriteError::Socket)
    }

    async fn send(&mut self, msg: Message) -> Result<(), WriteError> {
        self.sink.send(msg).await.map_err(|_| WriteError::Socket)
    }

    async fn feed_chat(
        &mut self,
        room: RoomId,
        seq: Seq,
        text: Utf8Bytes,
    ) -> Result<(), WriteError> {
        self.feed(text).await?;
        self.fed += 1;
        self.last_sent.insert(room, seq);
        let e = self.unflushed.entry(room).or_insert(seq);
        *e = (*e).max(seq);
        Ok(())
    }

    /// Flushes the socket, then records the cursors of what was flushed (unless the client
    /// acknowledges for itself).
    async fn flush(&mut self) -> Result<(), WriteError> {
        self.sink.flush().await.map_err(|_| WriteError::Socket)?;
        let meters = self.env.meters();
        if self.fed > 0 {
            meters.frames_sent.increment(std::mem::take(&mut self.fed));
        }
        if self.first_live_ms > 0 {
            // Sampled once per flush: the oldest live frame in it (Send's clock to ours).
            let took = kit::now_ms() - std::mem::take(&mut self.first_live_ms);
            meters.push_latency.record(took.max(0) as f64 / 1000.0);
        }
        let book = self.env.cursors();
        for (room, seq) in self.unflushed.drain() {
            if !self.ack_mode {
                book.advance_for(self.user, self.device.as_ref(), room, seq);
            }
        }
        Ok(())
    }

    /// Sends `room`'s messages with `seq` in `(after, until]` from the database, in chunks.
    async fn replay(
        &mut self,
        room: RoomId,
        after: Seq,
        until: Option<Seq>,
    ) -> Result<(), WriteError> {
        let chunk = self.env.resync_chunk().max(1);
        let mut from = after;
        loop {
            let msgs = self.env.store().messages_after(room, from, chunk).await?;
            let done = msgs.len() < chunk as usize;
            for m in msgs {
                if until.is_some_and(|u| m.seq > u) {
                    return self.flush().await;
                }
                let seq = m.seq;
                self.feed_chat(room, seq, chat_text(&PushMessage::from(m)))
                    .await?;
                from = seq;
            }
            self.flush().await?;
            if done {
                return Ok(());
            }
        }
    }

    /// Everything the user missed in every room: from the cursor of the connection's device on
    /// connect, from what this connection already sent on the catch-up pass. A named device's
    /// cursor in a room where it has none is where the user joined it; it is never before that
    /// (a member removed and added back gets nothing from while they were out).
    async fn resync_all(&mut self) -> Result<(), WriteError> {
        let rooms = self.env.groups().joined_rooms(self.user).await?;
        let device_cursors: HashMap<RoomId, Seq, Fast> = match &self.device {
            Some(device) => self
                .env
                .store()
                .device_cursors(self.user, device)
                .await?
                .into_iter()
                .collect(),
            None => HashMap::default(),
        };
        for r in rooms {
            let pending = self
                .env
                .cursors()
                .pending_for(self.user, self.device.as_ref(), r.room.id)
                .unwrap_or(0);
            let sent = self.last_sent.get(&r.room.id).copied().unwrap_or(0);
            let stored = match self.device {
                Some(_) => device_cursors
                    .get(&r.room.id)
                    .copied()
                    .unwrap_or(0)
                    .max(r.joined_seq),
                None => r.delivered_seq,
            };
            let cursor = stored.max(pending).max(sent);
            self.last_sent.insert(r.room.id, cursor);
            if r.room.last_seq > cursor {
                metrics::counter!("ruststacker_gateway_resyncs_total").increment(1);
                self.replay(r.room.id, cursor, None).await?;
            }
        }
        Ok(())
    }

    /// Where a gap in `room` after `last` is filled from: never before the user joined, so a
    /// member removed and added back while connected gets nothing from while they were out
    /// (it is in the history for them to read). `None`: the room is gone (dissolved), nothing
    /// more of it is sent.
    async fn fill_from(&self, room: RoomId, last: Seq) -> Result<Option<Seq>, WriteError> {
        let Some(current) = self.env.groups().current_room(room).await? else {
            return Ok(None);
        };
        let joined = current.get(self.user).map_or(0, |m| m.joined_seq);
        Ok(Some(last.max(joined)))
    }

    /// Rare, large futures (replays hit the database) are boxed where they are awaited, so the
    /// future every idle connection keeps resident stays small.
    async fn handle(&mut self, item: Outbound) -> Result<(), WriteError> {
        match item {
            Outbound::Chat(chat) => {
                let (room, seq) = (chat.room, chat.seq);
                if self.first_live_ms == 0 {
                    self.first_live_ms = chat.created_at_ms;
                }
                if let Some(w) = &mut self.watch
                    && chat.created_at_ms >= w.since_ms
                {
                    w.rooms.remove(&room);
                }
                match self.last_sent.get(&room).copied() {
                    Some(last) if seq <= last => Ok(()),
                    Some(last) if seq > last + 1 => {
                        let Some(from) = Box::pin(self.fill_from(room, last)).await? else {
                            self.last_sent.insert(room, Seq::MAX);
                            return Ok(());
                        };
                        if seq > from + 1 {
                            metrics::counter!("ruststacker_gateway_gap_fills_total").increment(1);
                            Box::pin(self.replay(room, from, Some(seq - 1))).await?;
                        }
                        self.feed_chat(room, seq, chat.text).await
                    }
                    _ => self.feed_chat(room, seq, chat.text).await,
                }
            }
            Outbound::Frame(text) => self.feed(text).await,
            Outbound::RoomGone(room, text) => {
                // Whatever of the room is still queued or in flight is older than the notice
                // and now counts as a repeat.
                self.last_sent.insert(room, Seq::MAX);
                self.feed(text).await
            }
            Outbound::CatchUp => Box::pin(self.resync_all()).await,
        }
    }

    async fn command(&mut self, cmd: Command) -> Result<(), WriteError> {
        match cmd {
            Command::Ack { room, seq } => {
                // Only what this connection was sent can be acknowledged.
                if let Some(last) = self.last_sent.get(&room) {
                    self.env.cursors().advance_for(
                        self.user,
                        self.device.as_ref(),
                        room,
                        seq.min(*last),
                    );
                }
                Ok(())
            }
            Command::Read { room, seq } => {
                // Only what this connection was sent can be read: a room it was sent nothing of
                // (not a member, no such room) or a gone one is ignored, and so is a `seq` beyond
                // the last it was sent, without asking anyone.
                if let Some(&last) = self.last_sent.get(&room)
                    && last != Seq::MAX
                    && seq > 0
                    && seq <= last
                {
                    self.env.reads().mark(self.user, room, seq);
                } else {
                    metrics::counter!("ruststacker_gateway_receipts_ignored_total", "frame" => "read")
                        .increment(1);
                }
                Ok(())
            }
            // Rare and large (a membership check, then the database): boxed, like `handle`'s.
            Command::Sync { room, after } => Box::pin(self.sync(room, after)).await,
            Command::Ping => self.feed(ServerFrame::Pong {}.to_json().into()).await,
        }
    }

    /// Sends a member what `room` has after `after`.
    async fn sync(&mut self, room: RoomId, after: Seq) -> Result<(), WriteError> {
        if let proto::api::Access::Member(_) = self.env.groups().access(room, self.user).await? {
            let before = self.last_sent.get(&room).copied().unwrap_or(0);
            self.replay(room, after.max(0), None).await?;
            let e = self.last_sent.entry(room).or_insert(before);
            *e = (*e).max(before);
        }
        Ok(())
    }

    /// Handles what is already waiting (commands first: they are few and small), up to a
    /// flush's worth of queued frames, then flushes once. The frames are taken from the queue
    /// under one lock; the buffer they are taken into lives only for this call, so an idle
    /// connection holds no per-batch memory.
    async fn coalesce(
        &mut self,
        shared: &ConnShared,
        commands: &Commands,
    ) -> Result<(), WriteError> {
        for _ in 0..COMMANDS {
            let Some(cmd) = commands.try_take() else {
                break;
            };
            self.command(cmd).await?;
        }
        for item in shared.take_queued(COALESCE) {
            self.handle(item).await?;
        }
        self.flush().await
    }

    async fn serve(&mut self, commands: &Commands, shared: &ConnShared) -> Result<(), WriteError> {
        self.feed(ServerFrame::welcome().to_json().into()).await?;
        Box::pin(self.resync_all()).await?;
        self.flush().await?;
        // One more resync a little after connect: a message stored after the first resync but
        // fanned out with a route cached before this connection existed (another Send instance's
        // cache had not yet seen the connect event) reached the wrong gateway or none. A later
        // message would reveal the gap; this pass does not wait for one where none comes: once
        // due, it waits `CATCH_UP_GRACE` more and asks the database only if a room the
        // connection knows had no chat frame stored since it was due (a busy room always has
        // one, so a crowd of connections does not query the database each). Its timer is boxed
        // and dropped once done, so it costs nothing where it is off (`all`) or past. Pings come
        // from the hub's sweeper: the connection keeps no timer of its own.
        let mut catch_up = self
            .env
            .catch_up_after()
            .map(|after| Box::pin(tokio::time::sleep(after)));
        loop {
            tokio::select! {
                biased;
                signal = shared.signal() => match signal {
                    Signal::Close => return Ok(()),
                    Signal::Ping => self.send(Message::Ping(Default::default())).await?,
                    Signal::Work => {
                        self.coalesce(shared, commands).await?;
                        if self.watch.as_ref().is_some_and(|w| w.rooms.is_empty()) {
                            self.watch = None;
                            catch_up = None;
                            metrics::counter!("ruststacker_gateway_catch_ups_total", "outcome" => "settled_live")
                                .increment(1);
                        }
                    }
                },
                () = async { catch_up.as_mut().expect("guarded").await }, if catch_up.is_some() => {
                    catch_up = self.catch_up_due().await?;
                }
            }
        }
    }

    /// The catch-up timer fired: the first time, starts watching the rooms this connection
    /// knows and returns the grace timer; the second time, resyncs unless every room was
    /// settled by live traffic meanwhile (see [`CatchUpWatch`]).
    async fn catch_up_due(
        &mut self,
    ) -> Result<Option<std::pin::Pin<Box<tokio::time::Sleep>>>, WriteError> {
        let outcome = match self.watch.take() {
            None => {
                let rooms: std::collections::HashSet<RoomId, Fast> = self
                    .last_sent
                    .iter()
                    .filter(|&(_, &seq)| seq != Seq::MAX)
                    .map(|(&room, _)| room)
                    .collect();
                if !rooms.is_empty() {
                    self.watch = Some(Box::new(CatchUpWatch {
                        since_ms: kit::now_ms(),
                        rooms,
                    }));
                    return Ok(Some(Box::pin(tokio::time::sleep(CATCH_UP_GRACE))));
                }
                // In no room yet: nothing to watch, and the query is small.
                "resynced"
            }
            Some(w) if w.rooms.is_empty() => "settled_live",
            Some(_) => "resynced",
        };
        metrics::counter!("ruststacker_gateway_catch_ups_total", "outcome" => outcome).increment(1);
        if outcome == "resynced" {
            Box::pin(self.resync_all()).await?;
            self.flush().await?;
        }
        Ok(None)
    }

    /// At shutdown, writes (and acknowledges) what is already waiting before the close frame.
    async fn drain(&mut self, shared: &ConnShared, commands: &Commands) -> Result<(), WriteError> {
        while let Some(cmd) = commands.try_take() {
            self.command(cmd).await?;
        }
        for item in shared.take_queued(usize::MAX) {
            self.handle(item).await?;
        }
        self.flush().await
    }
}

/// Writes to `sink` until the connection closes, then sends the close frame of
/// `shared.close_code()` (after what is queued, at shutdown) and closes the sink. Not an async
/// fn: the future keeps only the [`Writer`] the arguments go into, not their slots as well.
pub(crate) fn write_loop<'a, S, E>(
    env: E,
    user: UserId,
    device: Option<Arc<str>>,
    ack_mode: bool,
    sink: S,
    commands: &'a Commands,
    shared: &'a ConnShared,
) -> impl Future<Output = ()> + 'a
where
    S: Sink<Message> + Unpin + 'a,
    E: Env + 'a,
{
    let w = Writer {
        sink,
        env,
        user,
        device,
        ack_mode,
        last_sent: HashMap::default(),
        unflushed: HashMap::default(),
        watch: None,
        fed: 0,
        first_live_ms: 0,
    };
    w.run(commands, shared)
}

impl<S, E> Writer<S, E>
where
    S: Sink<Message> + Unpin,
    E: Env,
{
    async fn run(mut self, commands: &Commands, shared: &ConnShared) {
        let user = self.user;
        let served = self.serve(commands, shared).await;
        let socket_ok = match served {
            Ok(()) => true,
            Err(WriteError::Socket) => false,
            Err(WriteError::Store(e)) => {
                tracing::warn!(user_id = user, error = %e, "resync failed; closing with 1011");
                shared.close(CloseCode::ServerError);
                true
            }
        };
        let code = shared.close_code();
        if socket_ok && code != CLOSE_ABORT {
            let drained = if code == CloseCode::GoingAway {
                self.drain(shared, commands).await.is_ok()
            } else {
                true
            };
            if drained {
                let _ = self.send(close_frame(code)).await;
            }
        }
        // The reader stops too (the code is already set unless the socket failed).
        shared.close(code);
        if code != CLOSE_ABORT {
            let _ = self.sink.close().await;
        }
    }
}

/// The close frame of `code`, with its reason text.
pub(crate) fn close_frame(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code(),
        reason: code.reason().into(),
    }))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;
    use groups::DirectGroups;
    use store::{Appended, NewMessage, NewUser};
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::*;
    use crate::hub::{ChatOut, Hub, Wakes};

    /// A socket stand-in: what is fed since the last flush goes out on a channel as one batch
    /// when flushed, so a test sees the flushes.
    struct Socket {
        batch: Vec<Message>,
        flushed: UnboundedSender<Vec<Message>>,
    }

    impl Sink<Message> for Socket {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.batch.push(item);
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            if !self.batch.is_empty() {
                let batch = std::mem::take(&mut self.batch);
                // The test may have stopped listening: it has seen what it wanted.
                let _ = self.flushed.send(batch);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    #[derive(Clone)]
    struct TestEnv {
        store: Arc<dyn Store>,
        groups: CachedGroups,
        cursors: Arc<CursorBook>,
        meters: Meters,
        catch_up: Option<Duration>,
        reads: Arc<ReadBook>,
    }

    impl Env for TestEnv {
        fn store(&self) -> &dyn Store {
            self.store.as_ref()
        }
        fn groups(&self) -> &CachedGroups {
            &self.groups
        }
        fn cursors(&self) -> &CursorBook {
            &self.cursors
        }
        fn resync_chunk(&self) -> u32 {
            // Small, so a resync of a few messages takes several queries and flushes.
            2
        }
        fn meters(&self) -> &Meters {
            &self.meters
        }
        fn catch_up_after(&self) -> Option<Duration> {
            self.catch_up
        }
        fn reads(&self) -> &ReadBook {
            &self.reads
        }
    }

    /// A real SQLite store with two users and a group of both: alice writes, bob reads.
    struct Fixture {
        _dir: tempfile::TempDir,
        env: TestEnv,
        alice: UserId,
        bob: UserId,
        room: RoomId,
        ids: proto::ids::Snowflake,
    }

    impl Fixture {
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let store: Arc<dyn Store> = Arc::new(
                store::sqlite::SqliteStore::open(&dir.path().join("db.sqlite"))
                    .await
                    .expect("store"),
            );
            let user = |name: &str| NewUser {
                username: name.into(),
                password_hash: "x".into(),
                nickname: name.into(),
                now_ms: 1,
            };
            let alice = store.create_user(user("alice")).await.expect("alice").id;
            let bob = store.create_user(user("bob")).await.expect("bob").id;
            let (room, _) = store
                .create_group("g", alice, &[bob], 1)
                .await
                .expect("group");
            let groups = CachedGroups::new(
                Arc::new(DirectGroups::new(store.clone())),
                100,
                Duration::from_secs(60),
            );
            Self {
                _dir: dir,
                env: TestEnv {
                    store,
                    groups,
                    cursors: Arc::default(),
                    meters: Meters::new(),
                    catch_up: None,
                    reads: Arc::default(),
                },
                alice,
                bob,
                room: room.id,
                ids: proto::ids::Snowflake::new(1).expect("a valid node"),
            }
        }

        /// Stores `n` messages of alice's; returns them as the push path would queue them.
        async fn store_messages(&self, n: usize) -> Vec<Outbound> {
            self.store_messages_at(n, kit::now_ms()).await
        }

        /// The same, stored at `created_at_ms`.
        async fn store_messages_at(&self, n: usize, created_at_ms: i64) -> Vec<Outbound> {
            let batch: Vec<NewMessage> = (0..n)
                .map(|_| NewMessage {
                    id: self.ids.next_id(),
                    room_id: self.room,
                    sender_id: self.alice,
                    msg_type: Default::default(),
                    content: "hi".into(),
                    client_msg_id: None,
                    created_at_ms,
                })
                .collect();
            let stored = self
                .env
                .store
                .append_messages(&batch)
                .await
                .expect("append");
            stored
                .into_iter()
                .map(|r| match r {
                    Ok(Appended::Stored(m)) => Outbound::Chat(ChatOut {
                        room: m.room_id,
                        seq: m.seq,
                        created_at_ms: m.created_at_ms,
                        text: chat_text(&PushMessage::from(m)),
                    }),
                    other => panic!("not stored: {other:?}"),
                })
                .collect()
        }

        fn delivered(&self) -> Option<Seq> {
            self.env.cursors.pending(self.bob, self.room)
        }
    }

    /// What a frame is, in a word and a number: `welcome`, `chat 3`, `pong`, `close 4008`.
    fn label(m: &Message) -> String {
        match m {
            Message::Text(t) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Chat { seq, .. }) => format!("chat {seq}"),
                Ok(ServerFrame::System { .. }) => "welcome".into(),
                Ok(ServerFrame::Pong {}) => "pong".into(),
                other => format!("{other:?}"),
            },
            Message::Close(Some(f)) => format!("close {}", f.code),
            other => format!("{other:?}"),
        }
    }

    fn labels(batch: &[Message]) -> Vec<String> {
        batch.iter().map(label).collect()
    }

    /// The next flush's frames.
    async fn next_flush(flushed: &mut UnboundedReceiver<Vec<Message>>) -> Vec<String> {
        labels(&flushed.recv().await.expect("the writer flushes"))
    }

    /// Every frame flushed from now until the writer ends.
    async fn rest(flushed: &mut UnboundedReceiver<Vec<Message>>) -> Vec<String> {
        let mut all = Vec::new();
        while let Some(batch) = flushed.recv().await {
            all.extend(labels(&batch));
        }
        all
    }

    /// One connection of bob's: its writer (to be run) and the test's ends of it.
    struct Conn {
        socket: Socket,
        flushed: UnboundedReceiver<Vec<Message>>,
        commands: Commands,
        shared: Arc<ConnShared>,
    }

    impl Conn {
        fn new(queue: usize) -> Self {
            let (flushed_tx, flushed) = unbounded_channel();
            Self {
                socket: Socket {
                    batch: Vec::new(),
                    flushed: flushed_tx,
                },
                flushed,
                commands: Commands::default(),
                shared: Arc::new(ConnShared::new(0, queue)),
            }
        }
    }

    #[tokio::test]
    async fn repeats_are_dropped_so_each_seq_is_sent_once() {
        let f = Fixture::new().await;
        let first = f.store_messages(3).await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            // The connect resync, two messages per query.
            assert_eq!(
                next_flush(&mut flushed).await,
                ["welcome", "chat 1", "chat 2"]
            );
            assert_eq!(next_flush(&mut flushed).await, ["chat 3"]);
            let fourth = f.store_messages(1).await;
            for item in [&first[1], &first[2], &fourth[0], &first[0], &fourth[0]] {
                assert!(shared.queue_now(item.clone()), "room in the queue");
            }
            assert_eq!(next_flush(&mut flushed).await, ["chat 4"]);
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::join!(writer, script);
        assert_eq!(f.delivered(), Some(4));
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_the_store_in_seq_order() {
        let f = Fixture::new().await;
        f.store_messages(1).await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(next_flush(&mut flushed).await, ["welcome", "chat 1"]);
            // 2, 3 and 4 are stored; only 4 reaches this gateway.
            let later = f.store_messages(3).await;
            assert!(shared.queue_now(later[2].clone()), "room in the queue");
            shared.close(CloseCode::GoingAway);
            assert_eq!(
                rest(&mut flushed).await,
                ["chat 2", "chat 3", "chat 4", "close 1001"]
            );
        };
        tokio::join!(writer, script);
        assert_eq!(f.delivered(), Some(4));
    }

    #[tokio::test]
    async fn everything_queued_goes_out_in_one_flush() {
        let f = Fixture::new().await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(next_flush(&mut flushed).await, ["welcome"]);
            let live = f.store_messages(3).await;
            // Queued while the writer waits: it wakes to all three (and the client's ping).
            for item in &live {
                assert!(shared.queue_now(item.clone()), "room in the queue");
            }
            commands
                .push(Command::Ping, &shared)
                .now_or_never()
                .expect("room for a command");
            assert_eq!(
                next_flush(&mut flushed).await,
                ["pong", "chat 1", "chat 2", "chat 3"]
            );
            assert_eq!(f.delivered(), Some(3), "the cursor moves once flushed");
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::join!(writer, script);
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_connection_as_slow_and_the_reconnect_resyncs() {
        let f = Fixture::new().await;
        let hub = Hub::default();
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(2);
        hub.add(f.bob, 0, shared.clone());
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(next_flush(&mut flushed).await, ["welcome"]);
            let live = f.store_messages(3).await;
            // The writer does not get to run between these: the third finds the queue full.
            let mut wakes = Wakes::default();
            assert_eq!(hub.deliver(&[f.bob], &live[0], &mut wakes), 1);
            assert_eq!(hub.deliver(&[f.bob], &live[1], &mut wakes), 1);
            assert_eq!(hub.deliver(&[f.bob], &live[2], &mut wakes), 0);
            wakes.wake_all();
            assert_eq!(shared.close_code(), CloseCode::SlowConsumer);
            // The writer ends by itself, with nothing more written than the close frame.
            assert_eq!(rest(&mut flushed).await, ["close 4008"]);
        };
        tokio::join!(writer, script);
        assert_eq!(f.delivered(), None, "nothing counts as delivered");

        let again = Conn::new(2);
        let mut flushed = again.flushed;
        again.shared.close(CloseCode::Normal);
        write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            again.socket,
            &again.commands,
            &again.shared,
        )
        .await;
        assert_eq!(
            rest(&mut flushed).await,
            ["welcome", "chat 1", "chat 2", "chat 3", "close 1000"]
        );
    }

    #[tokio::test]
    async fn an_ack_moves_the_cursor_only_over_what_was_sent() {
        let f = Fixture::new().await;
        f.store_messages(2).await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(f.env.clone(), f.bob, None, true, socket, &commands, &shared);
        let script = async {
            assert_eq!(
                next_flush(&mut flushed).await,
                ["welcome", "chat 1", "chat 2"]
            );
            assert_eq!(f.delivered(), None, "with acks the client moves the cursor");
            let room = f.room;
            commands.push(Command::Ack { room, seq: 1 }, &shared).await;
            commands.push(Command::Ack { room, seq: 9 }, &shared).await;
            commands
                .push(Command::Sync { room, after: 1 }, &shared)
                .await;
            assert_eq!(next_flush(&mut flushed).await, ["chat 2"]);
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::join!(writer, script);
        assert_eq!(f.delivered(), Some(2));
    }

    #[tokio::test]
    async fn a_read_counts_only_up_to_what_was_sent_in_the_room() {
        let f = Fixture::new().await;
        f.store_messages(2).await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(
                next_flush(&mut flushed).await,
                ["welcome", "chat 1", "chat 2"]
            );
            let room = f.room;
            for (room, seq) in [(room, 9), (room + 1, 1), (room, 0), (room, 1)] {
                commands.push(Command::Read { room, seq }, &shared).await;
            }
            commands.push(Command::Ping, &shared).await;
            assert_eq!(next_flush(&mut flushed).await, ["pong"]);
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::join!(writer, script);
        assert_eq!(
            f.env.reads.take(),
            vec![(f.bob, f.room, 1)],
            "beyond what was sent, another room and 0 are ignored"
        );
    }

    #[test]
    fn an_unused_command_queue_costs_a_connection_little() {
        // Under 128 bytes, inside the connection's task; a tokio channel is ~1 KiB on the heap.
        let size = std::mem::size_of::<Commands>();
        assert!(size <= 128, "{size} bytes");
    }

    #[tokio::test]
    async fn a_full_command_queue_holds_the_reader_back_and_loses_nothing() {
        let commands = Commands::default();
        let shared = ConnShared::new(0, 1);
        for seq in 0..COMMANDS as Seq {
            commands
                .push(Command::Ack { room: 1, seq }, &shared)
                .now_or_never()
                .expect("room for a command");
        }
        let mut blocked = Box::pin(commands.push(Command::Ping, &shared));
        assert!((&mut blocked).now_or_never().is_none(), "the reader waits");
        assert_eq!(commands.try_take(), Some(Command::Ack { room: 1, seq: 0 }));
        blocked.now_or_never().expect("a take makes room");
        let rest: Vec<Command> = std::iter::from_fn(|| commands.try_take()).collect();
        assert_eq!(rest.len(), COMMANDS);
        assert_eq!(rest[0], Command::Ack { room: 1, seq: 1 });
        assert_eq!(rest[COMMANDS - 1], Command::Ping);
    }

    /// What `ruststacker_gateway_catch_ups_total{outcome}` counted on this thread.
    fn catch_ups(meter: &metrics_exporter_prometheus::PrometheusHandle, outcome: &str) -> u64 {
        crate::rendered_count(
            &meter.render(),
            &format!("ruststacker_gateway_catch_ups_total{{outcome=\"{outcome}\"}}"),
        )
    }

    /// A fixture whose connections' catch-up pass is due at once, with one message stored.
    async fn catching_up() -> Fixture {
        let mut f = Fixture::new().await;
        f.env.catch_up = Some(Duration::ZERO);
        f.store_messages(1).await;
        f
    }

    #[tokio::test]
    async fn live_traffic_after_the_catch_up_is_due_settles_it_without_a_resync() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let meter = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let f = catching_up().await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(next_flush(&mut flushed).await, ["welcome", "chat 1"]);
            // Live frames, each stored after the pass fell due, until one of them settles it.
            let mut seq = 1;
            while catch_ups(&meter, "settled_live") == 0 {
                let live = f.store_messages_at(1, kit::now_ms() + 60_000).await;
                assert!(shared.queue_now(live[0].clone()), "room in the queue");
                seq += 1;
                assert_eq!(next_flush(&mut flushed).await, [format!("chat {seq}")]);
            }
            // Another message stored now reaches nobody: no resync looks for it.
            f.store_messages(1).await;
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(writer, script)
        })
        .await
        .expect("settled within 30 s");
        assert_eq!(catch_ups(&meter, "resynced"), 0);
    }

    #[tokio::test]
    async fn a_message_no_later_frame_reveals_is_sent_by_the_catch_up_pass() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let meter = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let f = catching_up().await;
        let Conn {
            socket,
            mut flushed,
            commands,
            shared,
        } = Conn::new(16);
        let writer = write_loop(
            f.env.clone(),
            f.bob,
            None,
            false,
            socket,
            &commands,
            &shared,
        );
        let script = async {
            assert_eq!(next_flush(&mut flushed).await, ["welcome", "chat 1"]);
            // Stored, but fanned out to another gateway (a stale route): only the pass finds it.
            f.store_messages(1).await;
            assert_eq!(next_flush(&mut flushed).await, ["chat 2"]);
            shared.close(CloseCode::GoingAway);
            assert_eq!(rest(&mut flushed).await, ["close 1001"]);
        };
        tokio::join!(writer, script);
        assert_eq!(catch_ups(&meter, "resynced"), 1);
        assert_eq!(catch_ups(&meter, "settled_live"), 0);
    }
}
