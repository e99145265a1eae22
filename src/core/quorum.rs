//! Write tally: acknowledgements and failures in, an outcome out.

use super::ReplicaIndex;

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
    /// W can no longer be reached.
    Failed,
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
        }
    }

    /// Records replica `index`'s reply and returns the outcome so far.
    ///
    /// # Panics
    ///
    /// If `index` is out of range or replied twice (a driver bug).
    pub fn record(&mut self, index: ReplicaIndex, reply: WriteReply) -> WriteOutcome {
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
        self.outcome()
    }

    /// The outcome so far. Gone and Collision win over Reached: a tombstone
    /// seen anywhere means the record is deleted.
    pub fn outcome(&self) -> WriteOutcome {
        if self.gone {
            return WriteOutcome::Gone;
        }
        if self.exists {
            return WriteOutcome::Collision;
        }
        if self.acked_count >= self.needed {
            return WriteOutcome::Reached;
        }
        let answered = self.replied.iter().filter(|r| r.is_some()).count();
        let still_possible = self.acked_count + (self.replica_count - answered);
        if still_possible < self.needed {
            return WriteOutcome::Failed;
        }
        WriteOutcome::Pending
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
