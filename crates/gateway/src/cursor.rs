//! Delivery cursors waiting to be written. Connections record what they have sent (or what the
//! client acknowledged) here, in memory; a flusher writes them to the database in one transaction
//! every interval, and once more at shutdown. A crash loses at most one interval of cursor
//! movement, which means re-sending (never losing) messages on reconnect; clients dedupe by id.
//!
//! A connection without a `device_id` moves its user's cursor (the membership's
//! `delivered_seq`); one of a named device moves that device's, kept apart here and written to
//! the device cursors.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use proto::{RoomId, Seq, UserId};
use store::Store;
use tokio_util::sync::CancellationToken;

/// Pending cursor advances. Every connection's writer records here after each flush, so the
/// common case (the entry is there: it moved since the last write) takes a shard's read lock and
/// one atomic, never the write lock.
#[derive(Debug, Default)]
pub struct CursorBook {
    pending: DashMap<(UserId, RoomId), AtomicI64, crate::hub::Fast>,
    /// Named devices' cursors: (user, device, room).
    devices: DashMap<(UserId, Arc<str>, RoomId), AtomicI64, crate::hub::Fast>,
}

impl CursorBook {
    /// Records that `device` of `user` (`None`: the default device) has everything in `room` up
    /// to `seq`.
    pub fn advance_for(&self, user: UserId, device: Option<&Arc<str>>, room: RoomId, seq: Seq) {
        let Some(device) = device else {
            return self.advance(user, room, seq);
        };
        let key = (user, device.clone(), room);
        if let Some(e) = self.devices.get(&key) {
            e.fetch_max(seq, Ordering::AcqRel);
            return;
        }
        self.devices
            .entry(key)
            .or_insert_with(|| AtomicI64::new(seq))
            .fetch_max(seq, Ordering::AcqRel);
    }

    /// The pending (not yet written) cursor of `device` of `user` in `room`.
    pub fn pending_for(
        &self,
        user: UserId,
        device: Option<&Arc<str>>,
        room: RoomId,
    ) -> Option<Seq> {
        let Some(device) = device else {
            return self.pending(user, room);
        };
        self.devices
            .get(&(user, device.clone(), room))
            .map(|v| v.load(Ordering::Acquire))
    }

    /// Records that `user` has everything in `room` up to `seq`.
    pub fn advance(&self, user: UserId, room: RoomId, seq: Seq) {
        if let Some(e) = self.pending.get(&(user, room)) {
            e.fetch_max(seq, Ordering::AcqRel);
            return;
        }
        self.pending
            .entry((user, room))
            .or_insert_with(|| AtomicI64::new(seq))
            .fetch_max(seq, Ordering::AcqRel);
    }

    /// The pending (not yet written) cursor of `user` in `room`.
    pub fn pending(&self, user: UserId, room: RoomId) -> Option<Seq> {
        self.pending
            .get(&(user, room))
            .map(|v| v.load(Ordering::Acquire))
    }

    /// Writes every pending cursor; entries that moved meanwhile stay for the next flush.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, store::StoreError> {
        Ok(self.flush_users(store).await? + self.flush_devices(store).await?)
    }

    async fn flush_devices(&self, store: &dyn Store) -> Result<usize, store::StoreError> {
        let updates: Vec<(UserId, Arc<str>, RoomId, Seq)> = self
            .devices
            .iter()
            .map(|e| {
                let (user, device, room) = e.key();
                (
                    *user,
                    device.clone(),
                    *room,
                    e.value().load(Ordering::Acquire),
                )
            })
            .collect();
        if updates.is_empty() {
            return Ok(0);
        }
        let rows: Vec<store::DeviceCursor<'_>> = updates
            .iter()
            .map(|(user, device, room, seq)| (*user, &**device, *room, *seq))
            .collect();
        store.advance_device_cursors(&rows).await?;
        for (user, device, room, seq) in updates.iter().cloned() {
            self.devices.remove_if(&(user, device, room), |_, v| {
                v.load(Ordering::Acquire) == seq
            });
        }
        Ok(updates.len())
    }

    async fn flush_users(&self, store: &dyn Store) -> Result<usize, store::StoreError> {
        let updates: Vec<(UserId, RoomId, Seq)> = self
            .pending
            .iter()
            .map(|e| (e.key().0, e.key().1, e.value().load(Ordering::Acquire)))
            .collect();
        if updates.is_empty() {
            return Ok(0);
        }
        store.advance_cursors(&updates).await?;
        for (user, room, seq) in &updates {
            // Under the shard's write lock: no advance slips in between the check and the removal.
            self.pending
                .remove_if(&(*user, *room), |_, v| v.load(Ordering::Acquire) == *seq);
        }
        Ok(updates.len())
    }

    /// Flushes every `interval` until `stop`, then once more.
    pub async fn run_flusher(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush(store.as_ref()).await {
                        tracing::warn!(error = %e, "cursor flush failed; will retry");
                    }
                }
            }
        }
        if let Err(e) = self.flush(store.as_ref()).await {
            tracing::error!(error = %e, "final cursor flush failed; clients may get repeats");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward() {
        let b = CursorBook::default();
        b.advance(1, 2, 5);
        b.advance(1, 2, 3);
        assert_eq!(b.pending(1, 2), Some(5));
        b.advance(1, 2, 9);
        assert_eq!(b.pending(1, 2), Some(9));
        assert_eq!(b.pending(2, 2), None);
    }

    #[test]
    fn a_named_device_has_a_cursor_of_its_own() {
        let b = CursorBook::default();
        let phone: Arc<str> = "phone".into();
        let laptop: Arc<str> = "laptop".into();
        b.advance_for(1, Some(&phone), 2, 7);
        b.advance_for(1, Some(&phone), 2, 4);
        b.advance_for(1, None, 2, 3);
        assert_eq!(b.pending_for(1, Some(&phone), 2), Some(7));
        assert_eq!(b.pending_for(1, Some(&laptop), 2), None);
        assert_eq!(b.pending_for(1, None, 2), Some(3));
        assert_eq!(
            b.pending(1, 2),
            Some(3),
            "the default device is the user's cursor"
        );
    }
}
