//! [`InFlight`]: the requests of one read to a few replicas, polled
//! together.
//!
//! Why not `FuturesUnordered`: once it has polled every future it holds and
//! all are pending, it wakes its own task and returns `Pending` (a yield, so
//! that one stream cannot starve an executor). A read holds one to N
//! requests, so that happened on every poll of a read: tokio reschedules a
//! task that woke itself as a yield and wakes another worker to steal it,
//! one more thread wake-up and context switch per read (measured on the
//! replication bench: about 2 switches per R=1 read against 1 for plain
//! fred; `perf` put half of the client's wake-ups in that reschedule). Here
//! every poll polls each request (a replica count of them at most), and
//! only the requests' own wake-ups wake the task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

/// A few futures polled together; yields their outputs as they complete
/// (see the module docs). Each is polled on every poll of the set, so it is
/// meant for a handful (one per replica), not for many.
pub(super) struct InFlight<F> {
    futures: Vec<Pin<Box<F>>>,
}

impl<F: Future> InFlight<F> {
    pub(super) fn new() -> InFlight<F> {
        InFlight {
            futures: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, future: F) {
        self.futures.push(Box::pin(future));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }
}

impl<F: Future> Stream for InFlight<F> {
    type Item = F::Output;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        if self.futures.is_empty() {
            return Poll::Ready(None);
        }
        let futures = &mut self.futures;
        for index in 0..futures.len() {
            if let Poll::Ready(output) = futures[index].as_mut().poll(cx) {
                // Order among the rest does not matter: each is polled every
                // time.
                drop(futures.swap_remove(index));
                return Poll::Ready(Some(output));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What this type is for: polling pending futures does not wake the
    /// task (`FuturesUnordered` does, when it has polled them all), and
    /// outputs come as the futures complete, then `None`.
    #[test]
    fn pending_futures_do_not_wake_the_task_and_outputs_come_in_completion_order() {
        let waker_count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(waker_count.clone());
        let mut cx = Context::from_waker(&waker);
        let (first_tx, first_rx) = futures::channel::oneshot::channel::<u32>();
        let (second_tx, second_rx) = futures::channel::oneshot::channel::<u32>();
        let mut set = InFlight::new();
        set.push(first_rx);
        set.push(second_rx);
        assert!(set.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(waker_count.0.load(Ordering::Relaxed), 0, "no self-wake");
        second_tx.send(2).unwrap();
        assert_eq!(
            waker_count.0.load(Ordering::Relaxed),
            1,
            "the request's own wake"
        );
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(Ok(2))));
        assert!(set.poll_next_unpin(&mut cx).is_pending());
        first_tx.send(1).unwrap();
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(Ok(1))));
        assert!(set.is_empty());
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(None));

        // The behaviour this replaces, for the record.
        let waker_count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(waker_count.clone());
        let mut cx = Context::from_waker(&waker);
        let (_tx, rx) = futures::channel::oneshot::channel::<u32>();
        let mut unordered = futures::stream::FuturesUnordered::new();
        unordered.push(rx);
        assert!(unordered.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(
            waker_count.0.load(Ordering::Relaxed),
            1,
            "FuturesUnordered wakes its own task"
        );
    }
}
