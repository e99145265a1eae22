//! The pure replication core: no tokio, no fred, no clock, no global RNG.
//!
//! Each piece takes facts (replies, failures, `now_ms`) and returns decisions
//! (an outcome, which replica to ask next, which to read-repair). The
//! coordinator and the simulator are its two drivers, so the decisions tested
//! here are exactly the ones both make.
//!
//! **Internals**: public only with the `internals` feature, for the
//! simulator and the tests; not covered by semver.

pub mod anti_entropy;
pub mod epoch;
pub mod health;
pub mod hints;
pub mod latency;
pub mod quorum;
pub mod read;
pub mod read_repair;

/// Position of a replica in the coordinator's replica list.
pub type ReplicaIndex = usize;

/// Removes `index` from `replicas` (their order is not kept): false when it
/// is not there.
pub(crate) fn take_replica(replicas: &mut Vec<ReplicaIndex>, index: ReplicaIndex) -> bool {
    match replicas.iter().position(|&i| i == index) {
        Some(position) => {
            replicas.swap_remove(position);
            true
        }
        None => false,
    }
}
