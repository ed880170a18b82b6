//! Group commit: one task takes every send waiting in its queue (up to `commit_batch`), stores them
//! in one transaction, answers each handler, then passes the stored messages to fan-out in commit
//! order. One fsync serves the whole batch, so durability costs little under load, and per-room
//! order on the push path follows `seq`.
//!
//! Where group changes may not be in the database yet (the write-back cache), the committer checks
//! each sender's membership against the current group data first (one version round trip per
//! batch) and the transaction skips its own check.

use std::sync::Arc;

use groups::CachedGroups;
use kit::ApiError;
use proto::api::Access;
use proto::error::ErrorCode;
use proto::stream::PushMessage;
use store::{Appended, MemberCheck, NewMessage, Rejected, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

type Outcome = Result<Result<Appended, Rejected>, ApiError>;

struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Outcome>,
}

/// Submits messages to the committer.
#[derive(Clone)]
pub struct CommitHandle {
    tx: mpsc::Sender<Job>,
    fanout: mpsc::Sender<Arc<PushMessage>>,
}

impl CommitHandle {
    /// Stores `message` (waiting while the queue is full) and returns what became of it.
    pub async fn append(&self, message: NewMessage) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { message, reply })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Fans an already stored message out again (it keeps its id and `seq`).
    pub async fn resend(&self, message: Arc<PushMessage>) -> Result<(), ApiError> {
        self.fanout.send(message).await.map_err(|_| shutting_down())
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorCode::ShuttingDown,
        "the service is shutting down; retry",
    )
}

fn push_message(m: &store::Message) -> Arc<PushMessage> {
    Arc::new(m.clone().into())
}

/// Starts the committer. It stops once every [`CommitHandle`] is dropped and its queue is drained;
/// the returned task ends after the last batch was stored and handed to `fanout`.
pub fn spawn(
    store: Arc<dyn Store>,
    groups: CachedGroups,
    batch: usize,
    queue: usize,
    fanout: mpsc::Sender<Arc<PushMessage>>,
) -> (CommitHandle, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
    let resend = fanout.clone();
    let batch = batch.max(1);
    let task = tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(batch);
        while rx.recv_many(&mut jobs, batch).await > 0 {
            metrics::gauge!("ruststacker_send_queue_length", "queue" => "commit")
                .set(rx.len() as f64);
            let (messages, replies): (Vec<NewMessage>, Vec<_>) =
                jobs.drain(..).map(|j| (j.message, j.reply)).unzip();
            metrics::histogram!("ruststacker_send_commit_batch_size").record(messages.len() as f64);
            let started = std::time::Instant::now();
            let span = tracing::debug_span!("commit", messages = messages.len());
            match append(&*store, &groups, &messages)
                .instrument(span.clone())
                .await
            {
                Ok(results) => {
                    metrics::histogram!("ruststacker_send_commit_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let stored: Vec<Arc<PushMessage>> = results
                        .iter()
                        .filter_map(|r| match r {
                            Ok(Appended::Stored(m)) => Some(push_message(m)),
                            _ => None,
                        })
                        .collect();
                    metrics::counter!("ruststacker_messages_stored_total")
                        .increment(stored.len() as u64);
                    span.in_scope(|| {
                        for m in &stored {
                            tracing::debug!(
                                message_id = m.id,
                                room_id = m.room_id,
                                seq = m.seq,
                                sender_id = m.sender_id,
                                "message stored"
                            );
                        }
                    });
                    for (reply, result) in replies.into_iter().zip(results) {
                        // A handler that gave up (client went away) does not undo the store.
                        let _ = reply.send(Ok(result));
                    }
                    for m in stored {
                        if fanout.send(m).await.is_err() {
                            tracing::error!("fan-out stopped; stored messages wait for resync");
                        }
                    }
                }
                Err(e) => {
                    span.in_scope(|| tracing::warn!(error = %e, "batch not stored"));
                    let err = crate::db(e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    });
    (CommitHandle { tx, fanout: resend }, task)
}

/// Appends `batch`, checking membership where the group data says it must be checked.
async fn append(
    store: &dyn Store,
    groups: &CachedGroups,
    batch: &[NewMessage],
) -> store::Result<Vec<Result<Appended, Rejected>>> {
    use groups::Groups;
    if groups.member_check() == MemberCheck::InTransaction {
        return store.append(batch, MemberCheck::InTransaction).await;
    }
    let rooms: Vec<_> = batch.iter().map(|m| m.room_id).collect();
    let current = groups.current(&rooms).await?;
    let mut out: Vec<Option<Result<Appended, Rejected>>> = Vec::with_capacity(batch.len());
    let mut allowed = Vec::with_capacity(batch.len());
    for m in batch {
        let room = current.get(&m.room_id).and_then(|r| r.as_deref());
        match groups::access(room, m.sender_id) {
            Access::NoRoom => out.push(Some(Err(Rejected::RoomNotFound))),
            Access::NotMember => out.push(Some(Err(Rejected::NotMember))),
            Access::Member(_) => {
                out.push(None);
                allowed.push(m.clone());
            }
        }
    }
    let mut stored = if allowed.is_empty() {
        Vec::new().into_iter()
    } else {
        store
            .append(&allowed, MemberCheck::ByCaller)
            .await?
            .into_iter()
    };
    Ok(out
        .into_iter()
        .map(|r| match r {
            Some(rejected) => rejected,
            None => stored.next().unwrap_or(Err(Rejected::RoomNotFound)),
        })
        .collect())
}
