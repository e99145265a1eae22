//! The write protocol ([`Coordinator::write`]): validate, stamp (HLC tick),
//! merge on every replica not Down at once, answer at W acknowledgements
//! ([`WriteTally`]); the merges still running finish in the background, and a
//! replica that missed the write gets a hint.

use std::sync::Arc;

use tracing::{debug, info_span, warn, Instrument};

use crate::core::hints::HintPush;
use crate::core::quorum::{WriteOutcome, WriteReply, WriteTally};
use crate::core::ReplicaIndex;
use crate::error::{Error, InvalidInput, ReplicaError, ReplicaFailure, Result};
use crate::mutation::{Mutation, MutationKind};
use crate::record::Record;
use crate::replica::{MergeMode, MergeReply, MergeStatus};
use crate::stamp::Stamp;

use super::shutdown::WriteGuard;
use super::stats::bump;
use super::{Coordinator, Redacted};

/// What a successful write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAck {
    /// The stamp every entry of the write carries.
    pub stamp: Stamp,
    /// Acknowledgements when the write returned (at least W).
    pub acked: usize,
}

/// One write's own consistency, overriding the store's (as Cassandra and
/// Riak allow per request). [`Default`]: the configured W.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Acknowledgements this write needs: at least the configured W (a
    /// smaller one would let "not found", which counts on every write
    /// reaching W replicas, be answered wrongly), at most N. `None`: W.
    pub write_quorum: Option<usize>,
}

impl WriteOptions {
    /// This write needs `write_quorum` acknowledgements.
    pub fn w(write_quorum: usize) -> WriteOptions {
        WriteOptions {
            write_quorum: Some(write_quorum),
        }
    }

    /// This write needs every replica (N): a logout that must be on all of
    /// them before the user is told.
    pub fn all() -> WriteOptions {
        WriteOptions {
            write_quorum: Some(usize::MAX),
        }
    }
}

/// How one round of a write ended.
enum Written {
    /// Acknowledged by this many replicas.
    Acked(usize),
    /// An acker held this larger stamp: stamp again above it.
    Restamp { above: Stamp },
}

/// Requests that run to completion even when nobody waits for them any more:
/// whatever is left when this is dropped is driven by one spawned task.
/// The guard counts them as in flight for [`Coordinator::shutdown`].
struct FinishInBackground<F>(Vec<Option<std::pin::Pin<Box<F>>>>, Option<WriteGuard>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send;

impl Coordinator {
    /// Writes `mutation` to the record under `key`; returns after W
    /// acknowledgements while the other replicas finish in the background
    /// (each bounded by `request_timeout`). Known-down replicas are skipped.
    ///
    /// A field update is acknowledged only above what its ackers held
    /// (`core::quorum`, `docs/epochs.md`): when an acker already held
    /// a larger stamp (another app server's faster clock wrote the record),
    /// the update is stamped again above it and sent again — one more round
    /// trip, at most once per write, counted in
    /// [`CoordinatorStats::restamped_writes`] — so a write acknowledged
    /// later is never hidden behind one acknowledged earlier. It also waits
    /// for N − W + 1 acknowledgements from replicas in a complete epoch
    /// (with a majority W: no more than W while every replica is complete;
    /// with W = 1 of 3: every replica).
    ///
    /// [`CoordinatorStats::restamped_writes`]: crate::CoordinatorStats::restamped_writes
    ///
    /// # Errors
    ///
    /// - [`Error::Invalid`] before any replica is contacted;
    /// - [`Error::ShuttingDown`] after [`Coordinator::shutdown`] began;
    /// - [`Error::QuorumNotReached`] when W can no longer be reached. The
    ///   write may still have reached some replicas and may surface later (as
    ///   in Dynamo); retrying the same mutation is safe;
    /// - [`Error::Gone`] when the record is deleted (delete wins);
    /// - [`Error::Collision`] when a create finds another record.
    pub async fn write(&self, key: &str, mutation: Mutation) -> Result<WriteAck> {
        self.write_with(key, mutation, WriteOptions::default())
            .await
    }

    /// [`write`](Self::write) with this call's own write quorum, e.g. a
    /// logout acknowledged by every replica ([`WriteOptions::all`]).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write); [`Error::Invalid`]
    /// ([`InvalidInput::Quorum`]) when the override is below the configured
    /// W or above N.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
    /// use quorum_sessions::{ClusterConfig, Coordinator, Mutation, WriteOptions};
    /// let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
    ///     .into_iter()
    ///     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
    ///     .collect();
    /// let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
    /// let now = coordinator.now_ms();
    /// let create = Mutation::create(now + 60_000, now + 3_600_000).set("user", "alice");
    /// let ack = coordinator.write_with("s:{demo}", create, WriteOptions::all()).await.unwrap();
    /// assert!(ack.acked >= 3);
    /// # });
    /// ```
    ///
    /// [`InvalidInput::Quorum`]: crate::InvalidInput::Quorum
    pub async fn write_with(
        &self,
        key: &str,
        mutation: Mutation,
        options: WriteOptions,
    ) -> Result<WriteAck> {
        let started = super::metrics::start();
        let result = self.write_unmetered(key, mutation, options).await;
        super::metrics::operation("write", result.as_ref().map(Some), started);
        result
    }

    async fn write_unmetered(
        &self,
        key: &str,
        mutation: Mutation,
        options: WriteOptions,
    ) -> Result<WriteAck> {
        // Counted before the check: a write that got past it is one
        // shutdown waits for (the background rest takes its own guard).
        let _in_flight = self.inner.lifecycle.write_started();
        self.check_open()?;
        let now_ms = self.now_ms();
        self.check_key(key)?;
        let write_quorum = self.write_quorum_of(options)?;
        mutation.validate(&self.inner.config.limits, now_ms)?;
        let mode = match mutation.kind() {
            MutationKind::Create => MergeMode::Create,
            _ => MergeMode::Upsert,
        };
        // Field updates are ordered (see `core::quorum`): a create's stamp
        // is its origin (a new one would collide with itself), a delete
        // wins whatever its stamp, and an expiry merges by maximum.
        let ordered = mutation.kind() == MutationKind::Update && !mutation.is_empty();
        let span = info_span!("write", key = %Redacted(key), mode = ?mode);
        async move {
            let stamp = self.lock().clock.tick(now_ms);
            let mut delta = Arc::new(mutation.into_delta(stamp));
            let order = ordered.then_some(stamp);
            let above = match self
                .write_delta(key, delta.clone(), mode, order, write_quorum)
                .await?
            {
                Written::Acked(acked) => return Ok(WriteAck { stamp, acked }),
                Written::Restamp { above } => above,
            };
            // An acker held a larger stamp: every write acknowledged before
            // this one began is at or below `above` (see `core::quorum`), so
            // one more round, stamped above it, is ordered. A stamp further
            // ahead than `max_clock_skew` is refused (counted): this clock
            // is not dragged there, and the round is stamped as high as it
            // may go — ordered after every write from a clock within the
            // limit, which is all last-writer-wins promises.
            let now_ms = self.now_ms();
            let stamp = {
                let mut state = self.lock();
                if let Err(skew) = state.clock.observe(above, now_ms) {
                    super::metrics::counter(super::metrics::CLOCK_SKEW_REFUSALS, 1);
                    warn!(
                        ahead_ms = skew.ahead_ms,
                        "a replica holds a stamp too far ahead: not followed"
                    );
                }
                state.clock.tick(now_ms)
            };
            bump(&self.inner.counters.restamped_writes);
            super::metrics::counter(super::metrics::RESTAMPED_WRITES, 1);
            debug!("an acker held a larger stamp: stamped again");
            // An update's entries all carry its stamp; nothing else in the
            // delta does.
            for entry in Arc::make_mut(&mut delta).fields.values_mut() {
                entry.stamp = stamp;
            }
            match self
                .write_delta(key, delta, mode, None, write_quorum)
                .await?
            {
                Written::Acked(acked) => Ok(WriteAck { stamp, acked }),
                Written::Restamp { .. } => unreachable!("an unordered round is never re-stamped"),
            }
        }
        .instrument(span)
        .await
    }

    /// Fans a stamped delta out and waits for the write quorum (and, for
    /// an ordered write of stamp `order`, the ordering rule of
    /// [`WriteTally::ordered`]). The merges are polled here rather than
    /// spawned one task each, every one of them in each round (so all are
    /// sent at once, as with tasks); once the outcome is known, or if the
    /// caller drops the write, the ones still running go on together in one
    /// background task, each bounded by `request_timeout`, and queue a hint
    /// if they fail.
    async fn write_delta(
        &self,
        key: &str,
        delta: Arc<Record>,
        mode: MergeMode,
        order: Option<Stamp>,
        write_quorum: usize,
    ) -> Result<Written> {
        let n = self.replica_count();
        let config = &self.inner.config;
        let mut tally = WriteTally::new(write_quorum, n);
        if let Some(stamp) = order {
            tally = tally.ordered(stamp, config.misses_for_absence(n));
        }
        let mut failures = Vec::new();
        let now_ms = self.now_ms();
        let mut outcome = WriteOutcome::Pending;
        let key: Arc<str> = Arc::from(key);
        let mut merges = FinishInBackground(
            Vec::with_capacity(n),
            Some(self.inner.lifecycle.write_started()),
        );
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
                outcome = match result {
                    Ok(reply) => match reply.status {
                        MergeStatus::Applied => {
                            let complete =
                                reply.epoch.complete && self.lock().epochs.is_readable(index);
                            tally.record_ack(index, reply.held_max, complete)
                        }
                        MergeStatus::Gone => tally.record(index, WriteReply::Gone),
                        MergeStatus::Exists => tally.record(index, WriteReply::Exists),
                    },
                    Err(error) => {
                        failures.push(self.failure(index, error));
                        tally.record(index, WriteReply::Failed)
                    }
                };
            }
        }
        drop(merges); // the merges still running go on in the background
        self.finish_write(outcome, &tally, failures)
    }

    /// The write quorum of one call: the override, checked, or W.
    fn write_quorum_of(&self, options: WriteOptions) -> Result<usize, InvalidInput> {
        let (configured, n) = (self.inner.config.write_quorum, self.replica_count());
        match options.write_quorum {
            None => Ok(configured),
            Some(usize::MAX) => Ok(n),
            Some(w) if (configured..=n).contains(&w) => Ok(w),
            Some(w) => Err(InvalidInput::Quorum(format!(
                "a write quorum of {w} is outside {configured}..={n} (the configured W up to N)"
            ))),
        }
    }

    fn finish_write(
        &self,
        outcome: WriteOutcome,
        tally: &WriteTally,
        failures: Vec<ReplicaFailure>,
    ) -> Result<Written> {
        let counters = &self.inner.counters;
        match outcome {
            WriteOutcome::Reached => {
                bump(&counters.writes_acknowledged);
                Ok(Written::Acked(tally.acked_count()))
            }
            WriteOutcome::Restamp { above } => Ok(Written::Restamp { above }),
            WriteOutcome::Gone => Err(Error::Gone),
            WriteOutcome::Collision => Err(Error::Collision),
            WriteOutcome::Failed | WriteOutcome::Pending => {
                bump(&counters.writes_failed);
                warn!(
                    acked = tally.acked_count(),
                    needed = tally.needed_total(),
                    "write quorum not reached"
                );
                let (needed, acked) = tally.shortfall();
                Err(Error::QuorumNotReached {
                    needed,
                    acked,
                    failures,
                })
            }
        }
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

    /// Queues a missed write for replay (hinted handoff). Overflow drops the
    /// oldest hint and marks the replica for anti-entropy.
    pub(crate) fn queue_hint(&self, index: ReplicaIndex, key: &str, delta: &Record, now_ms: u64) {
        let push = {
            let mut state = self.lock();
            let before = state.hints.stats(index);
            let push = state.hints.push(index, key, delta, now_ms);
            self.hint_metrics(&state, index, before, 0);
            push
        };
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
}

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
        let guard = self.1.take();
        if rest.is_empty() {
            return;
        }
        // Outside a runtime (it is shutting down) there is nothing to run on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = async move {
                futures::future::join_all(rest).await;
                drop(guard);
            };
            runtime.spawn(task.in_current_span());
        }
    }
}
