//! Which replicas may be read, from the epochs their replies carry.
//!
//! A replica is *readable* (its misses count toward "not found", it may be the
//! first read target) only when its epoch is complete and is not one this
//! coordinator saw replaced. A changed epoch (restart empty, failover, restore
//! from a snapshot) makes it write-only until it is refilled and marked
//! complete again.

use super::ReplicaIndex;
use crate::replica::Epoch;

/// What an observed epoch changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochChange {
    /// Same epoch as before (or its completion).
    Same,
    /// First epoch seen from this replica.
    First,
    /// Another epoch than before: the replica lost or may have lost data.
    Changed,
}

#[derive(Clone, Debug, Default)]
struct ReplicaEpoch {
    current: Option<Epoch>,
    /// Ids seen and replaced: one coming back is a restored snapshot.
    retired: Vec<u64>,
}

/// Bound on the retired ids remembered per replica.
pub const RETIRED_EPOCHS_MAX: usize = 16;

/// Epochs of every replica of one coordinator.
#[derive(Clone, Debug)]
pub struct EpochTable {
    replicas: Vec<ReplicaEpoch>,
}

impl EpochTable {
    /// Nothing known yet: no replica is readable until its first reply.
    pub fn new(replica_count: usize) -> EpochTable {
        EpochTable {
            replicas: vec![ReplicaEpoch::default(); replica_count],
        }
    }

    /// Records the epoch a reply carried.
    pub fn observe(&mut self, index: ReplicaIndex, epoch: Epoch) -> EpochChange {
        let replica = &mut self.replicas[index];
        let change = match replica.current {
            None => EpochChange::First,
            Some(current) if current.id == epoch.id => EpochChange::Same,
            Some(current) => {
                if replica.retired.len() == RETIRED_EPOCHS_MAX {
                    replica.retired.remove(0);
                }
                replica.retired.push(current.id);
                EpochChange::Changed
            }
        };
        let mut epoch = epoch;
        if replica.retired.contains(&epoch.id) {
            // An epoch that was replaced came back (restored snapshot): its
            // completeness is from another time and is not trusted.
            epoch.complete = false;
        }
        match replica.current {
            // Completion is only ever gained through `mark_complete` or a
            // reply; a stale reply cannot clear it within one epoch.
            Some(current) if current.id == epoch.id => {
                replica.current = Some(Epoch {
                    id: epoch.id,
                    complete: current.complete || epoch.complete,
                });
            }
            _ => replica.current = Some(epoch),
        }
        change
    }

    /// The replica's epoch id was marked complete (after a refill).
    pub fn mark_complete(&mut self, index: ReplicaIndex, epoch_id: u64) {
        let replica = &mut self.replicas[index];
        replica.retired.retain(|&id| id != epoch_id);
        replica.current = Some(Epoch {
            id: epoch_id,
            complete: true,
        });
    }

    /// True when the replica's misses count and it may be read first.
    pub fn is_readable(&self, index: ReplicaIndex) -> bool {
        self.replicas[index].current.is_some_and(|e| e.complete)
    }

    /// The last epoch seen.
    pub fn current(&self, index: ReplicaIndex) -> Option<Epoch> {
        self.replicas[index].current
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
        // Restored from a snapshot taken in epoch 1: the old id, marked complete.
        assert_eq!(table.observe(0, epoch(1, true)), EpochChange::Changed);
        assert!(!table.is_readable(0), "a retired epoch is not trusted");
        table.mark_complete(0, 1);
        assert!(table.is_readable(0), "trusted again once refilled");
        // A never-seen epoch that another coordinator refilled and completed.
        assert_eq!(table.observe(0, epoch(3, true)), EpochChange::Changed);
        assert!(table.is_readable(0));
    }
}
