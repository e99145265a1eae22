//! Graceful shutdown ([`Coordinator::shutdown`]): refuse new work, let the
//! writes past W land, hand the hints over, stop the background task and
//! any anti-entropy pass (which gives its lease back), all within a
//! deadline, and report what was left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::core::health::Health;
use crate::error::Error;

use super::Coordinator;

/// What [`Coordinator::shutdown`] could not finish before its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Writes still running in the background (past W, or not yet
    /// answered): they may still land, or be found by anti-entropy later.
    pub background_writes_left: usize,
    /// Hints not replayed: their replicas are Down, or the deadline passed.
    /// Anti-entropy (of another app server) brings those replicas level.
    pub hints_left: u64,
    /// An anti-entropy pass was still running: its lease expires by itself
    /// after `lease_ttl`.
    pub anti_entropy_running: bool,
}

impl ShutdownReport {
    /// True when nothing was left.
    pub fn is_complete(&self) -> bool {
        *self == ShutdownReport::default()
    }
}

/// The shutdown flag and the count of writes in flight.
pub(crate) struct Lifecycle {
    closing: AtomicBool,
    /// Tells the background task to stop.
    stop: watch::Sender<bool>,
    writes_in_flight: Arc<WritesInFlight>,
}

#[derive(Default)]
struct WritesInFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one write (and its background rest) as in flight until dropped.
pub(crate) struct WriteGuard(Arc<WritesInFlight>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            closing: AtomicBool::new(false),
            stop: watch::channel(false).0,
            writes_in_flight: Arc::default(),
        }
    }
}

impl Lifecycle {
    pub(crate) fn write_started(&self) -> WriteGuard {
        // SeqCst with `closing` (a store-load pair on both sides): a write
        // counted after shutdown read the count sees `closing`.
        self.writes_in_flight.count.fetch_add(1, Ordering::SeqCst);
        WriteGuard(self.writes_in_flight.clone())
    }

    /// Resolves once shutdown has begun (for the background task).
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            // An error means the coordinator is gone: stop as well.
            let _ = stop.wait_for(|&stopped| stopped).await;
        }
    }

    async fn writes_idle(&self) {
        let writes = &self.writes_in_flight;
        loop {
            let notified = writes.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a last write ending in
            // between still wakes this.
            notified.as_mut().enable();
            if writes.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Coordinator {
    /// Stops this coordinator within `deadline`: new reads and writes fail
    /// with [`Error::ShuttingDown`] and [`Coordinator::readiness`] says
    /// [`ShuttingDown`](super::NotReadyReason::ShuttingDown); then it waits for the writes still
    /// running (those answered at W finish on the other replicas in the
    /// background), replays the hints of the replicas that are not Down,
    /// stops the background task and lets a running anti-entropy pass stop
    /// at its next page and give its lease back. What it could not finish
    /// is in the report; nothing is lost by it that a crash would not lose
    /// (anti-entropy repairs both), but a graceful stop leaves less to repair.
    ///
    /// Call it once, on SIGTERM, after the HTTP server stopped taking
    /// requests. Calling it again returns what is left then.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::{sync::Arc, time::Duration};
    /// use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
    /// use quorum_sessions::{ClusterConfig, Coordinator, Error};
    /// let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
    ///     .into_iter()
    ///     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
    ///     .collect();
    /// let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
    /// let report = coordinator.shutdown(Duration::from_secs(5)).await;
    /// assert!(report.is_complete());
    /// assert!(matches!(coordinator.read("s:{demo}").await, Err(Error::ShuttingDown)));
    /// # });
    /// ```
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let lifecycle = &self.inner.lifecycle;
        lifecycle.closing.store(true, Ordering::SeqCst);
        lifecycle.stop.send_replace(true);
        let until = Instant::now() + deadline;
        let _ = tokio::time::timeout_at(until, lifecycle.writes_idle()).await;
        let _ = tokio::time::timeout_at(until, self.replay_all_hints()).await;
        let _ = tokio::time::timeout_at(until, self.anti_entropy_stopped()).await;
        let report = ShutdownReport {
            background_writes_left: lifecycle.writes_in_flight.count.load(Ordering::Acquire),
            hints_left: self.lock().hints.total_len() as u64,
            anti_entropy_running: self.inner.anti_entropy_running.load(Ordering::Acquire),
        };
        if report.is_complete() {
            info!("coordinator shut down");
        } else {
            warn!(?report, "coordinator shut down with work left");
        }
        report
    }

    /// [`Error::ShuttingDown`] once [`shutdown`](Self::shutdown) began.
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.inner.lifecycle.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.inner.lifecycle.closing.load(Ordering::Acquire)
    }

    /// Replays hints until none is left for a replica that is not Down
    /// (the batches are rate-limited: one per `handoff_interval`).
    async fn replay_all_hints(&self) {
        loop {
            self.replay_hints().await;
            let waiting = {
                let state = self.lock();
                (0..self.replica_count())
                    .any(|i| state.health.health(i) != Health::Down && !state.hints.is_empty(i))
            };
            if !waiting {
                return;
            }
            tokio::time::sleep(self.config().handoff_interval).await;
        }
    }

    async fn anti_entropy_stopped(&self) {
        // The pass checks `is_closing` between pages; a few ms apart is
        // enough to see it end.
        while self.inner.anti_entropy_running.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
