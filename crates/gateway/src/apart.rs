//! Two futures in one task, each polled only when its own waker fired.
//!
//! A connection's reader and writer share one task (a second task per connection costs memory
//! and a wake-up hop). `tokio::join!` hands both the task's waker, so every frame queued for the
//! writer also polls the reader: the socket's read readiness, the split stream's lock and the
//! close signal, for nothing. Here each branch gets a waker of its own that marks it and wakes the
//! task; a poll of the task polls the marked branches only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

const FIRST: u8 = 1;
const SECOND: u8 = 2;

/// One branch's waker: marks the branch, then wakes the task (whose waker it holds: a task's
/// waker does not change between polls, so waking costs no clone and no lock).
#[derive(Debug)]
struct Branch {
    woken: Arc<AtomicU8>,
    bit: u8,
    task: Waker,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_or(self.bit, Ordering::AcqRel);
        self.task.wake_by_ref();
    }
}

/// Both branches' wakers, made for one task's waker.
struct Wakers {
    task: Waker,
    first: Waker,
    second: Waker,
}

impl Wakers {
    fn new(woken: &Arc<AtomicU8>, task: &Waker) -> Self {
        let branch = |bit| {
            Waker::from(Arc::new(Branch {
                woken: woken.clone(),
                bit,
                task: task.clone(),
            }))
        };
        Self {
            task: task.clone(),
            first: branch(FIRST),
            second: branch(SECOND),
        }
    }
}

pin_project_lite::pin_project! {
    /// `first` and `second` run to completion in the calling task, each polled only after its
    /// own waker fired (both once at the start, and both again should the task's waker ever
    /// change, so that each registers the new one). A struct rather than an async fn: an async
    /// fn would keep its arguments' slots beside the pinned futures, twice a connection's
    /// reader and writer for the connection's whole life.
    pub(crate) struct Join<A, B> {
        #[pin]
        first: A,
        #[pin]
        second: B,
        pending: u8,
        woken: Arc<AtomicU8>,
        wakers: Option<Wakers>,
    }
}

/// Runs `first` and `second` together in the calling task, each polled only when woken for
/// itself.
pub(crate) fn join<A, B>(first: A, second: B) -> Join<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    Join {
        first,
        second,
        pending: FIRST | SECOND,
        woken: Arc::new(AtomicU8::new(FIRST | SECOND)),
        wakers: None,
    }
}

impl<A, B> Future for Join<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let current = match this.wakers {
            Some(w) if w.task.will_wake(cx.waker()) => w,
            _ => {
                this.woken.fetch_or(FIRST | SECOND, Ordering::AcqRel);
                this.wakers.insert(Wakers::new(this.woken, cx.waker()))
            }
        };
        let now = this.woken.swap(0, Ordering::AcqRel) & *this.pending;
        poll_if(now, FIRST, this.first, &current.first, this.pending);
        poll_if(now, SECOND, this.second, &current.second, this.pending);
        if *this.pending == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Polls `branch` with its own waker when `bit` is among the branches woken `now`; clears `bit`
/// from `pending` once it is done.
fn poll_if(
    now: u8,
    bit: u8,
    branch: Pin<&mut impl Future<Output = ()>>,
    waker: &Waker,
    pending: &mut u8,
) {
    if now & bit != 0 && branch.poll(&mut Context::from_waker(waker)).is_ready() {
        *pending &= !bit;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;

    use super::*;

    /// Polls of a future that waits for `notify` `times` times, counted.
    async fn counted(polls: &AtomicUsize, notify: &Notify, times: usize) {
        for _ in 0..times {
            let mut wait = pin!(notify.notified());
            std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                wait.as_mut().poll(cx)
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_branch_is_polled_only_when_its_own_waker_fired() {
        let (quiet_polls, busy_polls) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (quiet, busy) = (Notify::new(), Notify::new());
        let waker_side = async {
            for _ in 0..100 {
                busy.notify_one();
                tokio::task::yield_now().await;
            }
            quiet.notify_one();
        };
        let joined = join(
            counted(&quiet_polls, &quiet, 1),
            counted(&busy_polls, &busy, 100),
        );
        tokio::join!(joined, waker_side);
        // The quiet branch: its first poll, and the one after its only wake.
        assert_eq!(quiet_polls.load(Ordering::Relaxed), 2);
        assert!(busy_polls.load(Ordering::Relaxed) >= 100);
    }

    #[tokio::test]
    async fn both_branches_run_to_completion_whichever_ends_first() {
        let done = AtomicUsize::new(0);
        let notify = Notify::new();
        join(
            async {
                done.fetch_add(1, Ordering::Relaxed);
            },
            async {
                tokio::task::yield_now().await;
                notify.notify_one();
                done.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await;
        assert_eq!(done.load(Ordering::Relaxed), 2);
    }

    /// Counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `joined` once as the task of `waker`.
    fn poll(joined: &mut Pin<&mut impl Future<Output = ()>>, waker: &Waker) -> Poll<()> {
        joined.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_new_task_waker_has_both_branches_polled_again() {
        let (first_polls, second_polls) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (first_notify, second_notify) = (Notify::new(), Notify::new());
        let mut joined = pin!(join(
            counted(&first_polls, &first_notify, 1),
            counted(&second_polls, &second_notify, 1),
        ));
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (waker_a, waker_b) = (Waker::from(a.clone()), Waker::from(b.clone()));
        assert!(poll(&mut joined, &waker_a).is_pending());
        // Polled again by the same task without a wake: neither branch is polled.
        assert!(poll(&mut joined, &waker_a).is_pending());
        assert_eq!(first_polls.load(Ordering::Relaxed), 1);
        // By another waker: both are, so that they register it.
        assert!(poll(&mut joined, &waker_b).is_pending());
        assert_eq!(first_polls.load(Ordering::Relaxed), 2);
        assert_eq!(second_polls.load(Ordering::Relaxed), 2);
        // A branch's wake now reaches the new waker, and only that branch is polled.
        second_notify.notify_one();
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        assert!(poll(&mut joined, &waker_b).is_pending());
        assert_eq!(first_polls.load(Ordering::Relaxed), 2);
        assert_eq!(second_polls.load(Ordering::Relaxed), 3);
        first_notify.notify_one();
        assert!(poll(&mut joined, &waker_b).is_ready());
    }

    #[test]
    fn the_joined_future_holds_each_branch_once() {
        let big = |n: u8| async move {
            let buffer = [n; 2048];
            tokio::task::yield_now().await;
            std::hint::black_box(buffer);
        };
        let (a, b) = (big(1), big(2));
        let branches = std::mem::size_of_val(&a) + std::mem::size_of_val(&b);
        let joined = join(a, b);
        let size = std::mem::size_of_val(&joined);
        assert!(
            size <= branches + 64,
            "{size} bytes for {branches} of branches"
        );
    }
}
