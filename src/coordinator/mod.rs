//! The coordinator: the async driver of the pure decisions.
//!
//! It is the only place with tokio. It sends requests to replicas, feeds
//! their replies to the decisions of the internal `core` module (write
//! tally, read plan, health, epochs, HLC) and runs what they decide; it does
//! no quorum arithmetic itself, so the simulator, which runs this very
//! coordinator, checks the same rules production runs.
//!
//! One file per protocol: `write.rs` ([`Coordinator::write`]), `read.rs`
//! ([`Coordinator::read`]), `read_repair.rs`, `bootstrap.rs`
//! ([`Coordinator::initialize`], [`Coordinator::accept_data_loss`]),
//! `background.rs` (probes, hint replay, when anti-entropy starts),
//! `anti_entropy.rs` ([`Coordinator::anti_entropy`]), `builder.rs`,
//! `stats.rs`, `readiness.rs` ([`Coordinator::readiness`]), `shutdown.rs`
//! ([`Coordinator::shutdown`]), `metrics.rs` (feature `metrics`: names in
//! `docs/metrics.md`). How recovery works and why it is safe: `docs/design.md` and
//! the numbered claims of `docs/epochs.md` in the repository.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::ClusterConfig;
use crate::core::epoch::{EpochChange, EpochTable};
use crate::core::health::HealthTracker;
use crate::core::hints::HintQueues;
use crate::core::ReplicaIndex;
use crate::error::{InvalidInput, ReplicaError, ReplicaFailure};
use crate::replica::{Epoch, Replica};
use crate::stamp::{duration_ms, Hlc, Stamp};

pub(crate) mod anti_entropy;
mod background;
pub(crate) mod bootstrap;
mod builder;
mod in_flight;
mod metrics;
mod read;
mod read_repair;
mod readiness;
mod shutdown;
mod stats;
mod write;

pub use builder::CoordinatorBuilder;
pub use read::ReadOptions;
pub use readiness::{NotReady, NotReadyReason, Readiness};
pub use shutdown::ShutdownReport;
pub use stats::{CoordinatorStats, ReplicaState};
pub use write::{WriteAck, WriteOptions};

use stats::{bump, Counters};

/// Milliseconds since the Unix epoch, from the wall clock. Injectable so
/// tests can skew one coordinator's clock.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`WallClock`].
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, duration_ms)
    })
}

pub(crate) struct CoreState {
    pub(crate) clock: Hlc,
    pub(crate) health: HealthTracker,
    pub(crate) epochs: EpochTable,
    pub(crate) hints: HintQueues,
    /// Recent read latencies per replica (the hedge delay).
    pub(crate) latency: Vec<crate::core::latency::LatencyWindow>,
}

pub(crate) struct Inner {
    pub(crate) replicas: Vec<Arc<dyn Replica>>,
    pub(crate) config: ClusterConfig,
    state: Mutex<CoreState>,
    pub(crate) counters: Counters,
    wall_clock: WallClock,
    started: Instant,
    /// True while an anti-entropy pass runs in this coordinator.
    pub(crate) anti_entropy_running: std::sync::atomic::AtomicBool,
    /// This coordinator's id as the holder of the anti-entropy lease.
    pub(crate) lease_owner: u64,
    /// Monotonic ms before which no rejoin-triggered pass starts (set after a
    /// pass that could not refill anything; scheduled passes also use it).
    pub(crate) anti_entropy_not_before_ms: AtomicU64,
    /// Monotonic ms of the next scheduled pass (with an `interval`).
    pub(crate) anti_entropy_next_scheduled_ms: AtomicU64,
    /// Shutdown flag and writes in flight.
    pub(crate) lifecycle: shutdown::Lifecycle,
}

/// Replicates records over N replicas with quorum writes and reads. Cheap to
/// clone (an `Arc` inside).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use quorum_sessions::{ClusterConfig, Coordinator, Mutation};
/// use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
///
/// let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
///     .into_iter()
///     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
///     .collect();
/// let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
/// let now = coordinator.now_ms();
/// coordinator
///     .write("s:{demo}", Mutation::create(now + 60_000, now + 3_600_000).set("user", "alice"))
///     .await
///     .unwrap();
/// let record = coordinator.read("s:{demo}").await.unwrap().unwrap();
/// assert_eq!(record.get("user"), Some(&b"alice"[..]));
/// # });
/// ```
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("replicas", &self.inner.replicas.len())
            .field("write_quorum", &self.inner.config.write_quorum)
            .field("read_quorum", &self.inner.config.read_quorum)
            .finish()
    }
}

impl Coordinator {
    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The wall clock's time, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.inner.wall_clock)()
    }

    /// Number of replicas (N).
    pub fn replica_count(&self) -> usize {
        self.inner.replicas.len()
    }

    /// The replicas, in configured order.
    pub fn replicas(&self) -> &[Arc<dyn Replica>] {
        &self.inner.replicas
    }

    /// `request` on every replica at once, each under [`Coordinator::call`]
    /// (deadline, health): the answers in replica order.
    pub(crate) async fn on_every_replica<T, F, Fut>(
        &self,
        request: F,
    ) -> Vec<Result<T, ReplicaError>>
    where
        F: Fn(Arc<dyn Replica>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ReplicaError>>,
    {
        let calls = self
            .inner
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let call = request(replica.clone());
                async move { self.call(index, call).await }
            });
        futures::future::join_all(calls).await
    }

    /// Runs one replica call under `request_timeout`, and feeds the result to
    /// the health tracker.
    pub(crate) async fn call<T>(
        &self,
        index: ReplicaIndex,
        request: impl std::future::Future<Output = Result<T, ReplicaError>>,
    ) -> Result<T, ReplicaError> {
        let timeout = self.inner.config.request_timeout;
        let sent = metrics::start();
        let result = match tokio::time::timeout(timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(ReplicaError::Timeout { after: timeout }),
        };
        metrics::replica_request(self.inner.replicas[index].name(), sent);
        self.note_health(index, result.as_ref().map(|_| ()));
        result
    }

    /// Feeds the outcome of one request to replica `index` to the health
    /// tracker and the failure counter.
    pub(crate) fn note_health(&self, index: ReplicaIndex, result: Result<(), &ReplicaError>) {
        let now_ms = self.monotonic_ms();
        let replica = self.inner.replicas[index].name();
        let mut state = self.lock();
        match result {
            Ok(()) => {
                let was_down = state.health.is_down(index);
                state.health.on_success(index);
                if was_down {
                    metrics::health_transition(replica, "up");
                }
            }
            Err(error) => {
                bump(&self.inner.counters.replica_failures);
                metrics::replica_counter(metrics::REPLICA_FAILURES, replica, 1);
                if error.is_health_failure() && state.health.on_failure(index, now_ms) {
                    metrics::health_transition(replica, "down");
                    warn!(replica, "replica marked down");
                }
            }
        }
    }

    pub(crate) fn observe_epoch(&self, index: ReplicaIndex, epoch: Epoch) {
        let change = self.lock().epochs.observe(index, epoch);
        match change {
            EpochChange::Changed => {
                bump(&self.inner.counters.epochs_changed);
                metrics::replica_counter(
                    metrics::EPOCH_CHANGES,
                    self.inner.replicas[index].name(),
                    1,
                );
                warn!(
                    replica = self.inner.replicas[index].name(),
                    "replica epoch changed: write-only until refilled"
                );
            }
            EpochChange::Stale => {
                let replica = self.inner.replicas[index].name();
                metrics::replica_counter(metrics::STALE_EPOCH_REPLIES, replica, 1);
                debug!(
                    replica,
                    epoch = format_args!("{:016x}", epoch.id),
                    "late reply of a replaced epoch: ignored"
                );
            }
            EpochChange::Same | EpochChange::First => {}
        }
    }

    pub(crate) fn observe_stamp(&self, stamp: Stamp) {
        let now_ms = self.now_ms();
        if let Err(skew) = self.lock().clock.observe(stamp, now_ms) {
            metrics::counter(metrics::CLOCK_SKEW_REFUSALS, 1);
            warn!(
                ahead_ms = skew.ahead_ms,
                "stamp refused: too far ahead of the local clock"
            );
        }
    }

    fn failure(&self, index: ReplicaIndex, error: ReplicaError) -> ReplicaFailure {
        debug!(
            replica = self.inner.replicas[index].name(),
            kind = error.kind(),
            "replica failure"
        );
        ReplicaFailure {
            replica: self.inner.replicas[index].name().to_owned(),
            error,
        }
    }

    fn check_key(&self, key: &str) -> Result<(), InvalidInput> {
        let limit = self.inner.config.limits.max_key_bytes;
        if key.is_empty() || key.len() > limit {
            return Err(InvalidInput::Key(format!(
                "length {} not in 1..={limit}",
                key.len()
            )));
        }
        if key
            .bytes()
            .any(|b| !b.is_ascii_graphic() || matches!(b, b'*' | b'?' | b'[' | b']' | b'\\'))
        {
            return Err(InvalidInput::Key(
                "only printable ASCII without glob characters".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn monotonic_ms(&self) -> u64 {
        duration_ms(self.inner.started.elapsed())
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, CoreState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A key shortened for logs: never a full session id.
pub fn redact(key: &str) -> String {
    Redacted(key).to_string()
}

/// [`redact`] done when formatted: a span field costs nothing unless a
/// subscriber records it.
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(8) {
            Some((cut, _)) => write!(f, "{}…", &self.0[..cut]),
            None => f.write_str(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn keys_in_logs_keep_eight_characters() {
        assert_eq!(redact("s:0123456789abcdef"), "s:012345…");
        assert_eq!(redact("s:é1234567"), "s:é12345…", "characters, not bytes");
        assert_eq!(redact("s:short"), "s:short");
        assert_eq!(redact("12345678"), "12345678");
    }
}
