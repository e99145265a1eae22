//! Hinted handoff: bounded per-replica queues of the writes a replica missed.
//!
//! When a write could not reach a replica (it failed, timed out, or was
//! skipped because the replica is Down), the coordinator keeps a *hint*: the
//! key and the delta. When the replica is back, hints are replayed to it,
//! oldest first and rate-limited, with [`MergeMode::Upsert`]: the merge is a
//! join, so replaying a hint twice, late, or out of order changes nothing that
//! matters.
//!
//! Hints live in memory and are lost with their app server: they make repair
//! cheap, anti-entropy is what guarantees convergence. So every way a hint can
//! be lost here is counted and flags the replica as *needing anti-entropy*:
//!
//! - **overflow**: each queue is bounded in entries and in bytes; pushing past
//!   either bound drops the *oldest* hints (a hint larger than the whole byte
//!   bound is dropped itself);
//! - **age**: hints older than `age_max_ms` are dropped when the queue is next
//!   drained (a replica away longer than the tombstone grace must be wiped and
//!   refilled, never fed stale deltas).
//!
//! Hints for the same key are *coalesced*: a new delta is merged (the join)
//! into the hint already queued for that key, which keeps its place in the
//! queue and its age. So a replica that was down while one hot session was
//! written a thousand times costs one hint, not a thousand.
//!
//! Pure: `now_ms` is handed in; no clock, no I/O.
//!
//! [`MergeMode::Upsert`]: crate::replica::MergeMode::Upsert

use std::collections::{BTreeMap, VecDeque};

use super::ReplicaIndex;
use crate::record::Record;

/// Bounds and replay rate of the hint queues (per replica, per coordinator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintLimits {
    /// Most hints one replica's queue holds.
    pub entries_max: usize,
    /// Most bytes (keys plus [`Record::stored_size`]) one queue holds.
    pub bytes_max: usize,
    /// Hints older than this are dropped (set it to the tombstone grace).
    pub age_max_ms: u64,
    /// Sustained replay rate, hints per second per replica.
    pub replay_per_sec: u32,
    /// Most hints one replay batch may carry (the token-bucket depth).
    pub replay_burst: u32,
}

impl Default for HintLimits {
    fn default() -> Self {
        HintLimits {
            entries_max: 10_000,
            bytes_max: 16 * 1024 * 1024,
            age_max_ms: 24 * 60 * 60 * 1000,
            replay_per_sec: 2_000,
            replay_burst: 200,
        }
    }
}

/// One missed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The record's key.
    pub key: String,
    /// The delta to merge (the join of every coalesced delta).
    pub delta: Record,
    /// When the first delta of this hint was queued.
    pub enqueued_at_ms: u64,
}

impl Hint {
    /// The bytes this hint is charged against [`HintLimits::bytes_max`].
    pub fn size_bytes(&self) -> usize {
        self.key.len() + self.delta.stored_size()
    }
}

/// What [`HintQueues::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintPush {
    /// A new hint was queued.
    Queued,
    /// The delta was merged into the hint already queued for the key.
    Coalesced,
    /// The hint was queued (or coalesced) and `dropped` older hints were
    /// dropped to make room; the replica now needs anti-entropy.
    QueuedDroppingOldest {
        /// Hints dropped.
        dropped: usize,
    },
    /// The hint alone exceeds the byte bound and was dropped; the replica now
    /// needs anti-entropy.
    TooLarge,
}

/// Counters of one replica's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Deltas pushed (coalesced ones included).
    pub pushed_count: u64,
    /// Deltas merged into an existing hint.
    pub coalesced_count: u64,
    /// Hints handed out for replay (restored ones counted again).
    pub replayed_count: u64,
    /// Hints dropped by overflow.
    pub overflow_dropped_count: u64,
    /// Hints dropped for age.
    pub aged_dropped_count: u64,
}

/// Sequence numbers start here: restored hints take the numbers before the
/// front, so the numbering leaves this much room for them.
const RESTORE_SEQUENCE_ROOM: u64 = 1 << 62;

#[derive(Clone, Debug, Default)]
struct ReplicaHints {
    /// Oldest first. A slot is `None` once its hint left from the middle (a
    /// restored hint absorbed a newer one); empty slots are trimmed from the
    /// front.
    slots: VecDeque<Option<Hint>>,
    /// Sequence number of `slots[0]`.
    front_seq: u64,
    /// Hints in `slots`.
    len: usize,
    /// Key → its hint's sequence number (coalescing).
    by_key: BTreeMap<String, u64>,
    bytes: usize,
    /// Replay budget in thousandths of a hint (integer, so deterministic).
    tokens_milli: u64,
    last_refill_ms: Option<u64>,
    needs_anti_entropy: bool,
    stats: HintStats,
}

impl ReplicaHints {
    fn slot(&mut self, seq: u64) -> &mut Option<Hint> {
        let index = usize::try_from(seq - self.front_seq).expect("in range");
        &mut self.slots[index]
    }

    fn account(&mut self, hint: &Hint, seq: u64) {
        self.bytes += hint.size_bytes();
        self.len += 1;
        let previous = self.by_key.insert(hint.key.clone(), seq);
        assert!(previous.is_none(), "one hint per key");
    }

    /// Queues a hint behind every other.
    fn push_back(&mut self, hint: Hint) {
        let seq = self.front_seq + self.slots.len() as u64;
        self.account(&hint, seq);
        self.slots.push_back(Some(hint));
    }

    /// Queues a hint before every other.
    fn push_front(&mut self, hint: Hint) {
        assert!(self.front_seq > 0, "restore sequence numbers exhausted");
        self.front_seq -= 1;
        self.account(&hint, self.front_seq);
        self.slots.push_front(Some(hint));
    }

    fn remove(&mut self, seq: u64) -> Hint {
        let hint = self.slot(seq).take().expect("sequence is queued");
        let size = hint.size_bytes();
        assert!(self.bytes >= size, "byte count covers every queued hint");
        self.bytes -= size;
        self.len -= 1;
        self.by_key.remove(&hint.key);
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.front_seq += 1;
        }
        hint
    }

    /// Merges `delta` into the hint queued at `seq`, keeping its place.
    fn coalesce(&mut self, seq: u64, delta: &Record, now_ms: u64) {
        let hint = self.slot(seq).as_mut().expect("by_key points into slots");
        let before = hint.size_bytes();
        hint.delta.merge_from(delta, now_ms);
        let after = hint.size_bytes();
        self.bytes = self.bytes - before + after;
    }

    fn oldest(&self) -> Option<&Hint> {
        self.slots
            .front()
            .map(|slot| slot.as_ref().expect("the front slot is full"))
    }

    fn pop_oldest(&mut self) -> Option<Hint> {
        self.oldest()?;
        Some(self.remove(self.front_seq))
    }

    fn check(&self) {
        assert_eq!(self.len, self.by_key.len(), "one hint per key");
        assert!(self.len <= self.slots.len(), "every hint has a slot");
    }
}

/// The hint queues of one coordinator: one bounded queue per replica.
///
/// ```
/// use quorum_sessions::core::hints::{HintLimits, HintPush, HintQueues};
/// use quorum_sessions::Record;
/// let limits = HintLimits { entries_max: 2, ..HintLimits::default() };
/// let mut hints = HintQueues::new(3, limits);
/// let delta = Record::new(10_000, 20_000);
/// assert_eq!(hints.push(1, "s:{a}", &delta, 0), HintPush::Queued);
/// assert_eq!(hints.push(1, "s:{a}", &delta, 5), HintPush::Coalesced);
/// hints.push(1, "s:{b}", &delta, 6);
/// // A third key overflows: the oldest hint goes, and anti-entropy is due.
/// assert_eq!(hints.push(1, "s:{c}", &delta, 7), HintPush::QueuedDroppingOldest { dropped: 1 });
/// assert!(hints.needs_anti_entropy(1));
/// let batch = hints.take_batch(1, 1_000);
/// assert_eq!(batch.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(), ["s:{b}", "s:{c}"]);
/// ```
#[derive(Clone, Debug)]
pub struct HintQueues {
    replicas: Vec<ReplicaHints>,
    limits: HintLimits,
}

impl HintQueues {
    /// Empty queues for `replica_count` replicas.
    ///
    /// # Panics
    ///
    /// If a bound or the replay rate is zero (the configuration validation
    /// rejects them first).
    pub fn new(replica_count: usize, limits: HintLimits) -> HintQueues {
        assert!(limits.entries_max >= 1, "entries_max must be positive");
        assert!(limits.bytes_max >= 1, "bytes_max must be positive");
        assert!(
            limits.replay_per_sec >= 1,
            "replay_per_sec must be positive"
        );
        assert!(limits.replay_burst >= 1, "replay_burst must be positive");
        let full_bucket = ReplicaHints {
            tokens_milli: u64::from(limits.replay_burst) * 1000,
            front_seq: RESTORE_SEQUENCE_ROOM,
            ..ReplicaHints::default()
        };
        HintQueues {
            replicas: vec![full_bucket; replica_count],
            limits,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &HintLimits {
        &self.limits
    }

    /// Queues `delta` for `replica`, coalescing with the hint already queued
    /// for `key`, then enforces the bounds by dropping the oldest hints.
    pub fn push(
        &mut self,
        replica: ReplicaIndex,
        key: &str,
        delta: &Record,
        now_ms: u64,
    ) -> HintPush {
        let limits = self.limits.clone();
        let queue = &mut self.replicas[replica];
        queue.stats.pushed_count += 1;
        let coalesced = match queue.by_key.get(key) {
            Some(&seq) => {
                queue.coalesce(seq, delta, now_ms);
                queue.stats.coalesced_count += 1;
                true
            }
            None => {
                let hint = Hint {
                    key: key.to_owned(),
                    delta: delta.clone(),
                    enqueued_at_ms: now_ms,
                };
                if hint.size_bytes() > limits.bytes_max {
                    queue.stats.overflow_dropped_count += 1;
                    queue.needs_anti_entropy = true;
                    return HintPush::TooLarge;
                }
                queue.push_back(hint);
                false
            }
        };
        let mut dropped = 0;
        while queue.len > limits.entries_max || queue.bytes > limits.bytes_max {
            queue
                .pop_oldest()
                .expect("an over-bound queue is not empty");
            dropped += 1;
        }
        queue.check();
        if dropped > 0 {
            queue.stats.overflow_dropped_count += dropped as u64;
            queue.needs_anti_entropy = true;
            return HintPush::QueuedDroppingOldest { dropped };
        }
        if coalesced {
            HintPush::Coalesced
        } else {
            HintPush::Queued
        }
    }

    /// The next replay batch for `replica`, oldest first: first drops the
    /// hints older than `age_max_ms` (counted; anti-entropy due), then hands
    /// out as many hints as the token bucket allows. The driver sends them
    /// with `Upsert` and gives back the ones that failed with
    /// [`HintQueues::restore`].
    pub fn take_batch(&mut self, replica: ReplicaIndex, now_ms: u64) -> Vec<Hint> {
        let limits = self.limits.clone();
        let queue = &mut self.replicas[replica];
        while let Some(hint) = queue.oldest() {
            if now_ms.saturating_sub(hint.enqueued_at_ms) <= limits.age_max_ms {
                break;
            }
            queue.pop_oldest();
            queue.stats.aged_dropped_count += 1;
            queue.needs_anti_entropy = true;
        }
        // Refill the bucket: replay_per_sec hints per 1000 ms, i.e.
        // replay_per_sec thousandths of a hint per ms.
        let capacity = u64::from(limits.replay_burst) * 1000;
        let elapsed = queue
            .last_refill_ms
            .map_or(0, |last| now_ms.saturating_sub(last));
        queue.last_refill_ms = Some(now_ms.max(queue.last_refill_ms.unwrap_or(0)));
        queue.tokens_milli = capacity.min(
            queue
                .tokens_milli
                .saturating_add(elapsed.saturating_mul(u64::from(limits.replay_per_sec))),
        );
        let allowed = usize::try_from(queue.tokens_milli / 1000).unwrap_or(usize::MAX);
        let count = allowed.min(queue.len);
        let mut batch = Vec::with_capacity(count);
        for _ in 0..count {
            batch.push(queue.pop_oldest().expect("count is at most the length"));
        }
        queue.tokens_milli -= count as u64 * 1000;
        queue.stats.replayed_count += count as u64;
        queue.check();
        batch
    }

    /// Gives back hints whose replay failed. They return to the front of the
    /// queue, in their order and with their age (a newer hint queued for the
    /// same key meanwhile is merged into them); the bounds are enforced again.
    pub fn restore(&mut self, replica: ReplicaIndex, hints: Vec<Hint>, now_ms: u64) {
        let limits = self.limits.clone();
        let queue = &mut self.replicas[replica];
        // Newest first, each before the previous: they end up in order.
        for mut hint in hints.into_iter().rev() {
            if let Some(&newer_seq) = queue.by_key.get(&hint.key) {
                let newer = queue.remove(newer_seq);
                hint.delta.merge_from(&newer.delta, now_ms);
            }
            queue.push_front(hint);
        }
        let mut dropped = 0u64;
        while queue.len > limits.entries_max || queue.bytes > limits.bytes_max {
            queue
                .pop_oldest()
                .expect("an over-bound queue is not empty");
            dropped += 1;
        }
        if dropped > 0 {
            queue.stats.overflow_dropped_count += dropped;
            queue.needs_anti_entropy = true;
        }
        queue.check();
    }

    /// Hints queued for `replica`.
    pub fn len(&self, replica: ReplicaIndex) -> usize {
        self.replicas[replica].len
    }

    /// True when no hint is queued for `replica`.
    pub fn is_empty(&self, replica: ReplicaIndex) -> bool {
        self.replicas[replica].len == 0
    }

    /// Hints queued for every replica.
    pub fn total_len(&self) -> usize {
        self.replicas.iter().map(|q| q.len).sum()
    }

    /// Bytes queued for `replica`.
    pub fn bytes(&self, replica: ReplicaIndex) -> usize {
        self.replicas[replica].bytes
    }

    /// Counters of `replica`'s queue.
    pub fn stats(&self, replica: ReplicaIndex) -> HintStats {
        self.replicas[replica].stats
    }

    /// True when hints for `replica` were dropped since the last
    /// [`HintQueues::clear_anti_entropy`]: only an anti-entropy pass can
    /// bring it up to date.
    pub fn needs_anti_entropy(&self, replica: ReplicaIndex) -> bool {
        self.replicas[replica].needs_anti_entropy
    }

    /// An anti-entropy pass that began after the drops has covered `replica`.
    pub fn clear_anti_entropy(&mut self, replica: ReplicaIndex) {
        self.replicas[replica].needs_anti_entropy = false;
    }

    /// Discards every hint for `replica` (it is being wiped and refilled);
    /// returns how many were discarded. Not counted as dropped.
    pub fn clear(&mut self, replica: ReplicaIndex) -> usize {
        let queue = &mut self.replicas[replica];
        let count = queue.len;
        queue.front_seq += queue.slots.len() as u64;
        queue.slots.clear();
        queue.len = 0;
        queue.by_key.clear();
        queue.bytes = 0;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FieldEntry;
    use crate::stamp::Stamp;

    /// A delta with one field of `value_len` bytes written at `physical`.
    fn delta(field: &str, physical: u64, value_len: usize) -> Record {
        let mut record = Record::new(100_000, 200_000);
        record.partial = true;
        record.fields.insert(
            field.into(),
            FieldEntry::value(Stamp::new(physical, 0, 1), vec![b'x'; value_len]),
        );
        record
    }

    fn keys(batch: &[Hint]) -> Vec<&str> {
        batch.iter().map(|hint| hint.key.as_str()).collect()
    }

    fn limits(entries_max: usize, bytes_max: usize) -> HintLimits {
        HintLimits {
            entries_max,
            bytes_max,
            age_max_ms: 1_000,
            replay_per_sec: 1_000,
            replay_burst: 100,
        }
    }

    #[test]
    fn push_table() {
        use HintPush::*;
        let small = delta("a", 1, 1).stored_size() + 3; // key "s:x" + record
                                                        // (name, limits, pushes (key, value_len), outcomes, queue after (oldest first), AE due)
        type Case = (
            &'static str,
            HintLimits,
            Vec<(&'static str, usize)>,
            Vec<HintPush>,
            Vec<&'static str>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "distinct keys queue in order",
                limits(3, 1 << 20),
                vec![("s:a", 1), ("s:b", 1), ("s:c", 1)],
                vec![Queued, Queued, Queued],
                vec!["s:a", "s:b", "s:c"],
                false,
            ),
            (
                "same key coalesces and keeps its place",
                limits(3, 1 << 20),
                vec![("s:a", 1), ("s:b", 1), ("s:a", 1)],
                vec![Queued, Queued, Coalesced],
                vec!["s:a", "s:b"],
                false,
            ),
            (
                "entry bound drops the oldest",
                limits(2, 1 << 20),
                vec![("s:a", 1), ("s:b", 1), ("s:c", 1)],
                vec![Queued, Queued, QueuedDroppingOldest { dropped: 1 }],
                vec!["s:b", "s:c"],
                true,
            ),
            (
                "byte bound drops the oldest",
                limits(100, 2 * small + 10),
                vec![("s:a", 1), ("s:b", 1), ("s:c", 1)],
                vec![Queued, Queued, QueuedDroppingOldest { dropped: 1 }],
                vec!["s:b", "s:c"],
                true,
            ),
            (
                "a hint larger than the byte bound is dropped itself",
                limits(100, 2 * small),
                vec![("s:a", 1), ("s:b", 10_000)],
                vec![Queued, TooLarge],
                vec!["s:a"],
                true,
            ),
            (
                "coalescing that grows past the byte bound drops the oldest",
                limits(100, 2 * small + 10),
                vec![("s:a", 1), ("s:b", 1), ("s:b", 40)],
                vec![Queued, Queued, QueuedDroppingOldest { dropped: 1 }],
                vec!["s:b"],
                true,
            ),
        ];
        for (name, limits, pushes, outcomes, queued, anti_entropy) in cases {
            let mut hints = HintQueues::new(2, limits);
            let seen: Vec<HintPush> = pushes
                .iter()
                .enumerate()
                .map(|(i, &(key, len))| hints.push(1, key, &delta(key, i as u64, len), 0))
                .collect();
            assert_eq!(seen, outcomes, "{name}: outcomes");
            assert_eq!(hints.needs_anti_entropy(1), anti_entropy, "{name}: AE flag");
            assert!(hints.is_empty(0), "{name}: other replica untouched");
            let batch = hints.take_batch(1, 0);
            assert_eq!(keys(&batch), queued, "{name}: queue");
            assert_eq!(hints.bytes(1), 0, "{name}: bytes drained");
        }
    }

    #[test]
    fn coalesced_hint_holds_the_join() {
        let mut hints = HintQueues::new(1, limits(10, 1 << 20));
        hints.push(0, "s:a", &delta("x", 5, 1), 0);
        hints.push(0, "s:a", &delta("y", 6, 1), 1);
        hints.push(0, "s:a", &delta("x", 4, 2), 2); // older stamp: loses
        let batch = hints.take_batch(0, 10);
        assert_eq!(batch.len(), 1);
        let hint = &batch[0];
        assert_eq!(hint.enqueued_at_ms, 0, "age of the first delta");
        assert_eq!(hint.delta.fields["x"].stamp, Stamp::new(5, 0, 1));
        assert!(hint.delta.fields.contains_key("y"));
        assert_eq!(hints.stats(0).coalesced_count, 2);
    }

    #[test]
    fn old_hints_are_dropped_and_flag_anti_entropy() {
        let mut hints = HintQueues::new(1, limits(10, 1 << 20));
        hints.push(0, "s:a", &delta("x", 1, 1), 0);
        hints.push(0, "s:b", &delta("x", 1, 1), 500);
        let batch = hints.take_batch(0, 1_200); // s:a is 1200 ms old > 1000
        assert_eq!(keys(&batch), ["s:b"]);
        assert!(hints.needs_anti_entropy(0));
        assert_eq!(hints.stats(0).aged_dropped_count, 1);
        hints.clear_anti_entropy(0);
        assert!(!hints.needs_anti_entropy(0));
    }

    #[test]
    fn replay_is_rate_limited_by_a_token_bucket() {
        let limits = HintLimits {
            replay_per_sec: 1_000, // one per ms
            replay_burst: 3,
            ..limits(100, 1 << 20)
        };
        let mut hints = HintQueues::new(1, limits);
        for i in 0..10u64 {
            let key = format!("s:{i}");
            hints.push(0, &key, &delta("x", i, 1), 0);
        }
        // (now_ms, batch size): the bucket starts full (burst), refills one
        // hint per ms, and never holds more than the burst.
        let table = [(0, 3), (0, 0), (1, 1), (3, 2), (100, 3), (100, 0), (101, 1)];
        for (now, expected) in table {
            assert_eq!(hints.take_batch(0, now).len(), expected, "at {now} ms");
        }
        assert_eq!(hints.len(0), 0);
        assert_eq!(hints.stats(0).replayed_count, 10);
    }

    /// What the queue of one replica must hold: keys oldest first, each
    /// with the join of its deltas.
    #[derive(Default)]
    struct Model {
        queue: Vec<(String, Record)>,
        entries_max: usize,
    }

    impl Model {
        fn push(&mut self, key: &str, delta: &Record) {
            match self.queue.iter_mut().find(|(k, _)| k == key) {
                Some((_, held)) => held.merge_from(delta, 0),
                None => self.queue.push((key.to_owned(), delta.clone())),
            }
            while self.queue.len() > self.entries_max {
                self.queue.remove(0);
            }
        }

        fn take(&mut self, count: usize) -> Vec<(String, Record)> {
            self.queue.drain(..count.min(self.queue.len())).collect()
        }

        fn restore(&mut self, batch: Vec<(String, Record)>) {
            let mut front = Vec::new();
            for (key, mut delta) in batch {
                if let Some(position) = self.queue.iter().position(|(k, _)| *k == key) {
                    let (_, newer) = self.queue.remove(position);
                    delta.merge_from(&newer, 0);
                }
                front.push((key, delta));
            }
            front.append(&mut self.queue);
            self.queue = front;
            while self.queue.len() > self.entries_max {
                self.queue.remove(0);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn queues_match_a_naive_model(
            ops in proptest::collection::vec((0u8..4, 0u8..6, 1u64..40), 1..80),
        ) {
            let limits = HintLimits { entries_max: 4, replay_burst: 3, replay_per_sec: 1_000, ..limits(4, 1 << 20) };
            let mut hints = HintQueues::new(1, limits);
            let mut model = Model { entries_max: 4, ..Model::default() };
            let mut now = 0;
            let mut in_flight: Vec<Hint> = Vec::new();
            for (op, key, physical) in ops {
                now += 1;
                match op {
                    0 | 1 => {
                        let key = format!("s:{key}");
                        let delta = delta(if physical % 2 == 0 { "x" } else { "y" }, physical, 1);
                        hints.push(0, &key, &delta, now);
                        model.push(&key, &delta);
                    }
                    2 => {
                        let batch = hints.take_batch(0, now);
                        let expected = model.take(batch.len());
                        let got: Vec<(String, Record)> =
                            batch.iter().map(|h| (h.key.clone(), h.delta.clone())).collect();
                        proptest::prop_assert_eq!(got, expected);
                        in_flight = batch;
                    }
                    _ => {
                        let batch = std::mem::take(&mut in_flight);
                        model.restore(batch.iter().map(|h| (h.key.clone(), h.delta.clone())).collect());
                        hints.restore(0, batch, now);
                    }
                }
                proptest::prop_assert_eq!(hints.len(0), model.queue.len());
            }
            // Drain within the age bound (the model does not age hints).
            let rest: Vec<Hint> = (1..=4).flat_map(|i| hints.take_batch(0, now + 10 * i)).collect();
            let got: Vec<String> = rest.iter().map(|h| h.key.clone()).collect();
            let expected: Vec<String> = model.queue.iter().map(|(k, _)| k.clone()).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn failed_replays_return_to_the_front_in_order() {
        let mut hints = HintQueues::new(1, limits(10, 1 << 20));
        for (i, key) in ["s:a", "s:b", "s:c"].into_iter().enumerate() {
            hints.push(0, key, &delta("x", i as u64, 1), 0);
        }
        let limited = HintLimits {
            replay_burst: 2,
            ..limits(10, 1 << 20)
        };
        let mut two_at_a_time = HintQueues::new(1, limited);
        for (i, key) in ["s:a", "s:b", "s:c"].into_iter().enumerate() {
            two_at_a_time.push(0, key, &delta("x", i as u64, 1), 0);
        }
        let batch = two_at_a_time.take_batch(0, 0);
        assert_eq!(keys(&batch), ["s:a", "s:b"]);
        // Meanwhile a newer delta for s:a was queued behind s:c.
        two_at_a_time.push(0, "s:a", &delta("y", 9, 1), 1);
        two_at_a_time.restore(0, batch, 2);
        let again = two_at_a_time.take_batch(0, 500);
        assert_eq!(keys(&again), ["s:a", "s:b"], "restored at the front");
        assert!(
            again[0].delta.fields.contains_key("y"),
            "newer delta merged in"
        );
        assert_eq!(keys(&two_at_a_time.take_batch(0, 900)), ["s:c"]);
        assert_eq!(hints.clear(0), 3);
        assert_eq!(hints.total_len(), 0);
    }
}
