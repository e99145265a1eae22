//! Metrics through the `metrics` facade (feature `metrics`; without it
//! every function here is empty). One function per event, called where the
//! [`CoordinatorStats`](super::CoordinatorStats) counter of that event moves.
//! The names and labels are documented in `docs/metrics.md`; labels hold
//! replica names and fixed words, never a key, session id or data.

#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use tokio::time::Instant;

use crate::core::hints::HintStats;
use crate::core::ReplicaIndex;
use crate::error::Error;

use super::{Coordinator, CoreState};

/// Reads and writes, by `op` and `outcome` (counter).
pub(crate) const OPERATIONS: &str = "quorum_sessions_operations_total";
/// A read's or write's time as the caller sees it, by `op` (histogram, s).
pub(crate) const OPERATION_DURATION: &str = "quorum_sessions_operation_duration_seconds";
/// One request to one replica, by `replica` (histogram, s).
pub(crate) const REPLICA_REQUEST_DURATION: &str =
    "quorum_sessions_replica_request_duration_seconds";
/// Requests to a replica that failed or timed out, by `replica` (counter).
pub(crate) const REPLICA_FAILURES: &str = "quorum_sessions_replica_failures_total";
/// Health transitions, by `replica` and `to` (`down`, `up`) (counter).
pub(crate) const REPLICA_HEALTH_TRANSITIONS: &str =
    "quorum_sessions_replica_health_transitions_total";
/// Epoch changes seen, by `replica` (counter).
pub(crate) const EPOCH_CHANGES: &str = "quorum_sessions_epoch_changes_total";
/// Hints queued, replayed and dropped, by `replica` (counters).
pub(crate) const HINTS_QUEUED: &str = "quorum_sessions_hints_queued_total";
/// See [`HINTS_QUEUED`].
pub(crate) const HINTS_REPLAYED: &str = "quorum_sessions_hints_replayed_total";
/// See [`HINTS_QUEUED`].
pub(crate) const HINTS_DROPPED: &str = "quorum_sessions_hints_dropped_total";
/// Hints waiting, by `replica` (gauge).
pub(crate) const HINTS_PENDING: &str = "quorum_sessions_hints_pending";
/// Read-repair writes sent (counter).
pub(crate) const READ_REPAIRS: &str = "quorum_sessions_read_repairs_total";
/// Anti-entropy passes finished (counter).
pub(crate) const ANTI_ENTROPY_PASSES: &str = "quorum_sessions_anti_entropy_passes_total";
/// Keys compared and repaired by anti-entropy passes (counters).
pub(crate) const ANTI_ENTROPY_KEYS_COMPARED: &str =
    "quorum_sessions_anti_entropy_keys_compared_total";
/// See [`ANTI_ENTROPY_KEYS_COMPARED`].
pub(crate) const ANTI_ENTROPY_KEYS_REPAIRED: &str =
    "quorum_sessions_anti_entropy_keys_repaired_total";
/// Anti-entropy lease refusals (counter).
pub(crate) const LEASE_REFUSALS: &str = "quorum_sessions_anti_entropy_lease_refusals_total";
/// Field updates stamped again above a larger stamp an acker held (counter).
pub(crate) const RESTAMPED_WRITES: &str = "quorum_sessions_restamped_writes_total";
/// Reads answered before W replicas held their record (counter).
pub(crate) const READ_REPAIRS_SHORT: &str = "quorum_sessions_read_repairs_short_total";
/// Late replies of a replaced epoch, ignored, by `replica` (counter).
pub(crate) const STALE_EPOCH_REPLIES: &str = "quorum_sessions_stale_epoch_replies_total";
/// Stamps refused for being too far ahead (counter).
pub(crate) const CLOCK_SKEW_REFUSALS: &str = "quorum_sessions_clock_skew_refusals_total";

/// When a timed event starts: `None` without the feature, so that the
/// clock is not read for nothing on the hot path.
pub(crate) fn start() -> Option<Instant> {
    #[cfg(feature = "metrics")]
    return Some(Instant::now());
    #[cfg(not(feature = "metrics"))]
    None
}

/// The `outcome` label of a read or write.
fn outcome<T>(op: &'static str, result: &Result<Option<T>, &Error>) -> &'static str {
    match result {
        Ok(Some(_)) if op == "write" => "acknowledged",
        Ok(Some(_)) => "found",
        Ok(None) => "not_found",
        Err(Error::QuorumNotReached { .. }) => "quorum_not_reached",
        Err(Error::Unavailable { .. }) => "unavailable",
        Err(Error::Gone) => "gone",
        Err(Error::Collision) => "collision",
        Err(Error::Invalid(_)) => "invalid",
        Err(Error::ShuttingDown) => "shutting_down",
    }
}

/// One read (`op` = `read`, `Ok(None)` = not found) or write (`op` =
/// `write`, always `Ok(Some)` when acknowledged) ended.
pub(crate) fn operation<T>(
    op: &'static str,
    result: Result<Option<T>, &Error>,
    started: Option<Instant>,
) {
    #[cfg(feature = "metrics")]
    {
        let outcome = outcome(op, &result);
        metrics::counter!(OPERATIONS, "op" => op, "outcome" => outcome).increment(1);
        if let Some(started) = started {
            let took = started.elapsed().as_secs_f64();
            metrics::histogram!(OPERATION_DURATION, "op" => op).record(took);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (op, result, started);
}

/// One request to a replica ended, answered or not.
pub(crate) fn replica_request(replica: &str, sent: Option<Instant>) {
    #[cfg(feature = "metrics")]
    if let Some(sent) = sent {
        metrics::histogram!(REPLICA_REQUEST_DURATION, "replica" => replica.to_owned())
            .record(sent.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (replica, sent);
}

/// Fires `REPLICA_HEALTH_TRANSITIONS` with `to` = `down` or `up`.
pub(crate) fn health_transition(replica: &str, to: &'static str) {
    counter_of(REPLICA_HEALTH_TRANSITIONS, replica, Some(to), 1);
}

/// Adds `value` to the per-replica counter `name`.
pub(crate) fn replica_counter(name: &'static str, replica: &str, value: u64) {
    counter_of(name, replica, None, value);
}

fn counter_of(name: &'static str, replica: &str, to: Option<&'static str>, value: u64) {
    #[cfg(feature = "metrics")]
    {
        if value == 0 {
            return;
        }
        let replica = replica.to_owned();
        match to {
            Some(to) => metrics::counter!(name, "replica" => replica, "to" => to).increment(value),
            None => metrics::counter!(name, "replica" => replica).increment(value),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, replica, to, value);
}

/// The hints waiting for `replica`.
pub(crate) fn hints_pending(replica: &str, pending: usize) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(HINTS_PENDING, "replica" => replica.to_owned()).set(pending as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = (replica, pending);
}

/// Adds `value` to the coordinator-wide counter `name`.
pub(crate) fn counter(name: &'static str, value: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(value);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, value);
}

impl Coordinator {
    /// Emits what replica `index`'s hint queue did since `before` (taken
    /// under the same lock): hints queued, replayed (handed out less the
    /// `restored` ones, which failed), dropped, and the pending gauge.
    pub(super) fn hint_metrics(
        &self,
        state: &CoreState,
        index: ReplicaIndex,
        before: HintStats,
        restored: u64,
    ) {
        let after = state.hints.stats(index);
        let replica = self.inner.replicas[index].name();
        let dropped = |s: HintStats| s.overflow_dropped_count + s.aged_dropped_count;
        let handed_out = after.replayed_count - before.replayed_count;
        replica_counter(
            HINTS_QUEUED,
            replica,
            after.pushed_count - before.pushed_count,
        );
        replica_counter(HINTS_REPLAYED, replica, handed_out.saturating_sub(restored));
        replica_counter(HINTS_DROPPED, replica, dropped(after) - dropped(before));
        hints_pending(replica, state.hints.len(index));
    }
}
