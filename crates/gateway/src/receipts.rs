//! Read receipts and typing, the two client frames that reach other users.
//!
//! A `read` frame is checked by the connection's writer (only a `seq` it was sent in that room
//! counts: no lookup) and recorded here in memory (the highest `seq` per user and room);
//! a flusher writes what was recorded every `cursor_flush_ms` in one transaction of forward-only
//! updates (bounded by the room's `last_seq`), so a burst of `read` frames costs one row write per
//! user and room, and none is a transaction on its connection's path. Each update that moved a
//! read cursor becomes a `read` frame to the reader's connections (their other devices, on any
//! gateway) and, in a room of at most `read_receipts_max_members` members, to the other members.
//!
//! A `typing` frame is never stored: it is rate limited per user and room, checked against the
//! room's members, and pushed at once to the other members that are online (not to the typist's
//! own connections), in rooms of at most `typing_max_members` members.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use proto::stream::PushEntry;
use proto::{RoomId, Seq, UserId};
use tokio_util::sync::CancellationToken;

use crate::GatewayState;

/// `read` frames waiting to be written: the highest `seq` per (user, room).
#[derive(Debug, Default)]
pub(crate) struct ReadBook {
    pending: Mutex<HashMap<(UserId, RoomId), Seq, crate::hub::Fast>>,
}

impl ReadBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, RoomId), Seq, crate::hub::Fast>> {
        // Never held across a panic-prone call; a poisoned map is still whole.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `user` has read `room` up to `seq` (the highest recorded wins).
    pub(crate) fn mark(&self, user: UserId, room: RoomId, seq: Seq) {
        let mut pending = self.lock();
        let e = pending.entry((user, room)).or_insert(seq);
        *e = (*e).max(seq);
    }

    pub(crate) fn take(&self) -> Vec<(UserId, RoomId, Seq)> {
        self.lock()
            .drain()
            .map(|((user, room), seq)| (user, room, seq))
            .collect()
    }
}

impl GatewayState {
    /// A client's `typing` frame: to the room's other online members, when `user` is a member,
    /// within the rate limit and the room is small enough; otherwise dropped.
    pub(crate) async fn typing_frame(&self, user: UserId, room: RoomId) {
        if self
            .0
            .limits
            .typing_per_user_and_room
            .check(&(user, room))
            .is_err()
        {
            return;
        }
        let members = match self.0.groups.current_room(room).await {
            Ok(Some(m)) if m.get(user).is_some() => m,
            Ok(_) => {
                metrics::counter!("ruststacker_gateway_receipts_ignored_total", "frame" => "typing")
                    .increment(1);
                return;
            }
            Err(e) => {
                tracing::warn!(user_id = user, room_id = room, error = %e, "typing frame dropped");
                return;
            }
        };
        if members.ids().len() > self.0.cfg.typing_max_members {
            return;
        }
        let targets: Vec<UserId> = members
            .ids()
            .iter()
            .copied()
            .filter(|&u| u != user)
            .collect();
        self.push("typing", &targets, |targets| PushEntry::Typing {
            room_id: room,
            user_id: user,
            targets,
        })
        .await;
    }

    /// Locates `users` and appends an entry made by `make` to each of their gateways. Best
    /// effort: what cannot be pushed is logged and counted (a read cursor stays stored).
    async fn push(
        &self,
        what: &'static str,
        users: &[UserId],
        make: impl FnMut(Vec<UserId>) -> PushEntry,
    ) {
        if users.is_empty() {
            return;
        }
        let entries = match bus::plan::locate(self.0.routes.as_ref(), users, make).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, what, "not pushed: routes unavailable");
                metrics::counter!("ruststacker_gateway_receipt_push_failures_total", "frame" => what)
                    .increment(1);
                return;
            }
        };
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        match self.0.bus.publish_many(entries).await {
            Ok(()) => {
                metrics::counter!("ruststacker_gateway_receipt_entries_total", "frame" => what)
                    .increment(n)
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "not pushed");
                metrics::counter!("ruststacker_gateway_receipt_push_failures_total", "frame" => what)
                    .increment(1);
            }
        }
    }

    /// Writes the recorded `read` frames and pushes a `read` frame for each cursor that moved.
    async fn flush_reads(&self) -> Result<(), store::StoreError> {
        let updates = self.0.reads.take();
        if updates.is_empty() {
            return Ok(());
        }
        let moved = match self.0.store.advance_read(&updates).await {
            Ok(moved) => moved,
            Err(e) => {
                // Kept for the next flush.
                for (user, room, seq) in updates {
                    self.0.reads.mark(user, room, seq);
                }
                return Err(e);
            }
        };
        metrics::counter!("ruststacker_gateway_read_cursors_moved_total")
            .increment(moved.len() as u64);
        for (user, room, seq) in moved {
            let mut targets = vec![user];
            match self.0.groups.current_room(room).await {
                Ok(Some(m)) if m.ids().len() <= self.0.cfg.read_receipts_max_members => {
                    targets.extend(m.ids().iter().copied().filter(|&u| u != user));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(room_id = room, error = %e, "members not read: receipt to the reader only");
                }
            }
            self.push("read", &targets, |targets| PushEntry::Read {
                room_id: room,
                user_id: user,
                seq,
                targets,
            })
            .await;
        }
        Ok(())
    }

    /// Flushes recorded `read` frames every `interval`, and once more at `stop`.
    pub(crate) async fn run_read_flusher(self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush_reads().await {
                        tracing::warn!(error = %e, "read cursor flush failed; will retry");
                    }
                }
            }
        }
        if let Err(e) = self.flush_reads().await {
            tracing::warn!(error = %e, "final read cursor flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_read_seq_per_user_and_room_is_kept() {
        let b = ReadBook::default();
        b.mark(1, 2, 5);
        b.mark(1, 2, 3);
        b.mark(1, 3, 1);
        let mut taken = b.take();
        taken.sort_unstable();
        assert_eq!(taken, vec![(1, 2, 5), (1, 3, 1)]);
        assert!(b.take().is_empty());
    }
}
