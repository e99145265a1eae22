//! What the coordinator tells about itself: [`CoordinatorStats`] (counters
//! since start) and [`ReplicaState`] (each replica's health, epoch and
//! readability).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::health::Health;
use crate::replica::Epoch;

use super::Coordinator;

/// Counters of what the coordinator did, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Writes that reached W.
    pub writes_acknowledged: u64,
    /// Writes that failed to reach W.
    pub writes_failed: u64,
    /// Field updates stamped and sent again because an acker held a larger
    /// stamp (a faster clock wrote the record): each is one more round trip.
    pub restamped_writes: u64,
    /// Reads that found a record or proved it absent.
    pub reads_conclusive: u64,
    /// Reads that ended `Unavailable`.
    pub reads_unavailable: u64,
    /// Replica answers that could not count as misses (incomplete epoch).
    pub inconclusive_misses: u64,
    /// Read-repair writes sent.
    pub read_repairs: u64,
    /// Reads answered by blocking read-repair before W replicas were known
    /// to hold their record (every repair tried settled short of W, or
    /// `request_timeout` passed): such a read's value may be missed by a
    /// later read. See [`ReadRepair::Blocking`](crate::config::ReadRepair::Blocking).
    pub read_repairs_short: u64,
    /// Epoch changes seen (a replica restarted empty, failed over, restored).
    pub epochs_changed: u64,
    /// Replies that carried an epoch already seen replaced (late replies,
    /// typically of anti-entropy reads and repairs crossing a restart):
    /// ignored for the replica's epoch.
    pub stale_epoch_replies: u64,
    /// Stamps refused for being further ahead than `max_clock_skew`.
    pub clock_skew_rejections: u64,
    /// Requests to replicas that failed or timed out.
    pub replica_failures: u64,
    /// Missed writes queued as hints (coalesced ones included).
    pub hints_queued: u64,
    /// Hints handed out for replay.
    pub hints_replayed: u64,
    /// Hints dropped (queue overflow or age): anti-entropy covers them.
    pub hints_dropped: u64,
    /// Hints waiting, all replicas together.
    pub hints_pending: u64,
    /// Anti-entropy passes finished.
    pub anti_entropy_passes: u64,
    /// Records sent by anti-entropy passes.
    pub anti_entropy_records_sent: u64,
    /// Passes not run or stopped because this coordinator could not hold
    /// the anti-entropy lease on a majority of the replicas (another app
    /// server runs a pass, or too few replicas answered).
    pub anti_entropy_lease_refused: u64,
    /// Times [`Coordinator::initialize`] found every replica in a new,
    /// incomplete epoch with data in one of them (a full-cluster restart
    /// with persistence) and marked nothing complete: reads stay
    /// `Unavailable` until the operator decides
    /// ([`Coordinator::accept_data_loss`]). The background task asks again
    /// on each tick while no replica is readable, so this keeps growing
    /// until then.
    pub bootstraps_refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) writes_acknowledged: AtomicU64,
    pub(super) writes_failed: AtomicU64,
    pub(super) restamped_writes: AtomicU64,
    pub(super) reads_conclusive: AtomicU64,
    pub(super) reads_unavailable: AtomicU64,
    pub(super) inconclusive_misses: AtomicU64,
    pub(super) read_repairs: AtomicU64,
    pub(super) read_repairs_short: AtomicU64,
    pub(super) epochs_changed: AtomicU64,
    pub(super) replica_failures: AtomicU64,
    pub(crate) anti_entropy_passes: AtomicU64,
    pub(crate) anti_entropy_records_sent: AtomicU64,
    pub(crate) anti_entropy_lease_refused: AtomicU64,
    pub(crate) bootstraps_refused: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One replica's state, as reported by [`Coordinator::replica_states`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// The replica's name.
    pub name: String,
    /// Up, Suspect or Down.
    pub health: Health,
    /// The last epoch seen.
    pub epoch: Option<Epoch>,
    /// True when its misses count and it may be read first; false while it
    /// is write-only (new epoch, not yet refilled: "Refilling").
    pub readable: bool,
    /// Written to but never read by this coordinator
    /// ([`ClusterConfig::write_only`](crate::ClusterConfig::write_only)).
    pub write_only: bool,
    /// Hints queued for it.
    pub pending_hints: usize,
    /// Its hint queue dropped hints: only anti-entropy can bring it level.
    pub needs_anti_entropy: bool,
}

impl Coordinator {
    /// Each replica's health, epoch and readability.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        let state = self.lock();
        self.inner
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| ReplicaState {
                name: replica.name().to_owned(),
                health: state.health.health(index),
                epoch: state.epochs.current(index),
                readable: state.epochs.is_readable(index),
                write_only: state.epochs.is_write_only(index),
                pending_hints: state.hints.len(index),
                needs_anti_entropy: state.hints.needs_anti_entropy(index),
            })
            .collect()
    }

    /// Counters since start.
    pub fn stats(&self) -> CoordinatorStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let state = self.lock();
        let hint_stats: Vec<_> = (0..self.replica_count())
            .map(|i| state.hints.stats(i))
            .collect();
        let sum = |f: fn(&crate::core::hints::HintStats) -> u64| hint_stats.iter().map(f).sum();
        CoordinatorStats {
            hints_queued: sum(|h| h.pushed_count),
            hints_replayed: sum(|h| h.replayed_count),
            hints_dropped: sum(|h| h.overflow_dropped_count + h.aged_dropped_count),
            hints_pending: state.hints.total_len() as u64,
            anti_entropy_passes: load(&c.anti_entropy_passes),
            anti_entropy_records_sent: load(&c.anti_entropy_records_sent),
            anti_entropy_lease_refused: load(&c.anti_entropy_lease_refused),
            bootstraps_refused: load(&c.bootstraps_refused),
            writes_acknowledged: load(&c.writes_acknowledged),
            writes_failed: load(&c.writes_failed),
            restamped_writes: load(&c.restamped_writes),
            reads_conclusive: load(&c.reads_conclusive),
            reads_unavailable: load(&c.reads_unavailable),
            inconclusive_misses: load(&c.inconclusive_misses),
            read_repairs: load(&c.read_repairs),
            read_repairs_short: load(&c.read_repairs_short),
            epochs_changed: load(&c.epochs_changed),
            stale_epoch_replies: (0..self.replica_count())
                .map(|index| state.epochs.stale_replies(index))
                .sum(),
            clock_skew_rejections: state.clock.rejected_count(),
            replica_failures: load(&c.replica_failures),
        }
    }
}
