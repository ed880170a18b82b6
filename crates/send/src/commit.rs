//! Group commit: one task takes every send waiting in its queue (up to `commit_batch`), stores them
//! in one transaction, answers each handler, then passes the stored messages to fan-out in commit
//! order. One fsync serves the whole batch, so durability costs little under load, and per-room
//! order on the push path follows `seq`.
//!
//! Commits are serial, so under load the senders split into two groups taking turns: those
//! answered by one commit come back while the next one (holding the others) is on disk, and
//! each commit carries half of them. The committer therefore waits, at most `commit_linger_us`
//! after a commit, until as many sends are queued as it just answered plus those that were
//! already waiting; the groups merge and each fsync serves all of them. A sender that does not
//! come back costs one wait, after which the expectation is what did come; a send arriving later
//! than the linger after the last commit (light load) is never held.
//!
//! Where group changes may not be in the database yet (the write-back cache), the committer checks
//! each sender's membership against the current group data first (one version round trip per
//! batch) and the transaction skips its own check.

use std::sync::Arc;
use std::time::Duration;

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

/// How the committer forms its batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most messages in one transaction.
    pub batch: usize,
    /// Sends waiting for the committer before handlers wait (backpressure).
    pub queue: usize,
    /// Longest wait after a commit for the senders it answered (see the module docs); zero
    /// commits whatever is queued at once.
    pub linger: Duration,
}

/// Takes the next batch into `jobs`: waits for the first send, takes what is queued, then, while
/// fewer than `expect` and until `until`, what arrives. 0 once the queue is closed and drained.
async fn gather(
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    batch: usize,
    expect: usize,
    until: tokio::time::Instant,
) -> usize {
    if rx.recv_many(jobs, batch).await == 0 {
        return 0;
    }
    while jobs.len() < expect.min(batch) {
        let more = tokio::time::timeout_at(until, rx.recv_many(jobs, batch - jobs.len())).await;
        if !matches!(more, Ok(n) if n > 0) {
            break;
        }
    }
    jobs.len()
}

/// Starts the committer. It stops once every [`CommitHandle`] is dropped and its queue is drained;
/// the returned task ends after the last batch was stored and handed to `fanout`.
pub fn spawn(
    store: Arc<dyn Store>,
    groups: CachedGroups,
    batching: Batching,
    fanout: mpsc::Sender<Arc<PushMessage>>,
) -> (CommitHandle, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(batching.queue.max(1));
    let resend = fanout.clone();
    let batch = batching.batch.max(1);
    let task = tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(batch);
        // Sends the next batch may expect, and until when it waits for them.
        let mut expect = 0;
        let mut until = tokio::time::Instant::now();
        while gather(&mut rx, &mut jobs, batch, expect, until).await > 0 {
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
                    expect = replies.len() + rx.len();
                    until = tokio::time::Instant::now() + batching.linger;
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
                    // Failed sends are retried by their clients, if ever: nothing to wait for.
                    expect = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::MessageType;

    fn job(id: i64) -> Job {
        Job {
            message: NewMessage {
                id,
                room_id: 1,
                sender_id: 1,
                msg_type: MessageType::Text,
                content: "m".into(),
                client_msg_id: None,
                created_at_ms: 1,
            },
            reply: oneshot::channel().0,
        }
    }

    async fn queued(n: i64) -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(64);
        for id in 0..n {
            tx.send(job(id)).await.expect("queue");
        }
        (tx, rx)
    }

    fn ids(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().map(|j| j.message.id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_expected_a_batch_is_what_is_queued() {
        let (_tx, mut rx) = queued(3).await;
        let mut jobs = Vec::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(gather(&mut rx, &mut jobs, 8, 0, far).await, 3);
        assert_eq!(ids(&jobs), vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_the_sends_it_expects() {
        let (tx, mut rx) = queued(1).await;
        let later = tokio::spawn(async move {
            for id in 1..3 {
                tx.send(job(id)).await.expect("queue");
            }
            tx
        });
        let mut jobs = Vec::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(gather(&mut rx, &mut jobs, 8, 3, far).await, 3);
        assert_eq!(ids(&jobs), vec![0, 1, 2]);
        drop(later.await.expect("sender"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_stops_waiting_at_the_linger_deadline() {
        let (_tx, mut rx) = queued(2).await;
        let mut jobs = Vec::new();
        let soon = tokio::time::Instant::now() + Duration::from_millis(1);
        assert_eq!(gather(&mut rx, &mut jobs, 8, 5, soon).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_never_exceeds_its_limit() {
        let (_tx, mut rx) = queued(6).await;
        let mut jobs = Vec::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(gather(&mut rx, &mut jobs, 4, 10, far).await, 4);
        jobs.clear();
        assert_eq!(gather(&mut rx, &mut jobs, 4, 0, far).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_ends_the_wait_then_the_committer() {
        let (tx, mut rx) = queued(2).await;
        drop(tx);
        let mut jobs = Vec::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(gather(&mut rx, &mut jobs, 8, 5, far).await, 2);
        jobs.clear();
        assert_eq!(gather(&mut rx, &mut jobs, 8, 5, far).await, 0);
    }
}
