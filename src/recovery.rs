//! Recovery drivers: hinted handoff and anti-entropy, run by the coordinator.
//!
//! - **Hinted handoff**: every write a replica missed (down, timed out,
//!   skipped) is a hint in a bounded per-replica queue ([`HintQueues`]:
//!   bounds in entries and bytes; overflow drops the oldest, counts it, and
//!   marks the replica for anti-entropy). On the coordinator's background
//!   tick, hints are replayed to replicas that are not Down, oldest first,
//!   rate-limited, through the same merge (idempotent: a hint that reaches a
//!   deleted or newer record changes nothing). Hints live in memory and are
//!   lost with their app server: anti-entropy is what guarantees convergence.
//! - **Anti-entropy** ([`Coordinator::anti_entropy`]): walks the keyspace of
//!   every reachable replica with SCAN (bounded pages), reads each key's
//!   copies, compares digests, and merges the join into every replica whose
//!   copy differs ([`AntiEntropyPass`]). A replica in a new, incomplete epoch
//!   (restarted empty, failed over, restored from a snapshot) is refilled by
//!   the pass and then marked complete, so its misses count again. It runs on
//!   demand, on rejoin (a changed epoch or a hint overflow) and optionally on
//!   a schedule; one pass at a time per coordinator; dropping the future
//!   cancels it; `pause_between_pages` bounds its share of the replicas.
//!
//! [`HintQueues`]: crate::core::hints::HintQueues

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tracing::{debug, info, warn};

use crate::coordinator::{bump, Coordinator};
use crate::core::anti_entropy::{AntiEntropyPass, PassStats};
use crate::core::health::Health;
use crate::core::ReplicaIndex;
use crate::record::Record;
use crate::replica::{Epoch, MergeMode};

/// What one anti-entropy pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct AntiEntropyReport {
    /// Counters: keys compared and repaired, records sent, pages scanned.
    pub stats: PassStats,
    /// Replicas that took part from the first page to the last.
    pub covered: Vec<String>,
    /// Replicas refilled and marked complete by this pass.
    pub marked_complete: Vec<String>,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

impl AntiEntropyReport {
    /// Keys compared per second.
    pub fn keys_per_sec(&self) -> f64 {
        self.stats.keys_compared as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Releases the one-pass-at-a-time flag however the pass ends (also when its
/// future is dropped).
struct RunningGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Coordinator {
    /// Replays one rate-limited batch of hints to every replica that is not
    /// Down. The background tick calls it; tests may call it directly.
    pub async fn replay_hints(&self) {
        let now_ms = self.now_ms();
        for index in 0..self.replica_count() {
            let batch = {
                let mut state = self.lock();
                if state.health.health(index) == Health::Down || state.hints.is_empty(index) {
                    continue;
                }
                state.hints.take_batch(index, now_ms)
            };
            if batch.is_empty() {
                continue;
            }
            let mut failed = Vec::new();
            let mut batch = batch.into_iter();
            for hint in batch.by_ref() {
                let result = self
                    .merge_on(index, &hint.key, &hint.delta, MergeMode::Upsert, now_ms)
                    .await;
                if let Err(error) = result {
                    debug!(replica = self.inner.replicas[index].name(), %error, "hint replay failed");
                    failed.push(hint);
                    break; // the replica is failing: keep the rest for later
                }
            }
            failed.extend(batch);
            if !failed.is_empty() {
                self.lock().hints.restore(index, failed, now_ms);
            }
        }
    }

    /// Starts a background anti-entropy pass when one is due: a replica is
    /// write-only (new epoch) or its hints overflowed, and it is not Down.
    pub(crate) fn maybe_start_anti_entropy(&self) {
        let config = &self.inner.config.anti_entropy;
        let now_ms = self.monotonic_ms();
        if self.inner.anti_entropy_running.load(Ordering::Acquire)
            || now_ms
                < self
                    .inner
                    .anti_entropy_not_before_ms
                    .load(Ordering::Relaxed)
        {
            return;
        }
        if let Some(interval) = config.interval {
            // A scheduled pass: the next one `interval` after this one starts.
            let next = now_ms + u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            self.inner
                .anti_entropy_not_before_ms
                .store(next, Ordering::Relaxed);
            self.spawn_pass("scheduled anti-entropy pass");
            return;
        }
        if !config.on_rejoin {
            return;
        }
        let states = self.replica_states();
        let due = states.iter().any(|s| {
            s.health != Health::Down && (!s.readable || s.needs_anti_entropy) && s.epoch.is_some()
        });
        // A cluster where nothing is readable is bootstrapped, not refilled.
        let any_readable = states.iter().any(|s| s.readable);
        if due && any_readable {
            self.spawn_pass("anti-entropy pass after a rejoin");
        }
    }

    fn spawn_pass(&self, what: &'static str) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(report) = this.anti_entropy().await else {
                return;
            };
            info!(
                keys = report.stats.keys_compared,
                repaired = report.stats.keys_repaired,
                refilled = ?report.marked_complete,
                "{what}"
            );
            let stuck = this
                .replica_states()
                .iter()
                .any(|s| s.health != Health::Down && !s.readable);
            if stuck && report.marked_complete.is_empty() {
                // Too few complete sources (more than N - W replicas lost
                // data): retrying at once changes nothing. See
                // `Coordinator::accept_data_loss` for the operator's way out.
                let retry = this.config().anti_entropy.retry_interval;
                let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
                let next = this.monotonic_ms() + retry_ms;
                this.inner
                    .anti_entropy_not_before_ms
                    .fetch_max(next, Ordering::Relaxed);
                warn!(
                    retry_ms,
                    "anti-entropy could not refill a replica: too few complete replicas"
                );
            }
        });
    }

    /// Operator override: marks replica `index`'s current epoch complete
    /// without a refill, so that its misses count again. Use it only after
    /// more than N − W replicas lost their data at once, when no pass can
    /// prove a refill complete and reads stay `Unavailable`: writes
    /// acknowledged only by the lost replicas are gone, and accepting that is
    /// the point of the call. Returns `false` if the replica's epoch changed
    /// meanwhile.
    ///
    /// # Errors
    ///
    /// The replica's error when it cannot be reached.
    ///
    /// # Panics
    ///
    /// If `index` is not a replica index.
    pub async fn accept_data_loss(
        &self,
        index: ReplicaIndex,
    ) -> Result<bool, crate::error::ReplicaError> {
        let replica = self.inner.replicas[index].clone();
        let epoch = self.call(index, replica.ping()).await?;
        let marked = self
            .call(index, replica.mark_epoch_complete(epoch.id))
            .await?;
        if marked {
            self.lock().epochs.mark_complete(index, epoch.id);
            warn!(
                replica = replica.name(),
                "epoch marked complete by the operator: data loss accepted"
            );
        }
        Ok(marked)
    }

    /// Runs one anti-entropy pass over every reachable replica and returns
    /// its report, or `None` if a pass is already running in this
    /// coordinator. Cancellable: dropping the future stops the pass (nothing
    /// is marked complete then).
    pub async fn anti_entropy(&self) -> Option<AntiEntropyReport> {
        let running = &self.inner.anti_entropy_running;
        if running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let _guard = RunningGuard(running);
        let started = Instant::now();
        let epochs = self.ping_all().await;
        let mut pass = AntiEntropyPass::new(&epochs, self.config().write_quorum);
        let config = self.config().anti_entropy.clone();
        while let Some((index, cursor)) = pass.next_scan() {
            let (cursor, replica) = (cursor.to_owned(), self.inner.replicas[index].clone());
            let page = match self
                .call(index, replica.scan(&cursor, config.scan_batch))
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    warn!(replica = replica.name(), %error, "anti-entropy scan failed: replica leaves the pass");
                    pass.on_replica(index, None);
                    continue;
                }
            };
            self.process_page(&mut pass, index, page.keys).await;
            if pass.is_participant(index) {
                pass.on_page(index, page.next_cursor);
            }
            if !config.pause_between_pages.is_zero() {
                tokio::time::sleep(config.pause_between_pages).await;
            }
        }
        let outcome = pass.finish();
        let mut marked_complete = Vec::new();
        for (index, epoch_id) in outcome.mark_complete {
            let replica = self.inner.replicas[index].clone();
            if let Ok(true) = self
                .call(index, replica.mark_epoch_complete(epoch_id))
                .await
            {
                let mut state = self.lock();
                state.epochs.mark_complete(index, epoch_id);
                state.hints.clear_anti_entropy(index);
                marked_complete.push(replica.name().to_owned());
            }
        }
        for &index in &outcome.covered {
            self.lock().hints.clear_anti_entropy(index);
        }
        bump(&self.inner.counters.anti_entropy_passes);
        self.inner
            .counters
            .anti_entropy_records_sent
            .fetch_add(outcome.stats.records_sent, Ordering::Relaxed);
        let covered = outcome
            .covered
            .iter()
            .map(|&i| self.inner.replicas[i].name().to_owned())
            .collect();
        Some(AntiEntropyReport {
            stats: outcome.stats,
            covered,
            marked_complete,
            elapsed: started.elapsed(),
        })
    }

    async fn ping_all(&self) -> Vec<Option<Epoch>> {
        let pings = self
            .inner
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let replica = replica.clone();
                async move {
                    let epoch = self.call(index, replica.ping()).await.ok()?;
                    self.observe_epoch(index, epoch);
                    Some(epoch)
                }
            });
        futures::future::join_all(pings).await
    }

    /// Reads every participant's copy of each key of one page (concurrently,
    /// `key_concurrency` keys at a time), compares, and sends the repairs.
    async fn process_page(
        &self,
        pass: &mut AntiEntropyPass,
        scanned: ReplicaIndex,
        keys: Vec<String>,
    ) {
        let participants = pass.participants();
        let concurrency = self.config().anti_entropy.key_concurrency;
        let reads = stream::iter(keys)
            .map(|key| {
                let participants = participants.clone();
                async move {
                    let copies = futures::future::join_all(participants.iter().map(|&index| {
                        let replica = self.inner.replicas[index].clone();
                        let key = key.clone();
                        async move { (index, self.call(index, replica.read(&key)).await) }
                    }))
                    .await;
                    (key, copies)
                }
            })
            .buffer_unordered(concurrency);
        let fetched: Vec<_> = reads.collect().await;
        let now_ms = self.now_ms();
        let mut repairs = Vec::new();
        for (key, copies) in fetched {
            let mut records: Vec<(ReplicaIndex, Option<Record>)> = Vec::new();
            for (index, result) in copies {
                match result {
                    Ok(reply) => {
                        pass.on_replica(index, Some(reply.epoch));
                        records.push((index, reply.record));
                    }
                    Err(_) => pass.on_replica(index, None),
                }
            }
            records.retain(|(index, _)| pass.is_participant(*index));
            // A key an earlier-scanned replica holds was compared during its scan.
            let seen_before = records.iter().any(|(index, copy)| {
                *index != scanned && copy.is_some() && pass.scanned_earlier(*index)
            });
            if seen_before {
                continue;
            }
            let copies: Vec<(ReplicaIndex, Option<&Record>)> = records
                .iter()
                .map(|(index, copy)| (*index, copy.as_ref()))
                .collect();
            if let Some(repair) = pass.compare_key(&copies, now_ms) {
                repairs.push((key, Arc::new(repair.merged), repair.targets));
            }
        }
        let sends = repairs.into_iter().flat_map(|(key, merged, targets)| {
            targets
                .into_iter()
                .map(move |index| (key.clone(), merged.clone(), index))
        });
        stream::iter(sends)
            .for_each_concurrent(concurrency, |(key, merged, index)| async move {
                if let Err(error) = self.merge_on(index, &key, &merged, MergeMode::Upsert, now_ms).await {
                    debug!(replica = self.inner.replicas[index].name(), %error, "anti-entropy repair failed");
                }
            })
            .await;
    }
}
