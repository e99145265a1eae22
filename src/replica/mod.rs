//! The `Replica` trait: one independent store the coordinator writes to.
//!
//! A replica is small on purpose: read a record, merge a delta into a record
//! (atomically, with the join of [`Record::merge`]), scan keys, ping, and mark
//! its epoch complete. Everything about quorums lives in the coordinator.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::ReplicaError;
use crate::record::Record;
use crate::stamp::Stamp;

pub mod faulty;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// A replica's data generation. A new id means the replica lost (or may have
/// lost) what it held: it restarted empty, failed over, was restored from a
/// snapshot, or evicted keys. `complete` says the replica holds everything
/// acknowledged in this epoch (it was created with its cluster, or refilled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch {
    /// Random id, new each time the replica starts empty.
    pub id: u64,
    /// True once the replica is known to hold everything acknowledged.
    pub complete: bool,
}

/// Answer to [`Replica::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReply {
    /// The stored record, `None` when the key holds nothing.
    pub record: Option<Record>,
    /// The replica's epoch.
    pub epoch: Epoch,
}

/// How a delta is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeMode {
    /// Merge, creating the record (flagged partial if the delta is) if absent.
    Upsert,
    /// Conditional create: applies only if the key is absent or already holds
    /// a record with the same `origin` (a retry of this very create).
    Create,
}

/// What a merge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStatus {
    /// Merged (possibly changing nothing: merges are idempotent).
    Applied,
    /// The record is a tombstone and the delta is not: nothing written.
    Gone,
    /// A conditional create found another record: nothing written.
    Exists,
}

/// Answer to [`Replica::merge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeReply {
    /// What happened.
    pub status: MergeStatus,
    /// The replica's epoch.
    pub epoch: Epoch,
    /// The largest stamp the record held before the merge (advances the HLC).
    pub held_max: Option<Stamp>,
}

/// One page of a key scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// Logical keys (without any replica-side prefix).
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the scan is complete.
    pub next_cursor: Option<String>,
}

/// What [`Replica::describe`] tells of a replica's server; `None` where the
/// replica does not know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaInfo {
    /// Keys in the server's database (all of them, not only this library's;
    /// summed over the primaries of a Redis Cluster).
    pub keys: Option<u64>,
    /// Memory the server uses, in bytes (summed over a cluster's primaries).
    pub used_memory_bytes: Option<u64>,
    /// Its memory limit in bytes (`0`: none).
    pub max_memory_bytes: Option<u64>,
    /// Its `maxmemory-policy` (only `noeviction` is safe).
    pub eviction_policy: Option<String>,
    /// Server version.
    pub version: Option<String>,
}

/// One independent store. Implementations must apply [`apply_merge`]'s rules
/// atomically per key.
#[async_trait]
pub trait Replica: Send + Sync + std::fmt::Debug + 'static {
    /// A short, unique name for logs and errors (e.g. `redis-a`).
    fn name(&self) -> &str;

    /// Reads the record under `key`.
    ///
    /// A missing key is `Ok` with `record: None`. Data that does not decode is
    /// [`ReplicaError::Corrupt`]; no answer within the deadline is
    /// [`ReplicaError::Timeout`].
    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError>;

    /// Merges `delta` into the record under `key`, atomically, following
    /// [`apply_merge`]. `now_ms` drops entries past their `until`.
    ///
    /// A record already newer changes nothing (idempotent); a tombstone makes
    /// the reply [`MergeStatus::Gone`]; foreign data under the key is
    /// [`ReplicaError::Corrupt`] and is left untouched.
    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError>;

    /// One page of keys, at most about `count`, starting at `cursor` (`"0"`
    /// to begin). Keys may be returned more than once across pages.
    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError>;

    /// Checks the replica answers, and returns its epoch (creating one, not
    /// complete, if it has none).
    async fn ping(&self) -> Result<Epoch, ReplicaError>;

    /// Marks epoch `epoch_id` complete. Returns `false` (and changes nothing)
    /// if the replica's epoch is another one by now.
    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError>;

    /// Takes or renews the anti-entropy lease on this replica for `owner`
    /// (an id drawn by each coordinator): granted when the lease is free,
    /// expired, or already `owner`'s, and then held until `ttl` from now.
    /// Returns whether `owner` holds it. A coordinator runs a pass only
    /// while it holds the lease on a majority of the replicas, so that one
    /// pass runs at a time across all app servers.
    async fn acquire_lease(&self, owner: u64, ttl: Duration) -> Result<bool, ReplicaError>;

    /// Gives the anti-entropy lease up if `owner` holds it (else changes
    /// nothing).
    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError>;

    /// Reads many records: for each key, in order, what [`Replica::read`]
    /// answers. Anti-entropy reads a page of keys at a time this way; a
    /// replica that can answer many keys in one round trip overrides it. The
    /// default reads the keys one by one, concurrently.
    async fn read_many(&self, keys: &[String]) -> Vec<Result<ReadReply, ReplicaError>> {
        futures::future::join_all(keys.iter().map(|key| self.read(key))).await
    }

    /// Merges many deltas with [`MergeMode::Upsert`]: for each, in order, the
    /// effect and answer of [`Replica::merge`]. Anti-entropy sends its
    /// repairs this way; a replica may create absent records more cheaply
    /// (a refill creates nearly all of them). The default merges the deltas
    /// one by one, concurrently.
    async fn merge_many(
        &self,
        items: &[(String, std::sync::Arc<Record>)],
        now_ms: u64,
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        let merges = items
            .iter()
            .map(|(key, delta)| self.merge(key, delta, MergeMode::Upsert, now_ms));
        futures::future::join_all(merges).await
    }

    /// What an operator wants to see of the server behind this replica
    /// (the admin CLI's `status`): keys, memory, eviction policy. Nothing
    /// here feeds a decision. The default knows nothing.
    async fn describe(&self) -> Result<ReplicaInfo, ReplicaError> {
        Ok(ReplicaInfo::default())
    }

    /// Deletes everything this replica stores, epoch included (tests and
    /// fault injection). The default refuses.
    async fn wipe(&self) -> Result<(), ReplicaError> {
        Err(ReplicaError::Refused {
            detail: "wipe is not supported by this replica".into(),
            source: None,
        })
    }
}

/// The merge every replica applies, as a pure function: returns the status and
/// the record to store (`None` when nothing is written).
///
/// - `Create` on a key holding a record of another origin: `Exists`.
/// - A non-tombstone delta on a tombstone: `Gone`.
/// - Otherwise the join of both, normalized at `now_ms`.
pub fn apply_merge(
    stored: Option<&Record>,
    delta: &Record,
    mode: MergeMode,
    now_ms: u64,
) -> (MergeStatus, Option<Record>) {
    let Some(stored) = stored else {
        let mut fresh = delta.clone();
        fresh.normalize(now_ms);
        return (MergeStatus::Applied, Some(fresh));
    };
    if mode == MergeMode::Create && stored.origin != delta.origin {
        return (MergeStatus::Exists, None);
    }
    if stored.is_tombstone() && !delta.is_tombstone() {
        return (MergeStatus::Gone, None);
    }
    (
        MergeStatus::Applied,
        Some(Record::merge(stored, delta, now_ms)),
    )
}

/// The merge step of a replica that stores records in a map, with the facts
/// its reply carries: merges `delta` into the record the key holds
/// (`stored`, changed in place) or, when it holds none, returns the record
/// to insert. Returns the status, the largest stamp the record held before
/// the merge ([`MergeReply::held_max`]) and that new record.
pub fn merge_stored(
    stored: Option<&mut Record>,
    delta: &Record,
    mode: MergeMode,
    now_ms: u64,
) -> (MergeStatus, Option<Stamp>, Option<Record>) {
    match stored {
        Some(stored) => {
            let held_max = stored.max_stamp();
            let status = apply_merge_in_place(stored, delta, mode, now_ms);
            (status, held_max, None)
        }
        None => {
            let (status, fresh) = apply_merge(None, delta, mode, now_ms);
            (status, None, fresh)
        }
    }
}

/// [`apply_merge`] on a key that holds `stored`, merging in place (no copy of
/// the stored record). `stored` changes only when the status is `Applied`.
pub fn apply_merge_in_place(
    stored: &mut Record,
    delta: &Record,
    mode: MergeMode,
    now_ms: u64,
) -> MergeStatus {
    if mode == MergeMode::Create && stored.origin != delta.origin {
        return MergeStatus::Exists;
    }
    if stored.is_tombstone() && !delta.is_tombstone() {
        return MergeStatus::Gone;
    }
    stored.merge_from(delta, now_ms);
    MergeStatus::Applied
}
