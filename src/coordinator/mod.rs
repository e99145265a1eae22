//! The coordinator: the async driver of the pure core.
//!
//! It is the only place with tokio. It sends requests to replicas, feeds their
//! replies to the core ([`WriteTally`], [`ReadPlan`], [`HealthTracker`],
//! [`EpochTable`], [`Hlc`]), and runs the decided actions. It does no quorum
//! arithmetic itself.
//!
//! ```text
//! write(key, mutation)                       read(key)
//!   validate ─► stamp (HLC tick)               read_order (health, epochs, per-key rotation)
//!   spawn one merge per replica not Down       ReadPlan: ask R ─► answers / failures / hedge timer
//!   WriteTally: answer at W acks               merged record ─► read-repair of differing replicas
//!   the rest finish in the background          Found / NotFound (proved) / Unavailable
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use crate::config::{ClusterConfig, ReadRepair};
use crate::core::epoch::{EpochChange, EpochTable};
use crate::core::health::{Health, HealthTracker};
use crate::core::hints::{HintPush, HintQueues};
use crate::core::quorum::{WriteOutcome, WriteReply, WriteTally};
use crate::core::read::{read_order, Absence, ReadDecision, ReadPlan, ReadResult};
use crate::core::ReplicaIndex;
use crate::error::{ConfigError, Error, InvalidInput, ReplicaError, ReplicaFailure, Result};
use crate::mutation::{Mutation, MutationKind};
use crate::record::Record;
use crate::replica::{Epoch, MergeMode, MergeReply, MergeStatus, ReadReply, Replica};
use crate::stamp::{duration_ms, Hlc, Stamp, WRITER_MAX};

pub(crate) mod anti_entropy;

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

/// What a successful write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAck {
    /// The stamp every entry of the write carries.
    pub stamp: Stamp,
    /// Acknowledgements when the write returned (at least W).
    pub acked: usize,
}

/// Counters of what the coordinator did, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Writes that reached W.
    pub writes_acknowledged: u64,
    /// Writes that failed to reach W.
    pub writes_failed: u64,
    /// Reads that found a record or proved it absent.
    pub reads_conclusive: u64,
    /// Reads that ended `Unavailable`.
    pub reads_unavailable: u64,
    /// Replica answers that could not count as misses (incomplete epoch).
    pub inconclusive_misses: u64,
    /// Read-repair writes sent.
    pub read_repairs: u64,
    /// Epoch changes seen (a replica restarted empty, failed over, restored).
    pub epochs_changed: u64,
    /// Stamps refused for being further ahead than `max_clock_skew`.
    pub clock_skew_rejections: u64,
    /// Requests to replicas that failed or timed out.
    pub replica_failures: u64,
    /// Missed writes queued as hints (coalesced ones included).
    pub hints_queued: u64,
    /// Hints handed out for replay.
    pub hints_replayed: u64,
    /// Hints dropped (queue overflow or age): anti-entropy covers them.
    pub hints_dropped: u64,
    /// Hints waiting, all replicas together.
    pub hints_pending: u64,
    /// Anti-entropy passes finished.
    pub anti_entropy_passes: u64,
    /// Records sent by anti-entropy passes.
    pub anti_entropy_records_sent: u64,
    /// Passes not run or stopped because this coordinator could not hold
    /// the anti-entropy lease on a majority of the replicas (another app
    /// server runs a pass, or too few replicas answered).
    pub anti_entropy_lease_refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    writes_acknowledged: AtomicU64,
    writes_failed: AtomicU64,
    reads_conclusive: AtomicU64,
    reads_unavailable: AtomicU64,
    inconclusive_misses: AtomicU64,
    read_repairs: AtomicU64,
    epochs_changed: AtomicU64,
    replica_failures: AtomicU64,
    pub(crate) anti_entropy_passes: AtomicU64,
    pub(crate) anti_entropy_records_sent: AtomicU64,
    pub(crate) anti_entropy_lease_refused: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One replica's state, as reported by [`Coordinator::replica_states`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// The replica's name.
    pub name: String,
    /// Up, Suspect or Down.
    pub health: Health,
    /// The last epoch seen.
    pub epoch: Option<Epoch>,
    /// True when its misses count and it may be read first; false while it
    /// is write-only (new epoch, not yet refilled: "Refilling").
    pub readable: bool,
    /// Hints queued for it.
    pub pending_hints: usize,
    /// Its hint queue dropped hints: only anti-entropy can bring it level.
    pub needs_anti_entropy: bool,
}

pub(crate) struct CoreState {
    pub(crate) clock: Hlc,
    pub(crate) health: HealthTracker,
    pub(crate) epochs: EpochTable,
    pub(crate) hints: HintQueues,
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

/// Builds a [`Coordinator`] with a custom writer id or wall clock.
pub struct CoordinatorBuilder {
    config: ClusterConfig,
    replicas: Vec<Arc<dyn Replica>>,
    writer_id: Option<u64>,
    wall_clock: WallClock,
}

impl CoordinatorBuilder {
    /// The HLC writer id (default: random, 48 bits).
    pub fn writer_id(mut self, writer_id: u64) -> Self {
        self.writer_id = Some(writer_id);
        self
    }

    /// The wall clock (default: the system clock).
    pub fn wall_clock(mut self, wall_clock: WallClock) -> Self {
        self.wall_clock = wall_clock;
        self
    }

    /// Validates the configuration and builds the coordinator, without
    /// contacting any replica (no replica is readable until [`Coordinator::initialize`]
    /// or its first reply).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field and rule broken, including duplicate
    /// replica names and a writer id beyond 48 bits.
    pub fn build(self) -> Result<Coordinator, ConfigError> {
        let n = self.replicas.len();
        self.config.validate(n)?;
        let mut names: Vec<&str> = self.replicas.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::new(
                "replicas",
                format!("duplicate replica name {:?}", pair[0]),
            ));
        }
        let writer_id = self
            .writer_id
            .unwrap_or_else(|| rand::random::<u64>() & WRITER_MAX);
        if writer_id > WRITER_MAX {
            return Err(ConfigError::new("writer_id", "must fit in 48 bits"));
        }
        let skew_ms = duration_ms(self.config.max_clock_skew);
        let state = CoreState {
            clock: Hlc::new(writer_id, skew_ms),
            health: HealthTracker::new(n, &self.config.health),
            epochs: EpochTable::new(n),
            hints: HintQueues::new(n, self.config.hints.clone()),
        };
        Ok(Coordinator {
            inner: Arc::new(Inner {
                replicas: self.replicas,
                config: self.config,
                state: Mutex::new(state),
                counters: Counters::default(),
                wall_clock: self.wall_clock,
                started: Instant::now(),
                anti_entropy_running: std::sync::atomic::AtomicBool::new(false),
                lease_owner: rand::random(),
                anti_entropy_not_before_ms: AtomicU64::new(0),
            }),
        })
    }

    /// [`build`](Self::build), then [`Coordinator::initialize`], then starts
    /// the background probe task.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as for `build`. Unreachable replicas are not an error.
    pub async fn connect(self) -> Result<Coordinator, ConfigError> {
        let coordinator = self.build()?;
        coordinator.initialize().await;
        coordinator.spawn_probe_task();
        Ok(coordinator)
    }
}

impl Coordinator {
    /// A builder over `replicas` (their order is the configured read order).
    pub fn builder(config: ClusterConfig, replicas: Vec<Arc<dyn Replica>>) -> CoordinatorBuilder {
        CoordinatorBuilder {
            config,
            replicas,
            writer_id: None,
            wall_clock: system_clock(),
        }
    }

    /// Validates, builds, pings every replica, bootstraps a fresh cluster and
    /// starts the health probes. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid configuration. Unreachable replicas are
    /// marked and probed, not an error.
    pub async fn connect(
        config: ClusterConfig,
        replicas: Vec<Arc<dyn Replica>>,
    ) -> Result<Coordinator, ConfigError> {
        Coordinator::builder(config, replicas).connect().await
    }

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

    /// Pings every replica to learn its epoch. When every replica answers,
    /// none is complete and none holds a key, the cluster is new: every epoch
    /// is marked complete (misses count from then on). Returns the number of
    /// replicas that answered.
    pub async fn initialize(&self) -> usize {
        let results = self
            .on_every_replica(|replica| async move { replica.ping().await })
            .await;
        let mut epochs = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            if let Ok(epoch) = result {
                self.observe_epoch(index, epoch);
                epochs.push((index, epoch));
            }
        }
        if epochs.len() == self.replica_count() && epochs.iter().all(|(_, e)| !e.complete) {
            self.bootstrap_fresh_cluster(&epochs).await;
        }
        epochs.len()
    }

    async fn bootstrap_fresh_cluster(&self, epochs: &[(ReplicaIndex, Epoch)]) {
        for &(index, _) in epochs {
            let replica = self.inner.replicas[index].clone();
            match self.call(index, replica.scan("0", 1)).await {
                Ok(page) if page.keys.is_empty() => {}
                _ => return, // holds data, or unknown: refilled by anti-entropy instead
            }
        }
        for &(index, epoch) in epochs {
            let replica = self.inner.replicas[index].clone();
            if let Ok(true) = self
                .call(index, replica.mark_epoch_complete(epoch.id))
                .await
            {
                self.lock().epochs.mark_complete(index, epoch.id);
            }
        }
        tracing::info!(
            replicas = epochs.len(),
            "new cluster: every replica's epoch marked complete"
        );
    }

    /// Each replica's health, epoch and readability.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        let state = self.lock();
        self.inner
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| ReplicaState {
                name: replica.name().to_owned(),
                health: state.health.health(index),
                epoch: state.epochs.current(index),
                readable: state.epochs.is_readable(index),
                pending_hints: state.hints.len(index),
                needs_anti_entropy: state.hints.needs_anti_entropy(index),
            })
            .collect()
    }

    /// Counters since start.
    pub fn stats(&self) -> CoordinatorStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let state = self.lock();
        let hint_stats: Vec<_> = (0..self.replica_count())
            .map(|i| state.hints.stats(i))
            .collect();
        let sum = |f: fn(&crate::core::hints::HintStats) -> u64| hint_stats.iter().map(f).sum();
        CoordinatorStats {
            hints_queued: sum(|h| h.pushed_count),
            hints_replayed: sum(|h| h.replayed_count),
            hints_dropped: sum(|h| h.overflow_dropped_count + h.aged_dropped_count),
            hints_pending: state.hints.total_len() as u64,
            anti_entropy_passes: load(&c.anti_entropy_passes),
            anti_entropy_records_sent: load(&c.anti_entropy_records_sent),
            anti_entropy_lease_refused: load(&c.anti_entropy_lease_refused),
            writes_acknowledged: load(&c.writes_acknowledged),
            writes_failed: load(&c.writes_failed),
            reads_conclusive: load(&c.reads_conclusive),
            reads_unavailable: load(&c.reads_unavailable),
            inconclusive_misses: load(&c.inconclusive_misses),
            read_repairs: load(&c.read_repairs),
            epochs_changed: load(&c.epochs_changed),
            clock_skew_rejections: state.clock.rejected_count(),
            replica_failures: load(&c.replica_failures),
        }
    }

    /// Writes `mutation` to the record under `key`; returns after W
    /// acknowledgements while the other replicas finish in the background
    /// (each bounded by `request_timeout`). Known-down replicas are skipped.
    ///
    /// # Errors
    ///
    /// - [`Error::Invalid`] before any replica is contacted;
    /// - [`Error::QuorumNotReached`] when W can no longer be reached. The
    ///   write may still have reached some replicas and may surface later (as
    ///   in Dynamo); retrying the same mutation is safe;
    /// - [`Error::Gone`] when the record is deleted (delete wins);
    /// - [`Error::Collision`] when a create finds another record.
    pub async fn write(&self, key: &str, mutation: Mutation) -> Result<WriteAck> {
        let now_ms = self.now_ms();
        self.check_key(key)?;
        mutation.validate(&self.inner.config.limits, now_ms)?;
        let mode = match mutation.kind() {
            MutationKind::Create => MergeMode::Create,
            _ => MergeMode::Upsert,
        };
        let stamp = self.lock().clock.tick(now_ms);
        let delta = Arc::new(mutation.into_delta(stamp));
        let span = info_span!("write", key = %redact(key), mode = ?mode);
        let acked = self.write_delta(key, delta, mode).instrument(span).await?;
        Ok(WriteAck { stamp, acked })
    }

    /// Fans a stamped delta out and waits for the write quorum. The merges
    /// are polled here rather than spawned one task each, every one of them
    /// in each round (so all are sent at once, as with tasks); once the
    /// outcome is known, or if the caller drops the write, the ones still
    /// running go on together in one background task, each bounded by
    /// `request_timeout`, and queue a hint if they fail.
    async fn write_delta(&self, key: &str, delta: Arc<Record>, mode: MergeMode) -> Result<usize> {
        let n = self.replica_count();
        let mut tally = WriteTally::new(self.inner.config.write_quorum, n);
        let mut failures = Vec::new();
        let now_ms = self.now_ms();
        let mut outcome = WriteOutcome::Pending;
        let key: Arc<str> = Arc::from(key);
        let mut merges = FinishInBackground(Vec::with_capacity(n));
        for index in 0..n {
            if self.lock().health.is_down(index) {
                self.queue_hint(index, &key, &delta, now_ms);
                failures.push(self.failure(index, ReplicaError::Skipped));
                outcome = tally.record(index, WriteReply::Failed);
                continue;
            }
            let (this, key, delta) = (self.clone(), key.clone(), delta.clone());
            merges.0.push(Some(Box::pin(async move {
                let result = this.merge_on(index, &key, &delta, mode, now_ms).await;
                if result.is_err() {
                    this.queue_hint(index, &key, &delta, now_ms);
                }
                (index, result)
            })));
        }
        while outcome == WriteOutcome::Pending {
            let replies = merges.next_replies().await;
            if replies.is_empty() {
                break; // every merge answered
            }
            for (index, result) in replies {
                let reply = match result {
                    Ok(reply) => match reply.status {
                        MergeStatus::Applied => WriteReply::Applied,
                        MergeStatus::Gone => WriteReply::Gone,
                        MergeStatus::Exists => WriteReply::Exists,
                    },
                    Err(error) => {
                        failures.push(self.failure(index, error));
                        WriteReply::Failed
                    }
                };
                outcome = tally.record(index, reply);
            }
        }
        drop(merges); // the merges still running go on in the background
        self.finish_write(outcome, &tally, failures)
    }

    fn finish_write(
        &self,
        outcome: WriteOutcome,
        tally: &WriteTally,
        failures: Vec<ReplicaFailure>,
    ) -> Result<usize> {
        let counters = &self.inner.counters;
        match outcome {
            WriteOutcome::Reached => {
                bump(&counters.writes_acknowledged);
                Ok(tally.acked_count())
            }
            WriteOutcome::Gone => Err(Error::Gone),
            WriteOutcome::Collision => Err(Error::Collision),
            WriteOutcome::Failed | WriteOutcome::Pending => {
                bump(&counters.writes_failed);
                warn!(
                    acked = tally.acked_count(),
                    needed = tally.needed(),
                    "write quorum not reached"
                );
                Err(Error::QuorumNotReached {
                    needed: tally.needed(),
                    acked: tally.acked_count(),
                    failures,
                })
            }
        }
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

    /// One merge on one replica, with its deadline; the reply's facts (epoch,
    /// held stamps, health) are fed to the core whoever is still waiting.
    pub(crate) async fn merge_on(
        &self,
        index: ReplicaIndex,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        let replica = self.inner.replicas[index].clone();
        let reply = self
            .call(index, replica.merge(key, delta, mode, now_ms))
            .await?;
        self.observe_epoch(index, reply.epoch);
        if let Some(held) = reply.held_max {
            self.observe_stamp(held);
        }
        debug!(replica = replica.name(), status = ?reply.status, "merge reply");
        Ok(reply)
    }

    /// Reads the record under `key`: `Some` when found, `None` when provably
    /// absent, deleted or expired.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when too few replicas answered, or when the
    /// misses that came back do not prove the record absent (never read
    /// this as "not found"); [`Error::Invalid`] for a malformed key.
    pub async fn read(&self, key: &str) -> Result<Option<Record>> {
        self.check_key(key)?;
        let span = info_span!("read", key = %redact(key));
        self.read_inner(key).instrument(span).await
    }

    async fn read_inner(&self, key: &str) -> Result<Option<Record>> {
        let config = &self.inner.config;
        let now_ms = self.now_ms();
        let candidates = {
            let state = self.lock();
            let states: Vec<(Health, bool)> = (0..self.replica_count())
                .map(|i| (state.health.health(i), state.epochs.is_readable(i)))
                .collect();
            read_order(key, &states, config.read_order)
        };
        let misses_needed = config.misses_for_absence(self.replica_count());
        let mut plan = ReadPlan::new(candidates, config.read_quorum, misses_needed, now_ms);
        let mut failures = Vec::new();
        let mut corrupt = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut hedge = config
            .hedge_delay
            .map(|delay| Box::pin(tokio::time::sleep(delay)));
        let mut decision = plan.start();
        let result = loop {
            match decision {
                ReadDecision::Done(result) => break result,
                ReadDecision::Ask(indexes) => {
                    for index in indexes {
                        let (this, key) = (self.clone(), key.to_owned());
                        in_flight.push(async move { this.read_on(index, &key).await });
                    }
                    if let (Some(timer), Some(delay)) = (hedge.as_mut(), config.hedge_delay) {
                        timer.as_mut().reset(Instant::now() + delay);
                    }
                }
                ReadDecision::Wait => {}
            }
            decision = tokio::select! {
                biased;
                Some((index, result)) = in_flight.next() => match result {
                    Ok((reply, counts_as_miss)) => plan.on_answer(index, reply.record, counts_as_miss),
                    Err(error) => {
                        if matches!(error, ReplicaError::Corrupt { .. }) {
                            corrupt.push(index);
                        }
                        failures.push(self.failure(index, error));
                        plan.on_failure(index)
                    }
                },
                () = async { hedge.as_mut().expect("guarded").await }, if hedge.is_some() => {
                    hedge = None; // re-armed when the plan asks again
                    let next = plan.on_hedge();
                    if matches!(next, ReadDecision::Ask(_)) {
                        hedge = config.hedge_delay.map(|delay| Box::pin(tokio::time::sleep(delay)));
                    }
                    next
                }
            };
        };
        if !in_flight.is_empty() {
            self.repair_late_answers(key, plan.merged(), &result, in_flight);
        }
        self.after_read(key, &plan, result, failures, corrupt).await
    }

    /// Answers still in flight when a read concluded (a tombstone is final on
    /// its own, hedged requests) are collected in the background, and those
    /// that differ from the merged record are read-repaired too.
    fn repair_late_answers<F>(
        &self,
        key: &str,
        merged: Option<Record>,
        result: &ReadResult,
        mut in_flight: FuturesUnordered<F>,
    ) where
        F: std::future::Future<Output = (ReplicaIndex, Result<(ReadReply, bool), ReplicaError>)>
            + Send
            + 'static,
    {
        let repairable = matches!(
            result,
            ReadResult::Found(_) | ReadResult::NotFound(Absence::Deleted)
        );
        let Some(merged) =
            merged.filter(|_| repairable && self.inner.config.read_repair != ReadRepair::Off)
        else {
            return;
        };
        let (this, key, merged) = (self.clone(), key.to_owned(), Arc::new(merged));
        let task = async move {
            while let Some((index, result)) = in_flight.next().await {
                let Ok((reply, _)) = result else { continue };
                if reply.record.as_ref() != Some(&*merged) {
                    bump(&this.inner.counters.read_repairs);
                    let now_ms = this.now_ms();
                    let _ = this
                        .merge_on(index, &key, &merged, MergeMode::Upsert, now_ms)
                        .await;
                }
            }
        };
        tokio::spawn(task.in_current_span());
    }

    async fn after_read(
        &self,
        key: &str,
        plan: &ReadPlan,
        result: ReadResult,
        failures: Vec<ReplicaFailure>,
        corrupt: Vec<ReplicaIndex>,
    ) -> Result<Option<Record>> {
        let counters = &self.inner.counters;
        if let ReadResult::Unavailable { answered, needed } = result {
            bump(&counters.reads_unavailable);
            return Err(Error::Unavailable {
                needed,
                answered,
                failures,
            });
        }
        bump(&counters.reads_conclusive);
        let mut targets = plan.repair_targets(); // empty unless something was merged
        if let Some(merged) = plan.merged().filter(|_| !targets.is_empty()) {
            targets.extend(corrupt); // the merge refuses foreign data: safe to try
            self.read_repair(key, Arc::new(merged), targets).await;
        }
        Ok(match result {
            ReadResult::Found(record) => Some(record),
            _ => None,
        })
    }

    async fn read_repair(&self, key: &str, merged: Arc<Record>, targets: Vec<ReplicaIndex>) {
        let mode = self.inner.config.read_repair;
        if mode == ReadRepair::Off {
            return;
        }
        let now_ms = self.now_ms();
        let repairs = targets.into_iter().map(|index| {
            bump(&self.inner.counters.read_repairs);
            let (this, key, merged) = (self.clone(), key.to_owned(), merged.clone());
            async move {
                if let Err(error) = this.merge_on(index, &key, &merged, MergeMode::Upsert, now_ms).await {
                    debug!(replica = this.inner.replicas[index].name(), %error, "read-repair failed");
                }
            }
        });
        let repairs: Vec<_> = repairs.collect();
        match mode {
            ReadRepair::Blocking => {
                futures::future::join_all(repairs).await;
            }
            ReadRepair::Background => {
                for repair in repairs {
                    tokio::spawn(repair.in_current_span());
                }
            }
            ReadRepair::Off => {}
        }
    }

    /// One read on one replica; returns the reply and whether its miss counts.
    async fn read_on(
        &self,
        index: ReplicaIndex,
        key: &str,
    ) -> (ReplicaIndex, Result<(ReadReply, bool), ReplicaError>) {
        let replica = self.inner.replicas[index].clone();
        let result = self.call(index, replica.read(key)).await.map(|reply| {
            self.observe_epoch(index, reply.epoch);
            if let Some(stamp) = reply.record.as_ref().and_then(Record::max_stamp) {
                self.observe_stamp(stamp);
            }
            let counts = reply.epoch.complete && self.lock().epochs.is_readable(index);
            if reply.record.is_none() && !counts {
                bump(&self.inner.counters.inconclusive_misses);
            }
            (reply, counts)
        });
        (index, result)
    }

    /// Runs one replica call under `request_timeout`, and feeds the result to
    /// the health tracker.
    pub(crate) async fn call<T>(
        &self,
        index: ReplicaIndex,
        request: impl std::future::Future<Output = Result<T, ReplicaError>>,
    ) -> Result<T, ReplicaError> {
        let timeout = self.inner.config.request_timeout;
        let result = match tokio::time::timeout(timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(ReplicaError::Timeout { after: timeout }),
        };
        self.note_health(index, result.as_ref().map(|_| ()));
        result
    }

    /// Feeds the outcome of one request to replica `index` to the health
    /// tracker and the failure counter.
    pub(crate) fn note_health(&self, index: ReplicaIndex, result: Result<(), &ReplicaError>) {
        let now_ms = self.monotonic_ms();
        let mut state = self.lock();
        match result {
            Ok(()) => state.health.on_success(index),
            Err(error) if error.is_health_failure() => {
                bump(&self.inner.counters.replica_failures);
                if state.health.on_failure(index, now_ms) {
                    warn!(
                        replica = self.inner.replicas[index].name(),
                        "replica marked down"
                    );
                }
            }
            Err(_) => bump(&self.inner.counters.replica_failures),
        }
    }

    /// Queues a missed write for replay (hinted handoff). Overflow drops the
    /// oldest hint and marks the replica for anti-entropy.
    pub(crate) fn queue_hint(&self, index: ReplicaIndex, key: &str, delta: &Record, now_ms: u64) {
        let push = self.lock().hints.push(index, key, delta, now_ms);
        if matches!(
            push,
            HintPush::QueuedDroppingOldest { .. } | HintPush::TooLarge
        ) {
            debug!(
                replica = self.inner.replicas[index].name(),
                ?push,
                "hint queue overflow: anti-entropy due"
            );
        }
    }

    pub(crate) fn observe_epoch(&self, index: ReplicaIndex, epoch: Epoch) {
        let change = self.lock().epochs.observe(index, epoch);
        if change == EpochChange::Changed {
            bump(&self.inner.counters.epochs_changed);
            warn!(
                replica = self.inner.replicas[index].name(),
                "replica epoch changed: write-only until refilled"
            );
        }
    }

    pub(crate) fn observe_stamp(&self, stamp: Stamp) {
        let now_ms = self.now_ms();
        if let Err(skew) = self.lock().clock.observe(stamp, now_ms) {
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

    /// Probes the Down replicas whose backoff has passed, once. The probe
    /// task calls this on its own tick; tests may call it directly.
    pub async fn probe_due_replicas(&self) {
        let now_ms = self.monotonic_ms();
        let due = {
            let mut state = self.lock();
            let due = state.health.due_probes(now_ms);
            for &index in &due {
                state.health.on_probe_sent(index, now_ms);
            }
            due
        };
        for index in due {
            let replica = self.inner.replicas[index].clone();
            if let Ok(epoch) = self.call(index, replica.ping()).await {
                self.observe_epoch(index, epoch);
                tracing::info!(replica = replica.name(), "replica back up");
            }
        }
    }

    fn spawn_probe_task(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = self
            .inner
            .config
            .health
            .probe_interval_min
            .min(self.inner.config.handoff_interval);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick.max(Duration::from_millis(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                // Ends when the last coordinator handle is dropped.
                let Some(inner) = weak.upgrade() else { return };
                let coordinator = Coordinator { inner };
                coordinator.probe_due_replicas().await;
                if coordinator.replica_states().iter().all(|s| !s.readable) {
                    coordinator.initialize().await;
                }
                coordinator.replay_hints().await;
                coordinator.maybe_start_anti_entropy();
            }
        });
    }
}

/// Requests that run to completion even when nobody waits for them any more:
/// whatever is left when this is dropped is driven by one spawned task.
struct FinishInBackground<F>(Vec<Option<std::pin::Pin<Box<F>>>>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send;

impl<F> FinishInBackground<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    /// Polls every request still running and returns the answers of those
    /// that finished, waiting until there is at least one; empty when none
    /// is left.
    async fn next_replies(&mut self) -> Vec<F::Output> {
        std::future::poll_fn(|cx| {
            let mut replies = Vec::new();
            for slot in &mut self.0 {
                if let Some(request) = slot {
                    if let std::task::Poll::Ready(reply) = request.as_mut().poll(cx) {
                        replies.push(reply);
                        *slot = None;
                    }
                }
            }
            if replies.is_empty() && self.0.iter().any(Option::is_some) {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(replies)
            }
        })
        .await
    }
}

impl<F> Drop for FinishInBackground<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        let rest: Vec<_> = self.0.drain(..).flatten().collect();
        if rest.is_empty() {
            return;
        }
        // Outside a runtime (it is shutting down) there is nothing to run on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = async move {
                futures::future::join_all(rest).await;
            };
            runtime.spawn(task.in_current_span());
        }
    }
}

/// A key shortened for logs: never a full session id.
pub fn redact(key: &str) -> String {
    let visible: String = key.chars().take(8).collect();
    if visible.len() < key.len() {
        format!("{visible}…")
    } else {
        visible
    }
}
