//! The anti-entropy pass ([`Coordinator::anti_entropy`]): the lease held on a
//! majority of the replicas, SCAN pages read ahead, each key's copies read in
//! batches and compared ([`AntiEntropyPass`]), the joins sent in batches, the
//! sources pinged again (one that restarted mid-scan does not count), and the
//! refilled replicas marked complete. When a pass starts is decided in
//! `background.rs`; how it fits with hinted handoff, in the
//! [module documentation](super).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::metrics;
use super::stats::bump;
use super::Coordinator;
use crate::core::anti_entropy::{AntiEntropyPass, PassStats};
use crate::core::ReplicaIndex;
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{Epoch, ReadReply};
use crate::stamp::duration_ms;

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
    /// Records sent to each replica (or, in a dry run, that would have
    /// been), by replica name, in replica order; replicas sent nothing are
    /// left out.
    pub sent_to: Vec<(String, u64)>,
    /// A dry run ([`AntiEntropyOptions::dry_run`]): nothing was written.
    pub dry_run: bool,
}

/// How [`Coordinator::anti_entropy_with`] runs a pass.
#[derive(Clone, Default)]
pub struct AntiEntropyOptions {
    /// Compare only: no record is sent and nothing is marked complete; the
    /// report's counters and [`AntiEntropyReport::sent_to`] tell what the
    /// pass would have sent. The lease is taken (and given back) as for a
    /// real pass, so a dry run does not overlap another server's pass and
    /// writes the lease key; a replica that had no epoch key gets one, as
    /// any request to it would.
    pub dry_run: bool,
    /// Called after each scanned page with the counters so far (e.g. an
    /// admin tool's progress bar). Runs on the pass's task: keep it short.
    pub progress: Option<ProgressFn>,
}

/// A progress callback of [`AntiEntropyOptions`].
pub type ProgressFn = Arc<dyn Fn(&PassStats) + Send + Sync>;

impl std::fmt::Debug for AntiEntropyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AntiEntropyOptions")
            .field("dry_run", &self.dry_run)
            .field("progress", &self.progress.as_ref().map(|_| "Fn"))
            .finish()
    }
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
    /// Runs one anti-entropy pass over every reachable replica and returns
    /// its report, or `None` if a pass is already running in this
    /// coordinator, or this coordinator could not take or keep the
    /// anti-entropy lease on a majority of the replicas (another app server
    /// runs a pass; counted in
    /// [`CoordinatorStats::anti_entropy_lease_refused`](crate::CoordinatorStats)).
    /// Cancellable: dropping the future stops the pass (nothing is marked
    /// complete then; the lease expires after
    /// [`AntiEntropyConfig::lease_ttl`](crate::AntiEntropyConfig)).
    pub async fn anti_entropy(&self) -> Option<AntiEntropyReport> {
        self.anti_entropy_with(AntiEntropyOptions::default()).await
    }

    /// As [`anti_entropy`](Self::anti_entropy), with options: a dry run
    /// (compare, report, write nothing) and a progress callback.
    pub async fn anti_entropy_with(
        &self,
        options: AntiEntropyOptions,
    ) -> Option<AntiEntropyReport> {
        if self.is_closing() {
            return None;
        }
        let running = &self.inner.anti_entropy_running;
        if running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let _guard = RunningGuard(running);
        if !self.hold_lease().await {
            // Given back everywhere, also where no grant was seen: one may
            // have been applied after its request timed out.
            self.release_lease().await;
            bump(&self.inner.counters.anti_entropy_lease_refused);
            metrics::counter(metrics::LEASE_REFUSALS, 1);
            debug!("anti-entropy lease held elsewhere: no pass");
            // Passes started by this coordinator wait a third of a lease
            // before asking again (on-demand calls do not wait).
            let lease_ms = duration_ms(self.config().anti_entropy.lease_ttl);
            self.inner
                .anti_entropy_not_before_ms
                .fetch_max(self.monotonic_ms() + lease_ms / 3, Ordering::Relaxed);
            return None;
        }
        // Released however the pass ended (a lost renewal included).
        let report = self.anti_entropy_leased(&options).await;
        self.release_lease().await;
        report
    }

    /// Takes or renews the anti-entropy lease on every replica that
    /// answers; true when a majority of the replicas granted it (the
    /// caller gives it back otherwise).
    async fn hold_lease(&self) -> bool {
        let (owner, ttl) = (self.inner.lease_owner, self.config().anti_entropy.lease_ttl);
        let granted = self
            .on_every_replica(|replica| async move { replica.acquire_lease(owner, ttl).await })
            .await
            .into_iter()
            .filter(|grant| matches!(grant, Ok(true)))
            .count();
        granted > self.replica_count() / 2
    }

    /// Gives the anti-entropy lease back on every replica (best effort: a
    /// replica that does not answer lets it expire).
    async fn release_lease(&self) {
        let owner = self.inner.lease_owner;
        self.on_every_replica(|replica| async move { replica.release_lease(owner).await })
            .await;
    }

    /// The pass itself, while the lease is held; `None` if it was lost.
    async fn anti_entropy_leased(&self, options: &AntiEntropyOptions) -> Option<AntiEntropyReport> {
        let started = Instant::now();
        let lease_ttl = self.config().anti_entropy.lease_ttl;
        let mut lease_renewed = Instant::now();
        let mut epochs = self.ping_all().await;
        // A write-only replica (joining or leaving) is a target, never a
        // source, and is not marked complete here (`docs/membership.md`).
        for (index, epoch) in epochs.iter_mut().enumerate() {
            if self.lock().epochs.is_write_only(index) {
                if let Some(epoch) = epoch {
                    epoch.complete = false;
                }
            }
        }
        let mut pass = AntiEntropyPass::new(&epochs, self.config().write_quorum);
        let config = self.config().anti_entropy.clone();
        let mut seen = SeenKeys::new(self.replica_count());
        let mut pending = PendingRepairs::default();
        let mut sent = vec![0u64; self.replica_count()];
        // Incomplete replicas (being refilled) are not read: they hold
        // nothing, or what this pass sends them (see `start_page`).
        let readable: Vec<bool> = epochs
            .iter()
            .map(|epoch| epoch.is_some_and(|e| e.complete))
            .collect();
        // The next page of the replica being scanned, scanned and being read
        // while the current one is compared and repaired.
        let mut ahead: Option<PageReads> = None;
        while let Some((index, cursor)) = pass.next_scan() {
            let cursor = cursor.to_owned();
            let page = match ahead.take() {
                Some(page) if page.scanned == index && page.cursor == cursor => page,
                _ => {
                    let start = self.start_page(&pass, &seen, &readable, index, cursor);
                    match start.await {
                        Ok(page) => page,
                        Err(error) => {
                            let replica = self.inner.replicas[index].name();
                            warn!(replica, %error, "anti-entropy scan failed: replica leaves the pass");
                            pass.on_replica(index, None);
                            continue;
                        }
                    }
                }
            };
            let next_cursor = page.next_cursor.clone();
            if let Some(next) = next_cursor.clone() {
                // A failed look-ahead is scanned again (and then fails) above.
                let start = self.start_page(&pass, &seen, &readable, index, next);
                ahead = start.await.ok();
            }
            let mut page_pass = PagePass {
                pass: &mut pass,
                seen: &mut seen,
                pending: &mut pending,
                sent: &mut sent,
                dry_run: options.dry_run,
            };
            self.finish_page(&mut page_pass, page).await;
            if pass.is_participant(index) {
                pass.on_page(index, next_cursor);
            }
            if let Some(progress) = &options.progress {
                progress(&pass.stats());
            }
            if self.is_closing() {
                // `Coordinator::shutdown`: the lease is released by the caller.
                info!("anti-entropy pass stopped: the coordinator shuts down");
                return None;
            }
            if !config.pause_between_pages.is_zero() {
                tokio::time::sleep(config.pause_between_pages).await;
            }
            if lease_renewed.elapsed() >= lease_ttl / 3 {
                if !self.hold_lease().await {
                    bump(&self.inner.counters.anti_entropy_lease_refused);
                    metrics::counter(metrics::LEASE_REFUSALS, 1);
                    warn!("anti-entropy lease lost: the pass stops");
                    return None;
                }
                lease_renewed = Instant::now();
            }
        }
        // Every repair answered before the pass decides anything.
        self.collect_repairs(&mut pass, &mut pending, 0).await;
        self.confirm_sources(&mut pass).await;
        let outcome = pass.finish();
        let sent_to = sent
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(index, &count)| (self.inner.replicas[index].name().to_owned(), count))
            .collect();
        if options.dry_run {
            return Some(AntiEntropyReport {
                stats: outcome.stats,
                covered: self.names(&outcome.covered),
                marked_complete: Vec::new(),
                elapsed: started.elapsed(),
                sent_to,
                dry_run: true,
            });
        }
        let mut marked_complete = Vec::new();
        for (index, epoch_id) in outcome.mark_complete {
            if self.lock().epochs.is_write_only(index) {
                continue;
            }
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
        metrics::counter(metrics::ANTI_ENTROPY_PASSES, 1);
        metrics::counter(
            metrics::ANTI_ENTROPY_KEYS_COMPARED,
            outcome.stats.keys_compared,
        );
        metrics::counter(
            metrics::ANTI_ENTROPY_KEYS_REPAIRED,
            outcome.stats.keys_repaired,
        );
        self.inner
            .counters
            .anti_entropy_records_sent
            .fetch_add(outcome.stats.records_sent, Ordering::Relaxed);
        Some(AntiEntropyReport {
            stats: outcome.stats,
            covered: self.names(&outcome.covered),
            marked_complete,
            elapsed: started.elapsed(),
            sent_to,
            dry_run: false,
        })
    }

    fn names(&self, indexes: &[ReplicaIndex]) -> Vec<String> {
        indexes
            .iter()
            .map(|&i| self.inner.replicas[i].name().to_owned())
            .collect()
    }

    /// Pings every source of the pass again once the scans and repairs are
    /// over ([`AntiEntropyPass::to_confirm`]): SCAN replies carry no epoch,
    /// so a source that restarted empty in the middle of its scan is only
    /// seen here, and then does not count toward a refill.
    async fn confirm_sources(&self, pass: &mut AntiEntropyPass) {
        let pings = pass.to_confirm().into_iter().map(|index| {
            let replica = self.inner.replicas[index].clone();
            async move { (index, self.call(index, replica.ping()).await.ok()) }
        });
        for (index, epoch) in futures::future::join_all(pings).await {
            if let Some(epoch) = epoch {
                self.observe_epoch(index, epoch);
            }
            pass.on_confirm(index, epoch);
        }
    }

    async fn ping_all(&self) -> Vec<Option<Epoch>> {
        let pings = self.on_every_replica(|replica| async move { replica.ping().await });
        let mut epochs = Vec::new();
        for (index, epoch) in pings.await.into_iter().enumerate() {
            let epoch = epoch.ok();
            if let Some(epoch) = epoch {
                self.observe_epoch(index, epoch);
            }
            epochs.push(epoch);
        }
        epochs
    }

    /// Scans one page of replica `scanned` from `cursor` and starts reading
    /// its keys ([`Coordinator::finish_page`] compares and repairs them):
    ///
    /// 1. keys already compared in this pass (held by a replica whose scan is
    ///    over: [`AntiEntropyPass::scanned_earlier`]) are skipped, from
    ///    memory ([`SeenKeys`]) rather than by reading them again;
    /// 2. the others are read from every complete participant and from the
    ///    scanned replica, [`BATCH_KEYS`] keys per request
    ///    ([`Replica::read_many`], one round trip on Redis), each batch a
    ///    task of its own (decoding runs in parallel). A participant in an
    ///    incomplete epoch (being refilled) is not read: its copy counts as
    ///    absent, so it is sent the join, which `merge_many` creates where
    ///    the key is absent and merges where it is not: the same result as
    ///    reading it first, without the read.
    ///
    /// # Errors
    ///
    /// The scan's error.
    ///
    /// [`Replica::read_many`]: crate::replica::Replica::read_many
    async fn start_page(
        &self,
        pass: &AntiEntropyPass,
        seen: &SeenKeys,
        readable: &[bool],
        scanned: ReplicaIndex,
        cursor: String,
    ) -> Result<PageReads, ReplicaError> {
        let replica = self.inner.replicas[scanned].clone();
        let count = self.config().anti_entropy.scan_batch;
        let page = self.call(scanned, replica.scan(&cursor, count)).await?;
        let mut keys = page.keys;
        keys.sort_unstable();
        keys.dedup(); // SCAN may return a key twice
        keys.retain(|key| !seen.compared_earlier(key, pass));
        let to_read: Vec<ReplicaIndex> = pass
            .participants()
            .into_iter()
            .filter(|&index| readable[index] || index == scanned)
            .collect();
        let reads = if keys.is_empty() {
            Vec::new()
        } else {
            self.spawn_reads(&to_read, &keys)
        };
        Ok(PageReads {
            scanned,
            cursor,
            next_cursor: page.next_cursor,
            keys,
            to_read,
            reads,
        })
    }

    /// Compares the keys of a page whose reads [`Coordinator::start_page`]
    /// started ([`AntiEntropyPass::compare_key`]) and starts sending the
    /// joins to their targets in batches ([`Replica::merge_many`]). A replica
    /// whose read or repair fails leaves the pass (it may lack what it was
    /// sent).
    ///
    /// [`Replica::merge_many`]: crate::replica::Replica::merge_many
    async fn finish_page(&self, page: &mut PagePass<'_>, reads: PageReads) {
        if reads.keys.is_empty() {
            return;
        }
        let keys = reads.keys;
        let copies = join_reads(reads.reads, keys.len()).await;
        let now_ms = self.now_ms();
        // Per key: the copy of each replica read, in `to_read` order.
        let mut per_key: Vec<Vec<(ReplicaIndex, Option<Record>)>> = keys
            .iter()
            .map(|_| Vec::with_capacity(reads.to_read.len() + 1))
            .collect();
        for (index, replies) in reads.to_read.iter().copied().zip(copies) {
            let mut epoch = None;
            for (slot, reply) in per_key.iter_mut().zip(replies) {
                match reply {
                    Ok(reply) => {
                        if epoch != Some(reply.epoch) {
                            epoch = Some(reply.epoch);
                            page.pass.on_replica(index, Some(reply.epoch));
                            self.observe_epoch(index, reply.epoch);
                        }
                        slot.push((index, reply.record));
                    }
                    Err(_) => page.pass.on_replica(index, None),
                }
            }
        }
        let mut repairs: Vec<Vec<(String, Arc<Record>)>> =
            (0..self.replica_count()).map(|_| Vec::new()).collect();
        let participants = page.pass.participants();
        for (key, mut copies) in keys.into_iter().zip(per_key) {
            copies.retain(|(index, _)| page.pass.is_participant(*index));
            page.seen.record(
                &key,
                copies.iter().filter(|(_, c)| c.is_some()).map(|(i, _)| *i),
            );
            // Participants not read count as holding nothing.
            for &index in &participants {
                if !copies.iter().any(|(read, _)| *read == index) {
                    copies.push((index, None));
                }
            }
            let borrowed: Vec<(ReplicaIndex, Option<&Record>)> = copies
                .iter()
                .map(|(index, copy)| (*index, copy.as_ref()))
                .collect();
            if let Some(repair) = page.pass.compare_key(&borrowed, now_ms) {
                let merged = Arc::new(repair.merged);
                for target in repair.targets {
                    repairs[target].push((key.clone(), merged.clone()));
                }
            }
        }
        for (count, items) in page.sent.iter_mut().zip(&repairs) {
            *count += items.len() as u64;
        }
        if page.dry_run {
            return;
        }
        self.start_repairs(page.pending, repairs, now_ms);
        self.collect_repairs(page.pass, page.pending, PENDING_REPAIR_BATCHES_MAX)
            .await;
    }

    /// Starts reading `keys` from each replica of `replicas` in batches of
    /// [`BATCH_KEYS`], each batch a task of its own.
    fn spawn_reads(&self, replicas: &[ReplicaIndex], keys: &[String]) -> Vec<Vec<ReadTask>> {
        replicas
            .iter()
            .map(|&index| {
                keys.chunks(BATCH_KEYS)
                    .map(|batch| {
                        let (this, batch) = (self.clone(), batch.to_vec());
                        let replica = self.inner.replicas[index].clone();
                        let count = batch.len();
                        let task = tokio::spawn(async move {
                            this.call_batch(index, count, replica.read_many(&batch))
                                .await
                        });
                        (count, task)
                    })
                    .collect()
            })
            .collect()
    }

    /// Starts sending each replica its repairs, in batches of
    /// [`BATCH_KEYS`], each batch a task of its own; their answers are
    /// collected later ([`Coordinator::collect_repairs`]), so that the next
    /// page is read while these are written.
    fn start_repairs(
        &self,
        pending: &mut PendingRepairs,
        repairs: Vec<Vec<(String, Arc<Record>)>>,
        now_ms: u64,
    ) {
        for (index, items) in repairs.into_iter().enumerate() {
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let batch: Vec<_> = items.by_ref().take(BATCH_KEYS).collect();
                let this = self.clone();
                let replica = self.inner.replicas[index].clone();
                let count = batch.len();
                let task = tokio::spawn(async move {
                    this.call_batch(index, count, replica.merge_many(&batch, now_ms))
                        .await
                });
                pending.0.push_back((index, count, task));
            }
        }
    }

    /// Waits for the repairs started until at most `keep` batches are still
    /// running, feeding their answers to the pass and the clock: a replica
    /// whose repair failed leaves the pass (it may lack what it was sent).
    async fn collect_repairs(
        &self,
        pass: &mut AntiEntropyPass,
        pending: &mut PendingRepairs,
        keep: usize,
    ) {
        while pending.0.len() > keep {
            let Some((index, count, task)) = pending.0.pop_front() else {
                break;
            };
            let mut failed = false;
            for reply in joined(task.await, count) {
                match reply {
                    Ok(reply) => {
                        pass.on_replica(index, Some(reply.epoch));
                        self.observe_epoch(index, reply.epoch);
                        if let Some(held) = reply.held_max {
                            self.observe_stamp(held);
                        }
                    }
                    Err(error) => {
                        if !failed {
                            debug!(replica = self.inner.replicas[index].name(), %error, "anti-entropy repair failed: the replica leaves the pass");
                        }
                        failed = true;
                    }
                }
            }
            if failed {
                pass.on_replica(index, None);
            }
        }
    }
}

/// The answers of read tasks: per replica, in key order.
async fn join_reads(
    reads: Vec<Vec<ReadTask>>,
    key_count: usize,
) -> Vec<Vec<Result<ReadReply, ReplicaError>>> {
    let mut answers = Vec::with_capacity(reads.len());
    for batches in reads {
        let mut replies = Vec::with_capacity(key_count);
        for (count, task) in batches {
            replies.extend(joined(task.await, count));
        }
        answers.push(replies);
    }
    answers
}

/// One batch of reads: `(keys, task)`.
type ReadTask = (
    usize,
    tokio::task::JoinHandle<Vec<Result<ReadReply, ReplicaError>>>,
);

/// A scanned page whose reads are under way.
struct PageReads {
    /// The replica scanned, the cursor the page was scanned from, and where
    /// its scan goes on.
    scanned: ReplicaIndex,
    cursor: String,
    next_cursor: Option<String>,
    /// The keys to compare (not compared earlier in the pass).
    keys: Vec<String>,
    /// The replicas being read, and their batches.
    to_read: Vec<ReplicaIndex>,
    reads: Vec<Vec<ReadTask>>,
}

/// The answers of a batch task, or (it panicked or was cancelled) an error
/// for each of its `count` keys.
fn joined<T>(
    result: Result<Vec<Result<T, ReplicaError>>, tokio::task::JoinError>,
    count: usize,
) -> Vec<Result<T, ReplicaError>> {
    result.unwrap_or_else(|error| {
        (0..count)
            .map(|_| {
                Err(ReplicaError::Refused {
                    detail: format!("anti-entropy batch task failed: {error}"),
                    source: None,
                })
            })
            .collect()
    })
}

/// Repair batches still running: `(replica, keys, task)`, oldest first.
/// Dropping it (a pass cancelled) cancels them.
#[derive(Default)]
struct PendingRepairs(std::collections::VecDeque<(ReplicaIndex, usize, PendingTask)>);

type PendingTask = tokio::task::JoinHandle<Vec<Result<crate::replica::MergeReply, ReplicaError>>>;

impl Drop for PendingRepairs {
    fn drop(&mut self) {
        for (_, _, task) in &self.0 {
            task.abort();
        }
    }
}

/// Repair batches a pass keeps running while it reads the next pages.
pub const PENDING_REPAIR_BATCHES_MAX: usize = 16;

impl Coordinator {
    /// Runs one batch request to replica `index` (answering `count` keys)
    /// under [`BATCH_TIMEOUT_FACTOR`] request deadlines, and feeds the
    /// health tracker once: a failure if any key failed for a reason that
    /// says the replica is unhealthy.
    async fn call_batch<T>(
        &self,
        index: ReplicaIndex,
        count: usize,
        request: impl std::future::Future<Output = Vec<Result<T, ReplicaError>>>,
    ) -> Vec<Result<T, ReplicaError>> {
        let deadline = self.inner.config.request_timeout * BATCH_TIMEOUT_FACTOR;
        let replies = match tokio::time::timeout(deadline, request).await {
            Ok(replies) if replies.len() == count => replies,
            Ok(_) => (0..count)
                .map(|_| {
                    Err(ReplicaError::Refused {
                        detail: "a batch answered another number of keys".into(),
                        source: None,
                    })
                })
                .collect(),
            Err(_) => (0..count)
                .map(|_| Err(ReplicaError::Timeout { after: deadline }))
                .collect(),
        };
        let unhealthy = replies.iter().find_map(|reply| match reply {
            Err(error) if error.is_health_failure() => Some(error),
            _ => None,
        });
        self.note_health(index, unhealthy.map_or(Ok(()), Err));
        replies
    }
}

/// A batch request may take longer than one request: its deadline is this
/// many `request_timeout`s.
pub const BATCH_TIMEOUT_FACTOR: u32 = 4;

/// Keys per `read_many` / `merge_many` request of a pass.
pub const BATCH_KEYS: usize = 256;

/// Most keys a pass remembers (about 100 bytes each); past it, the keys of
/// later scans are read again to tell whether they were compared already.
pub const SEEN_KEYS_MAX: usize = 4_000_000;

/// The keys compared so far in a pass and the replicas that held them then:
/// a key held by a replica whose scan is over was compared during that scan,
/// so the scans of the other replicas skip it without reading it.
struct SeenKeys {
    holders: HashMap<String, u64>,
    /// Replica indexes fit the bit mask (at most 64 replicas).
    enabled: bool,
}

impl SeenKeys {
    fn new(replica_count: usize) -> SeenKeys {
        SeenKeys {
            holders: HashMap::new(),
            enabled: replica_count <= 64,
        }
    }

    /// True when a replica that held `key` has been scanned in full and is
    /// still in the pass.
    fn compared_earlier(&self, key: &str, pass: &AntiEntropyPass) -> bool {
        let Some(&mask) = self.holders.get(key) else {
            return false;
        };
        (0..64).any(|index| mask & (1 << index) != 0 && pass.scanned_earlier(index))
    }

    fn record(&mut self, key: &str, holders: impl Iterator<Item = ReplicaIndex>) {
        if !self.enabled || self.holders.len() >= SEEN_KEYS_MAX {
            return;
        }
        let mask = holders.fold(0u64, |mask, index| mask | (1 << index));
        if mask != 0 {
            *self.holders.entry(key.to_owned()).or_insert(0) |= mask;
        }
    }
}

/// What `finish_page` needs of the pass in progress.
struct PagePass<'a> {
    pass: &'a mut AntiEntropyPass,
    seen: &'a mut SeenKeys,
    /// Repairs of earlier pages still being written.
    pending: &'a mut PendingRepairs,
    /// Records sent (or, in a dry run, to send) per replica.
    sent: &'a mut [u64],
    dry_run: bool,
}
