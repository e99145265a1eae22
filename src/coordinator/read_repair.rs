//! Read-repair: after a read, the merged record is written back, as
//! configured ([`ReadRepair`]): blocking, until W replicas are known to hold
//! it (the asked replicas whose copy differed first, then others as needed;
//! the decisions are the core's [`RepairPlan`]), or in the background to the
//! asked replicas whose copy differed. Answers that arrive after the read
//! concluded are repaired too.

use std::future::Future;
use std::sync::Arc;

use futures::stream::StreamExt;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::config::ReadRepair;
use crate::core::read::ReadPlan;
use crate::core::read_repair::{RepairOutcome, RepairPlan, RepairStep};
use crate::core::ReplicaIndex;
use crate::error::{ReplicaError, Result};
use crate::record::Record;
use crate::replica::{MergeMode, MergeStatus, ReadReply};

use super::in_flight::InFlight;
use super::stats::bump;
use super::Coordinator;

/// The reads of a read still in flight when it concluded: each resolves to
/// the replica and its answer (with whether its miss counts).
pub(super) type LateAnswers<F> = InFlight<F>;

/// One read of a replica, as `read.rs` runs it.
pub(super) type ReadAnswer = (ReplicaIndex, Result<(ReadReply, bool), ReplicaError>);

impl Coordinator {
    /// Read-repair after a conclusive read, as configured. Blocking: the
    /// merged record is written back until W replicas are known to hold it
    /// ([`RepairPlan`]), for at most `request_timeout`; background: the
    /// asked replicas that differed are sent it in the background. Answers
    /// still in flight (`late`) are awaited by a blocking repair that counts
    /// on them, and otherwise repaired in the background when they differ.
    pub(super) async fn read_repair<F>(
        &self,
        key: &str,
        plan: &ReadPlan,
        corrupt: Vec<ReplicaIndex>,
        late: LateAnswers<F>,
    ) where
        F: Future<Output = ReadAnswer> + Send + 'static,
    {
        let config = &self.inner.config;
        let Some(merged) = plan
            .repairable()
            .filter(|_| config.read_repair != ReadRepair::Off)
        else {
            return;
        };
        // The usual read has nothing to repair and nothing late: the record
        // is copied (to be sent) only when something is.
        let mut shared = None;
        let mut copy = || {
            shared
                .get_or_insert_with(|| Arc::new(merged.clone()))
                .clone()
        };
        let repair = match config.read_repair {
            ReadRepair::Blocking => {
                plan.repair_plan(self.replica_count(), config.write_quorum, &corrupt)
            }
            _ => {
                let mut targets = plan.repair_targets();
                if !targets.is_empty() {
                    // The merge refuses foreign data: safe to try.
                    targets.extend(corrupt);
                    self.repair_in_background(key, &copy(), targets);
                }
                None
            }
        };
        if repair.is_none() && late.is_empty() {
            return;
        }
        let merged = copy();
        match repair {
            Some(repair) => self.repair_to_quorum(key, merged, repair, late).await,
            None => self.repair_late_answers(key, merged, late),
        }
    }

    fn repair_in_background(&self, key: &str, merged: &Arc<Record>, targets: Vec<ReplicaIndex>) {
        let now_ms = self.now_ms();
        for index in targets {
            let repair = self.repair_on(index, key, merged.clone(), now_ms);
            tokio::spawn(repair.in_current_span());
        }
    }

    /// Drives a blocking read-repair: sends what the plan says, feeds it
    /// each repair's result, the late answers it awaits, and the hedge timer
    /// (`hedge_delay` after each send, and again each time it fires);
    /// returns once it is done or
    /// `request_timeout` has passed. The repairs still running then finish
    /// in the background, and the late answers still to come are repaired
    /// there when they differ.
    async fn repair_to_quorum<F>(
        &self,
        key: &str,
        merged: Arc<Record>,
        mut plan: RepairPlan,
        mut late: LateAnswers<F>,
    ) where
        F: Future<Output = ReadAnswer> + Send + 'static,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.request_timeout;
        let now_ms = self.now_ms();
        let mut repairs = InFlight::new();
        let mut hedge = config
            .hedge_delay
            .map(|delay| Box::pin(tokio::time::sleep(delay)));
        let mut step = plan.start();
        let outcome = loop {
            if let (false, Some(timer), Some(delay)) =
                (step.send.is_empty(), hedge.as_mut(), config.hedge_delay)
            {
                timer.as_mut().reset(Instant::now() + delay);
            }
            for index in step.send {
                repairs.push(self.repair_on(index, key, merged.clone(), now_ms));
            }
            if let Some(outcome) = step.done {
                break outcome;
            }
            let awaits_answers = plan.awaits_answers();
            let next = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    biased;
                    Some((index, holds)) = repairs.next() => if holds {
                        plan.on_repaired(index)
                    } else {
                        plan.on_failed(index)
                    },
                    Some((index, answer)) = late.next(), if awaits_answers => {
                        let holds = answer.ok().map(|(reply, _)| reply.record.as_ref().is_some_and(|r| r.same_data(&merged)));
                        plan.on_answer(index, holds)
                    }
                    () = async { hedge.as_mut().expect("guarded").await }, if hedge.is_some() => {
                        // Armed again: repairs of Down replicas may be all
                        // that is left running later (see RepairPlan).
                        if let (Some(timer), Some(delay)) = (hedge.as_mut(), config.hedge_delay) {
                            timer.as_mut().reset(Instant::now() + delay);
                        }
                        plan.on_hedge()
                    }
                    // The plan waits only while a repair runs or an answer
                    // is awaited: not reached.
                    else => RepairStep { send: Vec::new(), done: Some(plan.on_deadline()) },
                }
            });
            step = match next.await {
                Ok(next) => next,
                Err(_elapsed) => break plan.on_deadline(),
            };
        };
        if let RepairOutcome::Short { holders, needed } = outcome {
            bump(&self.inner.counters.read_repairs_short);
            super::metrics::counter(super::metrics::READ_REPAIRS_SHORT, 1);
            debug!(
                holders,
                needed, "read answered before W replicas held its record"
            );
        }
        if !repairs.is_empty() {
            let rest = async move { while repairs.next().await.is_some() {} };
            tokio::spawn(rest.in_current_span());
        }
        self.repair_late_answers(key, merged, late);
    }

    /// One read-repair merge (counted); resolves to the replica and whether
    /// it now holds `merged` (applied, or it holds a tombstone: delete wins).
    fn repair_on(
        &self,
        index: ReplicaIndex,
        key: &str,
        merged: Arc<Record>,
        now_ms: u64,
    ) -> impl Future<Output = (ReplicaIndex, bool)> + Send + 'static {
        bump(&self.inner.counters.read_repairs);
        super::metrics::counter(super::metrics::READ_REPAIRS, 1);
        let (this, key) = (self.clone(), key.to_owned());
        async move {
            let result = this
                .merge_on(index, &key, &merged, MergeMode::Upsert, now_ms)
                .await;
            let holds = match result {
                Ok(reply) => matches!(reply.status, MergeStatus::Applied | MergeStatus::Gone),
                Err(error) => {
                    let replica = this.inner.replicas[index].name();
                    debug!(replica, %error, "read-repair failed");
                    false
                }
            };
            (index, holds)
        }
    }

    /// Answers still in flight when a read concluded (a tombstone is final on
    /// its own, hedged requests) and not awaited by a blocking repair are
    /// collected in the background, and those that differ from the merged
    /// record are read-repaired too.
    fn repair_late_answers<F>(&self, key: &str, merged: Arc<Record>, mut late: LateAnswers<F>)
    where
        F: Future<Output = ReadAnswer> + Send + 'static,
    {
        if late.is_empty() {
            return;
        }
        let (this, key) = (self.clone(), key.to_owned());
        let task = async move {
            while let Some((index, result)) = late.next().await {
                let Ok((reply, _)) = result else { continue };
                if !reply.record.as_ref().is_some_and(|r| r.same_data(&merged)) {
                    let now_ms = this.now_ms();
                    this.repair_on(index, &key, merged.clone(), now_ms).await;
                }
            }
        };
        tokio::spawn(task.in_current_span());
    }
}
