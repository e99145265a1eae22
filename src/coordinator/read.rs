//! The read protocol ([`Coordinator::read`]): read order (health, epochs,
//! per-key rotation), the [`ReadPlan`] (ask R, count answers, failures and
//! provable misses, hedge), and what the read answers: found, proved absent
//! or unavailable. Stale replicas are repaired by `read_repair.rs`.

use std::future::Future;

use futures::stream::StreamExt;
use tokio::time::Instant;
use tracing::{info_span, Instrument};

use crate::core::health::Health;
use crate::core::read::{read_order, ReadDecision, ReadPlan, ReadResult};
use crate::core::ReplicaIndex;
use crate::error::{Error, InvalidInput, ReplicaError, ReplicaFailure, Result};
use crate::record::Record;
use crate::replica::ReadReply;

use super::in_flight::InFlight;
use super::read_repair::{LateAnswers, ReadAnswer};
use super::stats::bump;
use super::{Coordinator, Redacted};

/// One read's own consistency, overriding the store's. [`Default`]: the
/// configured R.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Answers this read needs, `1..=N`. `None`: R.
    pub read_quorum: Option<usize>,
}

impl ReadOptions {
    /// This read needs `read_quorum` answers.
    pub fn r(read_quorum: usize) -> ReadOptions {
        ReadOptions {
            read_quorum: Some(read_quorum),
        }
    }

    /// This read asks every replica (R = N).
    pub fn all() -> ReadOptions {
        ReadOptions {
            read_quorum: Some(usize::MAX),
        }
    }
}

impl Coordinator {
    /// Reads the record under `key`: `Some` when found, `None` when provably
    /// absent, deleted or expired.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when too few replicas answered, or when the
    /// misses that came back do not prove the record absent (never read
    /// this as "not found"); [`Error::Invalid`] for a malformed key;
    /// [`Error::ShuttingDown`] after [`Coordinator::shutdown`] began.
    pub async fn read(&self, key: &str) -> Result<Option<Record>> {
        self.read_with(key, ReadOptions::default()).await
    }

    /// [`read`](Self::read) with this call's own read quorum, e.g. R = 1 for
    /// an analytics scan that can live with a stale answer. "Not found"
    /// still needs its proof (N − W + 1 misses from complete replicas),
    /// whatever R: a small R makes a read faster and maybe stale, never
    /// wrongly empty.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read); [`Error::Invalid`]
    /// ([`InvalidInput::Quorum`]) unless
    /// `1 ≤ R ≤ N`.
    pub async fn read_with(&self, key: &str, options: ReadOptions) -> Result<Option<Record>> {
        let started = super::metrics::start();
        let result = self.read_unmetered(key, options).await;
        super::metrics::operation("read", result.as_ref().map(Option::as_ref), started);
        result
    }

    async fn read_unmetered(&self, key: &str, options: ReadOptions) -> Result<Option<Record>> {
        self.check_open()?;
        self.check_key(key)?;
        let (configured, n) = (self.inner.config.read_quorum, self.replica_count());
        let read_quorum = match options.read_quorum {
            None => configured,
            Some(usize::MAX) => n,
            Some(r) if (1..=n).contains(&r) => r,
            Some(r) => {
                return Err(InvalidInput::Quorum(format!(
                    "a read quorum of {r} is outside 1..={n}"
                ))
                .into())
            }
        };
        let span = info_span!("read", key = %Redacted(key));
        self.read_inner(key, read_quorum).instrument(span).await
    }

    async fn read_inner(&self, key: &str, read_quorum: usize) -> Result<Option<Record>> {
        let config = &self.inner.config;
        let now_ms = self.now_ms();
        let (candidates, hedge_after) = {
            let mut state = self.lock();
            let states: Vec<(Health, bool)> = (0..self.replica_count())
                .map(|i| (state.health.health(i), state.epochs.is_readable(i)))
                .collect();
            let hedge_after = config.hedge_delay.map(|cap| match config.hedge_percentile {
                Some(q) => crate::core::latency::hedge_delay(state.latency.iter_mut(), q, cap),
                None => cap,
            });
            (read_order(key, &states, config.read_order), hedge_after)
        };
        let misses_needed = config.misses_for_absence(self.replica_count());
        let mut plan = ReadPlan::new(candidates, read_quorum, misses_needed, now_ms);
        let mut failures = Vec::new();
        let mut corrupt = Vec::new();
        let mut in_flight = InFlight::new();
        let mut hedge = hedge_after.map(|delay| Box::pin(tokio::time::sleep(delay)));
        let mut decision = plan.start();
        let result = loop {
            match decision {
                ReadDecision::Done(result) => break result,
                ReadDecision::Ask(indexes) => {
                    for index in indexes {
                        let (this, key) = (self.clone(), key.to_owned());
                        in_flight.push(async move { this.read_on(index, &key).await });
                    }
                    if let (Some(timer), Some(delay)) = (hedge.as_mut(), hedge_after) {
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
                        hedge = hedge_after.map(|delay| Box::pin(tokio::time::sleep(delay)));
                    }
                    next
                }
            };
        };
        self.after_read(key, &plan, result, failures, corrupt, in_flight)
            .await
    }

    /// One read on one replica; returns the reply and whether its miss counts.
    async fn read_on(
        &self,
        index: ReplicaIndex,
        key: &str,
    ) -> (ReplicaIndex, Result<(ReadReply, bool), ReplicaError>) {
        let replica = self.inner.replicas[index].clone();
        let sent = Instant::now();
        let result = self.call(index, replica.read(key)).await;
        if matches!(result, Ok(_) | Err(ReplicaError::Timeout { .. })) {
            self.lock().latency[index].record(sent.elapsed());
        }
        let result = result.map(|reply| {
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

    /// What the read answers, after the read-repair it needs. `late`: the
    /// reads still in flight when it concluded.
    async fn after_read<F>(
        &self,
        key: &str,
        plan: &ReadPlan,
        result: ReadResult,
        failures: Vec<ReplicaFailure>,
        corrupt: Vec<ReplicaIndex>,
        late: LateAnswers<F>,
    ) -> Result<Option<Record>>
    where
        F: Future<Output = ReadAnswer> + Send + 'static,
    {
        let counters = &self.inner.counters;
        if let ReadResult::Unavailable { answered, needed } = result {
            bump(&counters.reads_unavailable);
            let (not_refilled, operator_needed) = self.data_loss();
            return Err(Error::Unavailable {
                needed,
                answered,
                failures,
                not_refilled,
                operator_needed,
            });
        }
        bump(&counters.reads_conclusive);
        self.read_repair(key, plan, corrupt, late).await;
        Ok(match result {
            ReadResult::Found(record) => Some(record),
            _ => None,
        })
    }
}
