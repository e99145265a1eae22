//! # quorum-sessions
//!
//! Web sessions replicated over N independent Redis servers (or any
//! [`Replica`](replica::Replica)), so that one Redis dying, restarting empty or
//! hanging never logs a user out. An axum app on three Redis
//! (`examples/quickstart.rs`; features `redis` and `tower`):
//!
#![cfg_attr(all(feature = "redis", feature = "tower"), doc = "```no_run")]
#![cfg_attr(not(all(feature = "redis", feature = "tower")), doc = "```ignore")]
//! use axum::{routing::get, Router};
//! use quorum_sessions::session::tower::TowerSessionStore;
//! use tower_sessions::{Session, SessionManagerLayer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let urls = [
//!         "redis://127.0.0.1:6381",
//!         "redis://127.0.0.1:6382",
//!         "redis://127.0.0.1:6383",
//!     ];
//!     let store = TowerSessionStore::connect(urls).await?;
//!     let app = Router::new()
//!         .route(
//!             "/",
//!             get(|session: Session| async move {
//!                 let visits: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
//!                 session.insert("visits", visits).await.ok();
//!                 format!("visit number {visits}")
//!             }),
//!         )
//!         .layer(SessionManagerLayer::new(store));
//!     axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! The native API, with every option: [`SessionStore::builder`]; records of
//! your own without the session layer: [`Coordinator`]; your own storage:
//! [`Replica`](replica::Replica). Why it is safe, claim by claim, each with
//! the test that checks it: `docs/epochs.md` in the repository.
//!
//! ## What it guarantees
//!
//! - A write returns `Ok` only after W replicas merged it; a read merges R
//!   answers. With `R + W > N`, a read that begins after a write was
//!   acknowledged sees it (for that field), while at most `N − W` replicas are
//!   lost or wiped.
//! - Concurrent updates of *different* fields of one record from different app
//!   servers all survive (per-field versions, last-writer-wins per field).
//! - Delete wins: once a record is deleted, no late write, touch, read-repair
//!   or returning replica brings it back (until its lifetime cap, after which
//!   it could not be alive anyway).
//! - "Not found" is only answered when proven: a tombstone, a past expiry, or
//!   N − W + 1 misses from replicas known to hold everything acknowledged. An
//!   unreachable or emptied Redis reads as [`Error::Unavailable`], never as
//!   "logged out".
//!
//! ## What it does not guarantee
//!
//! - Quorum reads and writes are **not linearizable**: two concurrent writes of
//!   the same field resolve by hybrid-logical-clock order (last writer wins),
//!   and a read concurrent with a write may or may not see it.
//! - A write that failed (`QuorumNotReached`) may still have reached some
//!   replicas and may surface later, as in Dynamo. Retrying is safe.
//! - Clocks: stamps further ahead than `max_clock_skew` are refused by the
//!   receive rule; within that bound, a server with a fast clock wins ties.
//!
//! ## Module map
//!
//! | module | role |
//! | --- | --- |
//! | [`stamp`] | hybrid logical clock stamps, fixed-width encoding |
//! | [`record`] | versioned records and the merge (a join) |
//! | [`mutation`] | what a caller writes, before stamping |
//! | [`replica`] | the `Replica` trait; in-memory, faulty and Redis replicas |
//! | [`coordinator`] | the async driver: fan-out, quorums, read-repair, probes, hinted handoff, anti-entropy (one file per protocol) |
//! | [`config`] | configuration, named limits, validation |
//! | [`session`] | the session layer: `SessionStore`, ids, index, CSRF, admin, tower adapter |
//! | [`error`] | typed errors |
//! | `chaos` | tool module (feature `chaos`): the fault scenarios run by the tests and `qs-admin chaos` |
//!
//! ```text
//!  app ─► Coordinator ─┬─► Replica 0 (Redis A)     write: stamp, merge on all, answer at W acks
//!                      ├─► Replica 1 (Redis B)     read:  ask R, merge, repair the stale ones
//!                      └─► Replica 2 (Redis C)
//!            │
//!            └─ core (pure): WriteTally, ReadPlan, HealthTracker, EpochTable, Hlc
//! ```
#![warn(missing_docs)]

// Internals: the decisions and the stored form, shared with the simulator
// and the tests. Not part of the semver surface: public only with the
// `internals` feature (and labelled so in their docs).
#[cfg(feature = "internals")]
pub mod codec;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod codec;
#[cfg(feature = "internals")]
pub mod core;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod core;

pub mod config;
pub mod coordinator;
pub mod error;
pub mod mutation;
pub mod record;
pub mod replica;
pub mod session;
pub mod stamp;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
// A tool, not the store: the fault scenarios shared by the test suite and
// `qs-admin chaos`.
#[cfg(feature = "chaos")]
pub mod chaos;

/// Hinted handoff and anti-entropy: their public names. The drivers live in
/// the [`coordinator`] module ([`Coordinator::replay_hints`],
/// [`Coordinator::anti_entropy`]); its documentation tells how they work.
pub mod recovery {
    pub use crate::coordinator::anti_entropy::{
        AntiEntropyOptions, AntiEntropyReport, ProgressFn, BATCH_KEYS, BATCH_TIMEOUT_FACTOR,
        PENDING_REPAIR_BATCHES_MAX, SEEN_KEYS_MAX,
    };
    pub use crate::coordinator::bootstrap::BOOTSTRAP_SCAN_PAGES_MAX;
    pub use crate::core::anti_entropy::PassStats;
}

pub use config::{
    AntiEntropyConfig, ClusterConfig, HintLimits, ReadOrder, ReadRepair, SCAN_BATCH_MAX,
};
pub use coordinator::{
    Coordinator, CoordinatorStats, ReadOptions, ReplicaState, WriteAck, WriteOptions,
};
pub use core::health::Health;
pub use error::{
    ConfigError, ConnectError, Error, InvalidInput, ReplicaError, ReplicaFailure, Result,
};
pub use mutation::Mutation;
pub use record::{FieldEntry, Record, StoredFormat};
pub use recovery::{AntiEntropyOptions, AntiEntropyReport};
pub use session::{
    NewSession, Session, SessionConfig, SessionError, SessionId, SessionStore, SessionStoreBuilder,
};
pub use stamp::Stamp;
