//! Write tally: acknowledgements and failures in, an outcome out.
//!
//! An *ordered* write (one that writes fields, see [`WriteTally::ordered`])
//! waits for W acknowledgements *and* N − W + 1 from complete replicas: every
//! write acknowledged before it began is held by one of those, so their
//! largest held stamp covers them all. If an acker held a stamp above the
//! write's, the outcome is [`WriteOutcome::Restamp`]: stamp again above it
//! and write once more (two rounds at most), so acknowledgement order and
//! stamp order agree. The argument and what it assumes: `docs/epochs.md`,
//! claim 10.

use super::ReplicaIndex;
use crate::stamp::Stamp;

/// One replica's reply to a write, as the tally sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteReply {
    /// Merged.
    Applied,
    /// The record is a tombstone; nothing written.
    Gone,
    /// A conditional create found another record.
    Exists,
    /// Error, timeout, or skipped because known down.
    Failed,
}

/// Where a write stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// More replies are needed.
    Pending,
    /// W replicas acknowledged.
    Reached,
    /// A replica holds a tombstone: the write is refused (delete wins).
    Gone,
    /// A conditional create met another record.
    Collision,
    /// W can no longer be reached (for an ordered write: or N − W + 1
    /// acknowledgements from complete replicas).
    Failed,
    /// An ordered write reached its acknowledgements, but an acker held a
    /// stamp above the write's (`above`: the largest held): the write must
    /// be stamped again above it and sent again before it may be
    /// acknowledged.
    Restamp {
        /// The largest stamp an acker held.
        above: Stamp,
    },
}

/// What an ordered write must be acknowledged above.
#[derive(Clone, Copy, Debug)]
struct Order {
    stamp: Stamp,
    complete_needed: usize,
}

/// Counts the replies of one write.
///
/// ```
/// use quorum_sessions::core::quorum::{WriteTally, WriteReply, WriteOutcome};
/// let mut tally = WriteTally::new(2, 3);
/// assert_eq!(tally.record(0, WriteReply::Applied), WriteOutcome::Pending);
/// assert_eq!(tally.record(2, WriteReply::Failed), WriteOutcome::Pending);
/// assert_eq!(tally.record(1, WriteReply::Applied), WriteOutcome::Reached);
/// ```
#[derive(Clone, Debug)]
pub struct WriteTally {
    needed: usize,
    replica_count: usize,
    replied: Vec<Option<WriteReply>>,
    acked_count: usize,
    failed_count: usize,
    gone: bool,
    exists: bool,
    order: Option<Order>,
    complete_acked: usize,
    held_above: Option<Stamp>,
}

impl WriteTally {
    /// A tally needing `needed` acknowledgements out of `replica_count`.
    ///
    /// # Panics
    ///
    /// Unless `1 <= needed <= replica_count` (the config validation ensures it).
    pub fn new(needed: usize, replica_count: usize) -> WriteTally {
        assert!(needed >= 1, "W must be at least 1");
        assert!(needed <= replica_count, "W must not exceed N");
        WriteTally {
            needed,
            replica_count,
            replied: vec![None; replica_count],
            acked_count: 0,
            failed_count: 0,
            gone: false,
            exists: false,
            order: None,
            complete_acked: 0,
            held_above: None,
        }
    }

    /// Makes this an ordered write of `stamp` (see the module docs): it is
    /// acknowledged only when `complete_needed` (N − W + 1) acknowledgements
    /// came from complete replicas and no acker held a stamp above `stamp`.
    pub fn ordered(mut self, stamp: Stamp, complete_needed: usize) -> WriteTally {
        self.order = Some(Order {
            stamp,
            complete_needed: complete_needed.clamp(1, self.replica_count),
        });
        self
    }

    /// Records replica `index`'s acknowledgement: the largest stamp the
    /// record held before the merge, and whether the replica's epoch is
    /// complete (for this coordinator). Returns the outcome so far.
    ///
    /// # Panics
    ///
    /// As [`record`](Self::record).
    pub fn record_ack(
        &mut self,
        index: ReplicaIndex,
        held_max: Option<Stamp>,
        complete: bool,
    ) -> WriteOutcome {
        self.note(index, WriteReply::Applied);
        self.complete_acked += usize::from(complete);
        if let Some(order) = self.order {
            if let Some(held) = held_max.filter(|&held| held > order.stamp) {
                self.held_above = self.held_above.max(Some(held));
            }
        }
        self.outcome()
    }

    /// Records replica `index`'s reply and returns the outcome so far. An
    /// `Applied` recorded here counts as an acknowledgement from a complete
    /// replica that held nothing above the write (see
    /// [`record_ack`](Self::record_ack)).
    ///
    /// # Panics
    ///
    /// If `index` is out of range or replied twice (a driver bug).
    pub fn record(&mut self, index: ReplicaIndex, reply: WriteReply) -> WriteOutcome {
        if reply == WriteReply::Applied {
            return self.record_ack(index, None, true);
        }
        self.note(index, reply);
        self.outcome()
    }

    fn note(&mut self, index: ReplicaIndex, reply: WriteReply) {
        assert!(index < self.replica_count, "replica index out of range");
        assert!(self.replied[index].is_none(), "replica replied twice");
        self.replied[index] = Some(reply);
        match reply {
            WriteReply::Applied => self.acked_count += 1,
            WriteReply::Failed => self.failed_count += 1,
            WriteReply::Gone => self.gone = true,
            WriteReply::Exists => self.exists = true,
        }
        assert!(self.acked_count + self.failed_count <= self.replica_count);
    }

    /// The outcome so far. Gone and Collision win over everything: a
    /// tombstone seen anywhere means the record is deleted. An ordered write
    /// that reached its acknowledgements but that an acker held a larger
    /// stamp for must be stamped again.
    pub fn outcome(&self) -> WriteOutcome {
        if self.gone {
            return WriteOutcome::Gone;
        }
        if self.exists {
            return WriteOutcome::Collision;
        }
        let complete_needed = self.order.map_or(0, |o| o.complete_needed);
        if self.acked_count >= self.needed && self.complete_acked >= complete_needed {
            return match self.held_above {
                Some(above) => WriteOutcome::Restamp { above },
                None => WriteOutcome::Reached,
            };
        }
        let answered = self.replied.iter().filter(|r| r.is_some()).count();
        let unanswered = self.replica_count - answered;
        if self.acked_count + unanswered < self.needed
            || self.complete_acked + unanswered < complete_needed
        {
            return WriteOutcome::Failed;
        }
        WriteOutcome::Pending
    }

    /// What a failed write reports: the acknowledgements it needed and those
    /// it had — W and all acknowledgements while fewer than W came, else an
    /// ordered write's N − W + 1 and those from complete replicas.
    pub fn shortfall(&self) -> (usize, usize) {
        match self.order {
            Some(order) if self.acked_count >= self.needed => {
                (order.complete_needed, self.complete_acked)
            }
            _ => (self.needed, self.acked_count),
        }
    }

    /// The acknowledgements this write needs, as a failure reports them:
    /// W, or for an ordered write N − W + 1 from complete replicas when
    /// that is more.
    pub fn needed_total(&self) -> usize {
        self.order
            .map_or(self.needed, |o| self.needed.max(o.complete_needed))
    }

    /// Acknowledgements so far.
    pub fn acked_count(&self) -> usize {
        self.acked_count
    }

    /// W.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Replicas that failed (or were skipped), in index order.
    pub fn failed(&self) -> Vec<ReplicaIndex> {
        self.indexes_where(|r| r == WriteReply::Failed)
    }

    /// Replicas that have not replied yet.
    pub fn unanswered(&self) -> Vec<ReplicaIndex> {
        (0..self.replica_count)
            .filter(|&i| self.replied[i].is_none())
            .collect()
    }

    fn indexes_where(&self, keep: impl Fn(WriteReply) -> bool) -> Vec<ReplicaIndex> {
        (0..self.replica_count)
            .filter(|&i| self.replied[i].is_some_and(&keep))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::WriteOutcome as O;
    use super::WriteReply as R;
    use super::*;

    #[test]
    fn tally_table() {
        // (W, N, replies in arrival order, outcome after each reply)
        // (W, N, replies in arrival order, outcome after each reply)
        type Case = (usize, usize, Vec<(usize, WriteReply)>, Vec<WriteOutcome>);
        let cases: Vec<Case> = vec![
            (
                2,
                3,
                vec![(0, R::Applied), (1, R::Applied)],
                vec![O::Pending, O::Reached],
            ),
            (
                2,
                3,
                vec![(0, R::Failed), (1, R::Applied), (2, R::Applied)],
                vec![O::Pending, O::Pending, O::Reached],
            ),
            (
                2,
                3,
                vec![(0, R::Failed), (1, R::Failed)],
                vec![O::Pending, O::Failed],
            ),
            (
                2,
                3,
                vec![(0, R::Applied), (1, R::Failed), (2, R::Failed)],
                vec![O::Pending, O::Pending, O::Failed],
            ),
            (1, 3, vec![(2, R::Applied)], vec![O::Reached]),
            (
                3,
                3,
                vec![(0, R::Applied), (1, R::Applied), (2, R::Failed)],
                vec![O::Pending, O::Pending, O::Failed],
            ),
            (
                2,
                3,
                vec![(0, R::Applied), (1, R::Gone)],
                vec![O::Pending, O::Gone],
            ),
            (
                2,
                3,
                vec![(0, R::Applied), (1, R::Applied), (2, R::Gone)],
                vec![O::Pending, O::Reached, O::Gone],
            ),
            (2, 3, vec![(0, R::Exists)], vec![O::Collision]),
            (
                3,
                5,
                vec![
                    (0, R::Failed),
                    (1, R::Failed),
                    (2, R::Applied),
                    (3, R::Applied),
                    (4, R::Applied),
                ],
                vec![O::Pending, O::Pending, O::Pending, O::Pending, O::Reached],
            ),
            (
                3,
                5,
                vec![(0, R::Failed), (1, R::Failed), (2, R::Failed)],
                vec![O::Pending, O::Pending, O::Failed],
            ),
        ];
        for (w, n, replies, expected) in cases {
            let mut tally = WriteTally::new(w, n);
            let seen: Vec<_> = replies.iter().map(|&(i, r)| tally.record(i, r)).collect();
            assert_eq!(seen, expected, "W={w} N={n} replies={replies:?}");
        }
    }

    /// Ordered writes (N=3, W=2, so N − W + 1 = 2 complete acks; N=3, W=1
    /// needs 3): the outcome after each acknowledgement `(index, held_max,
    /// complete)` or failure.
    #[test]
    fn ordered_tally_table() {
        let s = |physical: u64| Stamp::new(physical, 0, 1);
        let mine = s(10);
        type Reply = (usize, Option<Option<u64>>, bool);
        // (W, N, replies: (index, Some(held) = ack / None = failed, complete), outcomes)
        let cases: Vec<(usize, usize, Vec<Reply>, Vec<WriteOutcome>)> = vec![
            (
                2,
                3,
                vec![(0, Some(None), true), (1, Some(Some(5)), true)],
                vec![O::Pending, O::Reached],
            ),
            // A larger held stamp is acted on once the quorum is in: the
            // quorum's largest stamp covers every write acknowledged before.
            (
                2,
                3,
                vec![(0, Some(Some(20)), true), (1, Some(Some(25)), true)],
                vec![O::Pending, O::Restamp { above: s(25) }],
            ),
            (
                2,
                3,
                vec![
                    (0, Some(None), true),
                    (1, Some(None), false),
                    (2, Some(Some(30)), true),
                ],
                vec![O::Pending, O::Pending, O::Restamp { above: s(30) }],
            ),
            // An acknowledgement from a replica being refilled does not order.
            (
                2,
                3,
                vec![
                    (0, Some(None), true),
                    (1, Some(None), false),
                    (2, Some(None), true),
                ],
                vec![O::Pending, O::Pending, O::Reached],
            ),
            (
                2,
                3,
                vec![
                    (0, Some(None), false),
                    (1, Some(None), true),
                    (2, None, false),
                ],
                vec![O::Pending, O::Pending, O::Failed],
            ),
            (
                2,
                3,
                vec![
                    (0, Some(Some(20)), true),
                    (1, None, false),
                    (2, None, false),
                ],
                vec![O::Pending, O::Pending, O::Failed],
            ),
            // W = 1 needs every replica's answer to order a field update.
            (
                1,
                3,
                vec![
                    (0, Some(None), true),
                    (1, Some(None), true),
                    (2, Some(None), true),
                ],
                vec![O::Pending, O::Pending, O::Reached],
            ),
            (
                1,
                3,
                vec![(0, Some(None), true), (1, None, false)],
                vec![O::Pending, O::Failed],
            ),
        ];
        for (w, n, replies, expected) in cases {
            let needed = n - w + 1;
            let mut tally = WriteTally::new(w, n).ordered(mine, needed);
            let seen: Vec<_> = replies
                .iter()
                .map(|&(index, ack, complete)| match ack {
                    Some(held) => tally.record_ack(index, held.map(s), complete),
                    None => tally.record(index, R::Failed),
                })
                .collect();
            assert_eq!(seen, expected, "W={w} N={n} replies={replies:?}");
        }
        let mut short = WriteTally::new(2, 3).ordered(mine, 2);
        short.record_ack(0, None, true);
        short.record_ack(1, None, false);
        short.record(2, R::Failed);
        assert_eq!(
            short.shortfall(),
            (2, 1),
            "complete acknowledgements reported"
        );
    }

    #[test]
    fn failures_and_unanswered_are_listed() {
        let mut tally = WriteTally::new(2, 3);
        tally.record(1, R::Failed);
        tally.record(0, R::Applied);
        assert_eq!(tally.failed(), vec![1]);
        assert_eq!(tally.unanswered(), vec![2]);
        assert_eq!(tally.acked_count(), 1);
    }

    #[test]
    #[should_panic(expected = "replied twice")]
    fn a_second_reply_from_one_replica_is_a_driver_bug() {
        let mut tally = WriteTally::new(2, 3);
        tally.record(0, R::Applied);
        tally.record(0, R::Applied);
    }
}
