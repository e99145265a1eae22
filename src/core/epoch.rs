//! Which replicas may be read, from the epochs their replies carry.
//!
//! A replica is *readable* (its misses count toward "not found", it may be the
//! first read target) only when its current epoch is complete. A changed epoch
//! (restart empty, failover, restore from a snapshot: each makes a new random
//! id, see the `redis` replica's run-id check) makes it write-only until it is
//! refilled and marked complete again (`docs/epochs.md`, claims 4 to 6).
//!
//! Epoch ids are random and never made twice, so once a replica was seen in
//! E2 after E1, E1 cannot come back: a later reply carrying E1 is a *late*
//! reply (processed before the change, delivered or handled after it: the
//! anti-entropy connection's look-ahead page reads and pending repair
//! batches cross restarts). Such a reply is [`EpochChange::Stale`]: counted,
//! and it changes nothing (it neither becomes current nor retires E2).
//!
//! What the table cannot tell: a late reply of an old epoch this coordinator
//! never saw (its first reply from the replica already carried E2, and an E1
//! reply arrives after it). Ids carry no order, so E1 then looks like a
//! restart into a new epoch and is taken as [`EpochChange::Changed`]: E1
//! becomes current with the completeness it carried, E2 is retired and the
//! replica's later (real) E2 replies are [`EpochChange::Stale`]. Callers
//! count a miss only from a reply whose own epoch is complete, so this does
//! not make a miss count that should not; but the replica's readability here
//! follows the late E1 until this coordinator marks an epoch complete
//! ([`EpochTable::mark_complete`]: its own refill, or the operator's
//! `accept_data_loss`). If E1 was incomplete and another app server refilled
//! E2, this coordinator keeps the replica out of its read quorums until then.
//! Telling the two orders apart needs the table's state when each request
//! was sent, not the ids its reply carries.

use super::ReplicaIndex;
use crate::replica::Epoch;

/// What an observed epoch changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochChange {
    /// Same epoch as before (or its completion).
    Same,
    /// First epoch seen from this replica.
    First,
    /// Another epoch than before, never seen from this replica: the replica
    /// lost or may have lost data. The previous epoch is retired.
    Changed,
    /// An epoch this coordinator saw replaced: a late reply. Counted
    /// ([`EpochTable::stale_replies`]); the current epoch stays as it was.
    Stale,
}

#[derive(Clone, Debug, Default)]
struct ReplicaEpoch {
    current: Option<Epoch>,
    /// Ids seen and replaced, oldest first (never the current one): a reply
    /// carrying one is a late reply.
    retired: Vec<u64>,
    /// Replies that carried a retired id.
    stale_replies: u64,
}

impl ReplicaEpoch {
    /// Remembers `id` as replaced, forgetting the oldest beyond the bound.
    fn retire(&mut self, id: u64) {
        if self.retired.len() == RETIRED_EPOCHS_MAX {
            self.retired.remove(0);
        }
        self.retired.push(id);
    }
}

/// Bound on the retired ids remembered per replica. A late reply of an id
/// dropped from the list (more changes than this while it was in flight) is
/// taken as [`EpochChange::Changed`].
pub const RETIRED_EPOCHS_MAX: usize = 16;

/// Epochs of every replica of one coordinator.
#[derive(Clone, Debug)]
pub struct EpochTable {
    replicas: Vec<ReplicaEpoch>,
    /// Replicas this coordinator never reads, whatever their epoch: joining
    /// or leaving the cluster ([`ClusterConfig::write_only`]).
    ///
    /// [`ClusterConfig::write_only`]: crate::ClusterConfig::write_only
    write_only: Vec<bool>,
}

impl EpochTable {
    /// Nothing known yet: no replica is readable until its first reply.
    pub fn new(replica_count: usize) -> EpochTable {
        EpochTable {
            replicas: vec![ReplicaEpoch::default(); replica_count],
            write_only: vec![false; replica_count],
        }
    }

    /// Makes replica `index` write-only for this coordinator: never
    /// readable, whatever its epoch (a membership change, `docs/membership.md`).
    pub fn set_write_only(&mut self, index: ReplicaIndex) {
        self.write_only[index] = true;
    }

    /// True for a replica made write-only by [`EpochTable::set_write_only`].
    pub fn is_write_only(&self, index: ReplicaIndex) -> bool {
        self.write_only[index]
    }

    /// Records the epoch a reply carried. The current epoch's completeness
    /// is only ever gained (through a reply or [`EpochTable::mark_complete`]):
    /// a reply of the same epoch sent before its completion cannot clear it.
    /// A retired epoch is [`EpochChange::Stale`] and changes nothing.
    pub fn observe(&mut self, index: ReplicaIndex, epoch: Epoch) -> EpochChange {
        let replica = &mut self.replicas[index];
        match &mut replica.current {
            None => {
                replica.current = Some(epoch);
                EpochChange::First
            }
            Some(current) if current.id == epoch.id => {
                current.complete |= epoch.complete;
                EpochChange::Same
            }
            Some(_) if replica.retired.contains(&epoch.id) => {
                replica.stale_replies += 1;
                EpochChange::Stale
            }
            Some(current) => {
                let replaced = current.id;
                replica.retire(replaced);
                replica.current = Some(epoch);
                EpochChange::Changed
            }
        }
    }

    /// The replica's epoch id was marked complete on the replica (after a
    /// refill, or by the operator): it becomes current and complete, even if
    /// it was retired, and a different current epoch is retired. The mark
    /// request was sent after a pass (or a ping) that saw `epoch_id`, so its
    /// success is the replica's latest known state; if it was itself late
    /// (processed before a restart whose reply was handled first), the
    /// replica stays readable here while its real epoch's replies are
    /// [`EpochChange::Stale`], and callers still count only misses from
    /// replies that are complete themselves.
    pub fn mark_complete(&mut self, index: ReplicaIndex, epoch_id: u64) {
        let replica = &mut self.replicas[index];
        replica.retired.retain(|&id| id != epoch_id);
        if let Some(current) = replica.current.filter(|c| c.id != epoch_id) {
            replica.retire(current.id);
        }
        replica.current = Some(Epoch {
            id: epoch_id,
            complete: true,
        });
    }

    /// True when the replica's misses count and it may be read first: its
    /// epoch is complete and it is not write-only.
    pub fn is_readable(&self, index: ReplicaIndex) -> bool {
        !self.write_only[index] && self.replicas[index].current.is_some_and(|e| e.complete)
    }

    /// The last epoch seen (late replies aside).
    pub fn current(&self, index: ReplicaIndex) -> Option<Epoch> {
        self.replicas[index].current
    }

    /// Replies from the replica that carried a retired epoch.
    pub fn stale_replies(&self, index: ReplicaIndex) -> u64 {
        self.replicas[index].stale_replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(id: u64, complete: bool) -> Epoch {
        Epoch { id, complete }
    }

    #[test]
    fn epoch_table_decisions() {
        let mut table = EpochTable::new(1);
        assert!(!table.is_readable(0), "unknown replica");
        assert_eq!(table.observe(0, epoch(1, true)), EpochChange::First);
        assert!(table.is_readable(0));
        assert_eq!(table.observe(0, epoch(1, true)), EpochChange::Same);
        // Restarted empty: new, incomplete epoch.
        assert_eq!(table.observe(0, epoch(2, false)), EpochChange::Changed);
        assert!(!table.is_readable(0));
        // A late reply from before the restart: the old id, marked complete.
        assert_eq!(table.observe(0, epoch(1, true)), EpochChange::Stale);
        assert!(!table.is_readable(0), "a retired epoch is not trusted");
        assert_eq!(table.current(0), Some(epoch(2, false)));
        table.mark_complete(0, 2);
        assert!(table.is_readable(0), "trusted again once refilled");
        // A never-seen epoch that another coordinator refilled and completed.
        assert_eq!(table.observe(0, epoch(3, true)), EpochChange::Changed);
        assert!(table.is_readable(0));
    }

    /// B3: a late reply of the replaced epoch must not retire the new one.
    #[test]
    fn late_reply_of_a_retired_epoch_is_stale() {
        let mut table = EpochTable::new(1);
        table.observe(0, epoch(1, true));
        table.observe(0, epoch(2, false));
        table.observe(0, epoch(1, true));
        table.observe(0, epoch(2, true));
        assert_eq!(table.current(0), Some(epoch(2, true)));
        assert!(table.is_readable(0), "refilled by another coordinator");
    }

    enum Step {
        /// Observe (id, complete); the change it must report.
        Observe(u64, bool, EpochChange),
        /// `mark_complete` of this id.
        Mark(u64),
    }

    #[test]
    fn epoch_orders() {
        use EpochChange::{Changed, First, Same, Stale};
        use Step::{Mark, Observe};
        // (name, steps, current after, readable after, stale replies)
        type Case<'a> = (&'a str, &'a [Step], Option<Epoch>, bool, u64);
        let cases: &[Case] = &[
            (
                "B3: late E1 reply while E2 is refilled elsewhere",
                &[
                    Observe(1, true, First),
                    Observe(2, false, Changed),
                    Observe(1, true, Stale),
                    Observe(2, true, Same),
                ],
                Some(epoch(2, true)),
                true,
                1,
            ),
            (
                "a late complete E1 does not make a refilling E2 readable",
                &[
                    Observe(1, true, First),
                    Observe(2, false, Changed),
                    Observe(1, true, Stale),
                ],
                Some(epoch(2, false)),
                false,
                1,
            ),
            (
                "a burst of late replies, then this coordinator's refill",
                &[
                    Observe(1, true, First),
                    Observe(2, false, Changed),
                    Observe(1, true, Stale),
                    Observe(1, true, Stale),
                    Observe(2, false, Same),
                    Observe(1, true, Stale),
                    Mark(2),
                    Observe(1, true, Stale),
                ],
                Some(epoch(2, true)),
                true,
                4,
            ),
            (
                "two restarts: late replies of both older epochs",
                &[
                    Observe(1, true, First),
                    Observe(2, false, Changed),
                    Observe(3, false, Changed),
                    Observe(1, true, Stale),
                    Observe(2, false, Stale),
                    Observe(3, true, Same),
                ],
                Some(epoch(3, true)),
                true,
                2,
            ),
            (
                "completion is not lost to a reply sent before it",
                &[Observe(1, false, First), Mark(1), Observe(1, false, Same)],
                Some(epoch(1, true)),
                true,
                0,
            ),
            (
                "first seen already refilled by another coordinator",
                &[Observe(1, true, First), Observe(2, true, Changed)],
                Some(epoch(2, true)),
                true,
                0,
            ),
            (
                "unknown old epoch: complete E1 late, E1 never seen before",
                &[
                    Observe(2, true, First),
                    Observe(1, true, Changed), // cannot be told from a restart
                    Observe(2, true, Stale),
                ],
                Some(epoch(1, true)),
                true,
                1,
            ),
            (
                "unknown old epoch: incomplete E1 late, until a refill here",
                &[
                    Observe(2, true, First),
                    Observe(1, false, Changed),
                    Observe(2, true, Stale),
                    Mark(2),
                    Observe(2, true, Same),
                    Observe(1, false, Stale),
                ],
                Some(epoch(2, true)),
                true,
                2,
            ),
            (
                "a mark retires the epoch it replaces",
                &[
                    Observe(1, true, First),
                    Observe(2, false, Changed),
                    Observe(3, false, Changed),
                    Mark(2),
                    Observe(3, false, Stale),
                    Observe(2, true, Same),
                ],
                Some(epoch(2, true)),
                true,
                1,
            ),
        ];
        for (name, steps, current, readable, stale) in cases {
            let mut table = EpochTable::new(2);
            for (at, step) in steps.iter().enumerate() {
                match *step {
                    Observe(id, complete, change) => assert_eq!(
                        table.observe(1, epoch(id, complete)),
                        change,
                        "{name}: step {at}"
                    ),
                    Mark(id) => table.mark_complete(1, id),
                }
            }
            assert_eq!(table.current(1), *current, "{name}: current");
            assert_eq!(table.is_readable(1), *readable, "{name}: readable");
            assert_eq!(table.stale_replies(1), *stale, "{name}: stale replies");
            assert_eq!(table.current(0), None, "{name}: other replica");
        }
    }

    #[test]
    fn retired_epochs_are_bounded() {
        let mut table = EpochTable::new(1);
        let last = RETIRED_EPOCHS_MAX as u64 + 2;
        for id in 1..=last {
            table.observe(0, epoch(id, false));
        }
        assert_eq!(table.replicas[0].retired.len(), RETIRED_EPOCHS_MAX);
        // Ids 2..last are remembered: their replies are late.
        assert_eq!(table.observe(0, epoch(2, true)), EpochChange::Stale);
        assert_eq!(table.observe(0, epoch(last - 1, true)), EpochChange::Stale);
        // Id 1 was forgotten: it reads as a change.
        assert_eq!(table.observe(0, epoch(1, true)), EpochChange::Changed);
        assert_eq!(table.replicas[0].retired.len(), RETIRED_EPOCHS_MAX);
    }

    #[test]
    fn a_write_only_replica_is_never_readable() {
        let mut table = EpochTable::new(2);
        table.set_write_only(1);
        table.observe(0, epoch(1, true));
        table.observe(1, epoch(2, true));
        assert!(table.is_readable(0));
        assert!(!table.is_readable(1), "complete, but write-only");
        table.mark_complete(1, 2);
        assert!(!table.is_readable(1), "marked complete, still write-only");
        assert_eq!(
            table.current(1),
            Some(epoch(2, true)),
            "its epoch is still tracked"
        );
    }
}
