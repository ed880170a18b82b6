//! A short reorder window per room and chunk, in front of dispatch.
//!
//! Several Send instances fan out independently, so a room's messages can reach a gateway's stream
//! out of `seq` order (5 before 4), and a room's members are split into entries of at most 100
//! targets whose entries interleave (5 for the first chunk, then 6 for the first chunk, then 5 for
//! the second...). Order is kept per (room, chunk): Send sorts targets before cutting chunks, so a
//! chunk is known by its first target. Every connection would otherwise see a gap and fill it from the
//! database on its own — one query per recipient. Instead the gateway holds an entry that is ahead
//! of its room's next `seq` for a few milliseconds; when the missing one arrives, both go out in
//! order. Whatever is still held when the window closes goes out anyway: the connections' own gap
//! fill stays the backstop, so this only saves work, it never decides correctness.
//!
//! A chunk seen for the first time (or again after [`IDLE`]) has no known head: its first entry
//! need not be the next one its connections expect (another Send instance's earlier entry may be
//! on its way), so its first entries wait out the window too and go out in `seq` order. Taking the
//! first one seen for the next one had every connection of the chunk fill a gap from the database
//! whenever the other Send instance's entry came second, at the start of every burst.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::stream::PushEntry;
use proto::{RoomId, Seq, UserId};
use tokio::time::Instant;

/// Most entries held for one room; more release the room at once.
const MAX_HELD: usize = 1024;
/// A room not seen for this long starts over (its members may have left and come back, so the
/// next entry is not necessarily the successor of the last one seen): its head is unknown again.
const IDLE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct RoomOrder {
    /// The last `seq` out; `None` until the first entries have waited out the window.
    head: Option<Seq>,
    seen: Instant,
    held: BTreeMap<Seq, Vec<PushEntry>>,
    held_since: Option<Instant>,
}

/// Entries of one room and chunk released at the end of the window, with what they skip.
#[derive(Debug)]
pub struct Released {
    pub room: RoomId,
    /// The last seq that went out before these.
    pub after: Seq,
    /// The held entries by seq, in `seq` order.
    pub held: Vec<(Seq, Vec<PushEntry>)>,
}

impl Released {
    /// The seqs between `after` and the last held one that never came: every hole, not only
    /// the one before the first held entry (a connection would fill a later one on its own).
    pub fn missing(&self) -> Vec<Seq> {
        let mut missing = Vec::new();
        let mut next = self.after + 1;
        for (seq, _) in &self.held {
            missing.extend(next..*seq);
            next = next.max(seq + 1);
        }
        missing
    }
}

/// Reorders chat entries per room within `window`.
#[derive(Debug)]
pub struct Reorder {
    window: Duration,
    rooms: HashMap<Key, RoomOrder>,
}

/// A room and the first target of a chunk of its members.
type Key = (RoomId, UserId);

fn key_seq(e: &PushEntry) -> Option<(Key, Seq)> {
    match e {
        PushEntry::Chat { message, targets } => Some((
            (
                message.room_id,
                targets.first().copied().unwrap_or_default(),
            ),
            message.seq,
        )),
        PushEntry::Ack { .. }
        | PushEntry::Notice { .. }
        | PushEntry::Revoke { .. }
        | PushEntry::DropDevice { .. }
        | PushEntry::Read { .. }
        | PushEntry::Typing { .. } => None,
    }
}

impl Reorder {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            rooms: HashMap::new(),
        }
    }

    /// The window this reorders within.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Takes an entry; appends to `out` what may be dispatched now, in order. With a zero window
    /// every entry goes straight to `out`.
    pub fn accept(&mut self, entry: PushEntry, now: Instant, out: &mut Vec<PushEntry>) {
        if self.window.is_zero() {
            out.push(entry);
            return;
        }
        let Some((key, seq)) = key_seq(&entry) else {
            out.push(entry);
            return;
        };
        let r = self.rooms.entry(key).or_insert(RoomOrder {
            head: None,
            seen: now,
            held: BTreeMap::new(),
            held_since: None,
        });
        if r.held.is_empty() && now.duration_since(r.seen) > IDLE {
            r.head = None;
        }
        r.seen = now;
        if let Some(head) = r.head
            && seq <= head + 1
        {
            // The next one (or a repeat, or another chunk of one already out: connections dedupe).
            if seq <= head {
                // Most often a Send instance's entry that came after the window gave up on it.
                metrics::counter!("ruststacker_gateway_reorder_late_total").increment(1);
            }
            r.head = Some(head.max(seq));
            out.push(entry);
            release_ready(r, out);
            return;
        }
        r.held.entry(seq).or_default().push(entry);
        r.held_since.get_or_insert(now);
        metrics::counter!("ruststacker_gateway_reorder_held_total").increment(1);
        if r.held.len() > MAX_HELD {
            out.extend(release_all(r));
        }
    }

    /// Releases rooms whose oldest held entry waited `window`, each with the seq it follows
    /// (for a chunk whose head was unknown, the one before its first held entry: nothing before
    /// that is known to be missing), so the caller can fetch every hole from the database once
    /// for all local recipients.
    pub fn expire(&mut self, now: Instant) -> Vec<Released> {
        let mut out = Vec::new();
        for (room, r) in &mut self.rooms {
            if r.held_since
                .is_some_and(|t| now.duration_since(t) >= self.window)
            {
                let held: Vec<(Seq, Vec<PushEntry>)> =
                    std::mem::take(&mut r.held).into_iter().collect();
                let (Some((first, _)), Some((last, _))) = (held.first(), held.last()) else {
                    r.held_since = None;
                    continue;
                };
                let after = r.head.unwrap_or(first - 1);
                r.head = Some(after.max(*last));
                r.held_since = None;
                metrics::counter!("ruststacker_gateway_reorder_timeouts_total")
                    .increment(held.iter().map(|(_, e)| e.len() as u64).sum());
                out.push(Released {
                    room: room.0,
                    after,
                    held,
                });
            }
        }
        self.rooms
            .retain(|_, r| !r.held.is_empty() || now.duration_since(r.seen) <= IDLE);
        out
    }

    /// When the next [`Reorder::expire`] has something to do, if anything is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(|r| r.held_since)
            .min()
            .map(|t| t + self.window)
    }
}

fn release_ready(r: &mut RoomOrder, out: &mut Vec<PushEntry>) {
    let Some(mut head) = r.head else {
        return;
    };
    while let Some(entry) = r.held.first_entry() {
        if *entry.key() > head + 1 {
            break;
        }
        head = head.max(*entry.key());
        out.extend(entry.remove());
    }
    r.head = Some(head);
    if r.held.is_empty() {
        r.held_since = None;
    }
}

fn release_all(r: &mut RoomOrder) -> Vec<PushEntry> {
    let mut out = Vec::new();
    while let Some((seq, entries)) = r.held.pop_first() {
        r.head = Some(r.head.map_or(seq, |h| h.max(seq)));
        out.extend(entries);
    }
    r.held_since = None;
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::api::MessageType;
    use proto::stream::PushMessage;

    use super::*;

    fn chat(room: RoomId, seq: Seq) -> PushEntry {
        PushEntry::Chat {
            message: Arc::new(PushMessage {
                id: seq,
                room_id: room,
                seq,
                sender_id: 1,
                msg_type: MessageType::Text,
                content: String::new(),
                client_msg_id: None,
                created_at_ms: 0,
            }),
            targets: vec![1],
        }
    }

    fn room_seq(e: &PushEntry) -> Option<(RoomId, Seq)> {
        match e {
            PushEntry::Chat { message, .. } => Some((message.room_id, message.seq)),
            PushEntry::Ack { .. }
            | PushEntry::Notice { .. }
            | PushEntry::Revoke { .. }
            | PushEntry::DropDevice { .. }
            | PushEntry::Read { .. }
            | PushEntry::Typing { .. } => None,
        }
    }

    fn chunk(room: RoomId, seq: Seq, first_target: UserId) -> PushEntry {
        match chat(room, seq) {
            PushEntry::Chat { message, .. } => PushEntry::Chat {
                message,
                targets: vec![first_target, first_target + 1],
            },
            ack => ack,
        }
    }

    const WINDOW: Duration = Duration::from_millis(20);

    /// Starts chunks with `first` (accepted at `t0`, released when the window closes); returns
    /// the time after that.
    fn start(r: &mut Reorder, first: Vec<PushEntry>, t0: Instant) -> Instant {
        for e in first {
            assert!(
                accept(r, e, t0).is_empty(),
                "a new chunk's first entry waits"
            );
        }
        assert_eq!(r.expire(t0 + WINDOW).len(), 1, "released at the window");
        t0 + WINDOW
    }

    #[test]
    fn chunks_of_one_room_are_ordered_separately() {
        let mut r = Reorder::new(WINDOW);
        let t0 = Instant::now();
        let t = start(&mut r, vec![chunk(1, 4, 1)], t0);
        start(&mut r, vec![chunk(1, 4, 101)], t0);
        // Two Send instances interleave: chunk A gets 5 and 6, chunk B gets 6 before 5.
        assert_eq!(seqs(&accept(&mut r, chunk(1, 5, 1), t)), vec![5]);
        assert_eq!(seqs(&accept(&mut r, chunk(1, 6, 1), t)), vec![6]);
        assert!(
            accept(&mut r, chunk(1, 6, 101), t).is_empty(),
            "chunk B waits for its 5"
        );
        assert_eq!(seqs(&accept(&mut r, chunk(1, 5, 101), t)), vec![5, 6]);
    }

    #[test]
    fn the_first_entries_of_a_chunk_wait_out_the_window_and_go_out_in_order() {
        let mut r = Reorder::new(WINDOW);
        let t = Instant::now();
        // The other Send instance's 5 comes second: 6 is not taken for the next one.
        assert!(accept(&mut r, chat(1, 6), t).is_empty());
        assert!(accept(&mut r, chat(1, 5), t).is_empty());
        assert_eq!(r.next_deadline(), Some(t + WINDOW));
        let released = r.expire(t + WINDOW);
        assert_eq!(released.len(), 1);
        assert_eq!(
            released[0].after, 4,
            "nothing before the first seen is known missing"
        );
        assert!(released[0].missing().is_empty());
        assert_eq!(held_seqs(&released[0]), vec![5, 6]);
        assert_eq!(seqs(&accept(&mut r, chat(1, 7), t + WINDOW)), vec![7]);
    }

    /// What [`Reorder::accept`] lets out for `entry`.
    fn accept(r: &mut Reorder, entry: PushEntry, now: Instant) -> Vec<PushEntry> {
        let mut out = Vec::new();
        r.accept(entry, now, &mut out);
        out
    }

    fn seqs(v: &[PushEntry]) -> Vec<Seq> {
        v.iter().filter_map(room_seq).map(|(_, s)| s).collect()
    }

    fn held_seqs(r: &Released) -> Vec<Seq> {
        r.held.iter().flat_map(|(_, e)| seqs(e)).collect()
    }

    #[test]
    fn a_release_names_every_hole_not_only_the_first() {
        let mut r = Reorder::new(WINDOW);
        let t = start(&mut r, vec![chat(1, 4)], Instant::now());
        // 5 and 7 and 8 never come; 6 and 9 do.
        assert!(accept(&mut r, chat(1, 6), t).is_empty());
        assert!(accept(&mut r, chat(1, 9), t).is_empty());
        let released = r.expire(t + WINDOW);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].after, 4);
        assert_eq!(released[0].missing(), vec![5, 7, 8]);
        assert_eq!(held_seqs(&released[0]), vec![6, 9]);
        // The room goes on after the last one released.
        assert_eq!(seqs(&accept(&mut r, chat(1, 10), t)), vec![10]);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn an_early_entry_waits_for_its_predecessor() {
        let mut r = Reorder::new(WINDOW);
        let t = start(&mut r, vec![chat(1, 4)], Instant::now());
        assert!(accept(&mut r, chat(1, 6), t).is_empty());
        assert!(accept(&mut r, chat(1, 7), t).is_empty());
        assert_eq!(seqs(&accept(&mut r, chat(1, 5), t)), vec![5, 6, 7]);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_predecessor_that_never_comes_releases_at_the_window() {
        let mut r = Reorder::new(WINDOW);
        let t = start(&mut r, vec![chat(1, 1)], Instant::now());
        assert!(accept(&mut r, chat(1, 3), t).is_empty());
        assert_eq!(r.next_deadline(), Some(t + WINDOW));
        assert!(r.expire(t + Duration::from_millis(19)).is_empty());
        let released = r.expire(t + WINDOW);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].after, 1);
        assert_eq!(released[0].missing(), vec![2]);
        assert_eq!(held_seqs(&released[0]), vec![3]);
        // 2 shows up late: it goes out (the connections drop it if they filled it already).
        assert_eq!(seqs(&accept(&mut r, chat(1, 2), t)), vec![2]);
        assert_eq!(seqs(&accept(&mut r, chat(1, 4), t)), vec![4]);
    }

    #[test]
    fn rooms_are_independent_and_acks_pass_straight_through() {
        let mut r = Reorder::new(WINDOW);
        let t = start(&mut r, vec![chat(1, 1)], Instant::now());
        start(&mut r, vec![chat(2, 9)], t - WINDOW);
        assert!(accept(&mut r, chat(1, 3), t).is_empty());
        assert_eq!(seqs(&accept(&mut r, chat(2, 10), t)), vec![10]);
        let ack = PushEntry::Ack {
            sender_id: 1,
            message_id: 3,
            room_id: 1,
            seq: 3,
            client_msg_id: None,
        };
        assert_eq!(accept(&mut r, ack, t).len(), 1);
    }

    #[test]
    fn a_room_idle_for_long_starts_over() {
        let mut r = Reorder::new(WINDOW);
        let t = start(&mut r, vec![chat(1, 1)], Instant::now());
        let later = t + IDLE + Duration::from_secs(1);
        // Not taken for 1's successor with a hole before it: its head is unknown again.
        assert!(accept(&mut r, chat(1, 50), later).is_empty());
        let released = r.expire(later + WINDOW);
        assert_eq!(released[0].after, 49);
        assert!(released[0].missing().is_empty());
        assert_eq!(held_seqs(&released[0]), vec![50]);
    }

    #[test]
    fn a_zero_window_changes_nothing() {
        let mut r = Reorder::new(Duration::ZERO);
        let t = Instant::now();
        accept(&mut r, chat(1, 1), t);
        assert_eq!(seqs(&accept(&mut r, chat(1, 3), t)), vec![3]);
    }
}
