//! Deterministic chaos simulator for quorum-sessions.
//!
//! It drives the crate's pure core — [`WriteTally`], [`ReadPlan`],
//! [`HealthTracker`], [`EpochTable`], [`HintQueues`], [`AntiEntropyPass`], the
//! [`Hlc`] and the record join via [`apply_merge`] — against in-memory
//! replicas on virtual time, with one seeded RNG, while faults drawn from the
//! seed crash, wipe, partition, slow down and skew the cluster; then it heals
//! everything and waits for hint replay and anti-entropy to converge. A
//! history checker judges what clients saw and what the replicas hold.
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | run configuration: cluster, workload, faults, switches |
//! | [`sim`] | the discrete-event world and its event loop |
//! | [`checker`] | the history checker |
//! | [`workload`] | session-like client operations |
//! | [`latency`] | Pareto/exponential mixtures and the TOML latency model |
//! | [`report`] | run report (text and JSON) |
//! | [`sweep`] | the (N, W, R) sweep table and its SVG chart |
//! | [`pbs`] | probabilistically bounded staleness (t-visibility) |
//! | [`trace`] | bounded event trace for `replay` |
//!
//! [`WriteTally`]: quorum_sessions::core::quorum::WriteTally
//! [`ReadPlan`]: quorum_sessions::core::read::ReadPlan
//! [`HealthTracker`]: quorum_sessions::core::health::HealthTracker
//! [`EpochTable`]: quorum_sessions::core::epoch::EpochTable
//! [`HintQueues`]: quorum_sessions::core::hints::HintQueues
//! [`AntiEntropyPass`]: quorum_sessions::core::anti_entropy::AntiEntropyPass
//! [`Hlc`]: quorum_sessions::stamp::Hlc
//! [`apply_merge`]: quorum_sessions::replica::apply_merge

pub mod checker;
pub mod config;
pub mod latency;
pub mod pbs;
pub mod report;
pub mod sim;
pub mod sweep;
pub mod trace;
pub mod workload;

pub use config::SimConfig;
pub use report::Report;
pub use sim::{
    full_cluster_restart, membership, membership_observed, run, run_observed, FullRestartReport,
    Observer, Procedure,
};
