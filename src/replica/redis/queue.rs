//! Fewer, larger merge calls under load: merges for this replica wait in
//! one queue, and the merges that wait while calls are in flight leave
//! together as the next call (one `EVALSHA` with one key per record, one
//! epoch read; `merge.lua` answers each record on its own).
//!
//! No timer: a merge goes out at once when fewer than
//! [`MERGE_CALLS_IN_FLIGHT`] calls are in flight, so at low load every call
//! carries one record and costs what it cost before. A batch is bounded by
//! [`MERGE_BATCH_MAX_KEYS`] and [`MERGE_BATCH_MAX_BYTES`] (a longer script
//! call holds up the Redis server for everyone). Calls are sent by spawned
//! tasks, so a merge whose caller went away still goes (as a write's
//! merges still run at N − W) and never holds up the merges behind it.
//!
//! Deadlines: a merge's request timeout runs from when it is queued; one
//! still waiting when it has passed is answered
//! [`ReplicaError::Timeout`] and not sent. A call that fails as a whole
//! (timeout, lost connection, a script error) fails each of its merges with
//! the same error. Cluster mode sends one merge per call, as before (the
//! records of one call would have to share a hash slot).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::scripts::WireMerge;
use super::Inner;
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{MergeMode, MergeReply};

/// Default largest number of records in one merge call. A call of 32
/// typical records runs about a millisecond in Redis.
pub const MERGE_BATCH_MAX_KEYS: usize = 32;
/// Largest [`MERGE_BATCH_MAX_KEYS`] a configuration may set.
pub const MERGE_BATCH_KEYS_LIMIT: usize = 1024;
/// Largest argument bytes (keys and deltas) of one merge call; a larger
/// merge goes alone.
pub const MERGE_BATCH_MAX_BYTES: usize = 256 * 1024;
/// Default largest number of merge calls in flight per replica: two, so
/// that Redis runs one call while the next is on the way (measured: see
/// the module docs of `replica::redis`).
pub const MERGE_CALLS_IN_FLIGHT: usize = 2;
/// Largest number of merges waiting per replica; beyond, a merge fails at
/// once as [`ReplicaError::Unavailable`] (the replica cannot keep up: it
/// would miss its deadline anyway), counted in
/// [`MergeCallStats::refused_queue_full`].
pub const MERGE_QUEUE_MAX: usize = 8192;

const _: () = assert!(MERGE_BATCH_MAX_KEYS >= 1 && MERGE_BATCH_MAX_KEYS <= MERGE_BATCH_KEYS_LIMIT);
const _: () = assert!(MERGE_CALLS_IN_FLIGHT >= 1);

/// Counts of the merge calls a [`RedisReplica`](super::RedisReplica) made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeCallStats {
    /// Merge script calls sent.
    pub calls: u64,
    /// Records they carried.
    pub records: u64,
    /// Calls that carried more than one record.
    pub multi_record_calls: u64,
    /// The most records one call carried.
    pub largest_call: u64,
    /// Merges refused because [`MERGE_QUEUE_MAX`] merges already waited.
    pub refused_queue_full: u64,
    /// Merges that found a call slot free and left at once (the rest
    /// waited for a call in flight to end).
    pub sent_at_once: u64,
}

/// See [`MergeCallStats`].
#[derive(Debug, Default)]
pub(super) struct MergeCalls {
    calls: AtomicU64,
    records: AtomicU64,
    multi_record_calls: AtomicU64,
    largest_call: AtomicU64,
    refused_queue_full: AtomicU64,
    pub(super) sent_at_once: AtomicU64,
}

impl MergeCalls {
    /// Notes one call of `records` records.
    pub(super) fn note(&self, records: usize) {
        let records = records as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        if records > 1 {
            self.multi_record_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.largest_call.fetch_max(records, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> MergeCallStats {
        MergeCallStats {
            calls: self.calls.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            multi_record_calls: self.multi_record_calls.load(Ordering::Relaxed),
            largest_call: self.largest_call.load(Ordering::Relaxed),
            refused_queue_full: self.refused_queue_full.load(Ordering::Relaxed),
            sent_at_once: self.sent_at_once.load(Ordering::Relaxed),
        }
    }
}

/// The merges waiting for a call, and the calls in flight.
#[derive(Debug)]
pub(super) struct MergeQueue {
    state: Mutex<QueueState>,
    max_keys: usize,
    calls_in_flight: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: VecDeque<Queued>,
    in_flight: usize,
}

#[derive(Debug)]
struct Queued {
    merge: WireMerge,
    deadline: Instant,
    reply: oneshot::Sender<Result<MergeReply, ReplicaError>>,
}

impl std::fmt::Debug for WireMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireMerge")
            .field("key", &super::wire::short_key(&self.key))
            .field("size", &self.size)
            .finish()
    }
}

impl MergeQueue {
    pub(super) fn new(max_keys: usize, calls_in_flight: usize) -> MergeQueue {
        assert!(max_keys >= 1, "a merge call carries a record");
        assert!(calls_in_flight >= 1, "a merge call may be in flight");
        MergeQueue {
            state: Mutex::new(QueueState::default()),
            max_keys,
            calls_in_flight,
        }
    }

    /// False when every merge goes alone, at once, from its caller.
    pub(super) fn batches(&self) -> bool {
        self.max_keys > 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call's merges, from the front of the queue within the
    /// bounds; the ones past their deadline are answered `Timeout` and
    /// dropped. Empty when nothing (live) waits.
    fn take_batch(&self, state: &mut QueueState, timeout: std::time::Duration) -> Vec<Queued> {
        let now = Instant::now();
        let mut batch: Vec<Queued> = Vec::new();
        let mut bytes = 0;
        while let Some(front) = state.waiting.front() {
            let late = front.deadline <= now;
            let full = !batch.is_empty()
                && (batch.len() >= self.max_keys
                    || bytes + front.merge.size > MERGE_BATCH_MAX_BYTES);
            if full && !late {
                break;
            }
            let queued = state.waiting.pop_front().expect("a front");
            if late {
                let _ = queued
                    .reply
                    .send(Err(ReplicaError::Timeout { after: timeout }));
                continue;
            }
            bytes += queued.merge.size;
            batch.push(queued);
        }
        assert!(batch.len() <= self.max_keys);
        batch
    }
}

/// Gives the in-flight slot of a sender back if it ends early (a panic, a
/// runtime shutting down): the queue never stalls.
struct Slot<'a> {
    queue: &'a MergeQueue,
    held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.queue.lock().in_flight -= 1;
        }
    }
}

impl Inner {
    /// `Replica::merge`: queued and sent in a call with the merges waiting
    /// with it (see the module docs).
    pub(super) async fn merge_queued(
        self: &Arc<Self>,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        let merge = self.encode_merge(key, delta, mode, now_ms)?;
        if self.clustered || !self.merges.batches() {
            let mut replies = self.merge_call(std::slice::from_ref(&merge)).await;
            return replies.pop().expect("one reply per merge");
        }
        let deadline = Instant::now() + self.timeout;
        let (reply, answer) = oneshot::channel();
        let batch = {
            let mut state = self.merges.lock();
            if state.waiting.len() >= MERGE_QUEUE_MAX {
                drop(state);
                self.merge_calls
                    .refused_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ReplicaError::Unavailable {
                    detail: format!(
                        "{}: {MERGE_QUEUE_MAX} merges already wait: overloaded",
                        self.name
                    ),
                    source: None,
                });
            }
            state.waiting.push_back(Queued {
                merge,
                deadline,
                reply,
            });
            if state.in_flight < self.merges.calls_in_flight {
                state.in_flight += 1;
                Some(self.merges.take_batch(&mut state, self.timeout))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            self.merge_calls
                .sent_at_once
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().send_merges(batch));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ReplicaError::Unavailable {
                detail: format!("{}: the merge was dropped unsent", self.name),
                source: None,
            }),
            Err(_) => Err(ReplicaError::Timeout {
                after: self.timeout,
            }),
        }
    }

    /// Sends `batch` as one call, then the merges that queued meanwhile,
    /// until none waits; holds one in-flight slot throughout.
    async fn send_merges(self: Arc<Self>, mut batch: Vec<Queued>) {
        let mut slot = Slot {
            queue: &self.merges,
            held: true,
        };
        while !batch.is_empty() {
            let (merges, replies): (Vec<WireMerge>, Vec<_>) = batch
                .into_iter()
                .map(|queued| (queued.merge, queued.reply))
                .unzip();
            let answers = self.merge_call(&merges).await;
            assert_eq!(answers.len(), replies.len(), "one answer per merge");
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have gone (its deadline, or dropped).
                let _ = reply.send(answer);
            }
            let mut state = self.merges.lock();
            batch = self.merges.take_batch(&mut state, self.timeout);
            if batch.is_empty() {
                state.in_flight -= 1;
                slot.held = false;
            }
        }
    }
}
