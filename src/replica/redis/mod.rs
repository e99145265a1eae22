//! `RedisReplica`: a [`Replica`] on one Redis deployment (standalone,
//! Sentinel or Cluster), through fred and two Lua scripts.
//!
//! # Stored layout
//!
//! ```text
//! <prefix><key>     hash    one record (key = "s:{id}", "u:{user}", …)
//!   f:<name>        stamp(32 hex) ‖ kind(v|d|V|D) ‖ until(12 hex, kinds V/D) ‖ value bytes
//!   m:v             "1" or "2"         format version (2: with the summaries m:h, m:u)
//!   m:e             12 hex             expiry, ms since the Unix epoch
//!   m:c             12 hex             lifetime cap, ms
//!   m:t             stamp (32 hex)     tombstone (absent when live)
//!   m:o             stamp (32 hex)     origin: the create's stamp (absent when unknown)
//!   m:p             "1"                partial (absent when full)
//!   m:ep            16 hex             epoch of the last merge that wrote it (not part of the record)
//!   m:h             stamp or "-"       largest field stamp held (a summary, not part of the record; format 2)
//!   m:u             "1"                some entry carries an until (a summary; absent when none; format 2)
//!   TTL             PEXPIREAT min(m:e, m:c) + EXPIRY_MARGIN_MS
//! <prefix>epoch     string  16 hex ‖ ":n" (new) or ":c" (complete)
//! <prefix>epoch:run string  run_id of the Redis process that made or confirmed the epoch
//! <prefix>lease     string  16 hex: the coordinator holding the anti-entropy lease (PX ttl)
//! ```
//!
//! (The internal `codec` module; the default prefix is `qs:`.)
//!
//! # The scripts
//!
//! - `merge.lua` applies a delta to a record atomically, with exactly the
//!   rules of [`apply_merge`](super::apply_merge), `Record::merge_from` and
//!   `Record::normalize`. It never decodes a value: entries are compared as
//!   byte strings (stamps first, fixed width, so text order is number order),
//!   with a byte-by-byte comparison, because Lua's `<` on strings follows the
//!   server's locale. It validates the key's type, every stored hash field
//!   and the delta **before its first write** (a Lua error after a write is
//!   not rolled back) and answers `CORRUPT …` without touching foreign data.
//!   It writes only the hash fields that change, then sets `PEXPIREAT` to
//!   the effective expiry plus [`EXPIRY_MARGIN_MS`] (never `GT`: a key with no
//!   TTL would stay immortal); the 12-hex expiry becomes a number with
//!   `tonumber(hex, 16)`, exact for 48 bits. A record whose effective expiry
//!   is not after `now` is deleted (the coordinator never serves it anyway;
//!   give a tombstone an expiry up to its cap so it outlives the session).
//!   It returns the status, the epoch, and the largest stamp the record held
//!   before the merge. One call merges one or more records (the merges that
//!   waited together, see "Merge calls" below) under one epoch read, each
//!   record checked and answered on its own: foreign data under one key is
//!   `CORRUPT` for that key alone, and the others are merged.
//! - `epoch.lua` returns the epoch (`ping`) or marks it complete.
//! - A read needs no script. When a reply on the current connection
//!   confirmed the epoch complete (every merge reply and every bracketed
//!   read does) less than [`RECONFIRM_AFTER`] before (counted from when its
//!   request was sent), it is `HGETALL <key>` alone if that finds a record
//!   whose `m:ep` names the confirmed epoch: `merge.lua` writes there the
//!   epoch it read in the same atomic call, an epoch id is random and never
//!   made twice, a flush deletes the records with the epoch key, and a
//!   restart or a Sentinel failover changes the connection (which drops the
//!   confirmation) and leaves an epoch of another run id, never confirmed
//!   again; so such a record was written in the confirmed epoch and the
//!   replica has not been emptied since. Otherwise (a miss, a record written
//!   in another epoch, or created by a refill's `RESTORE`, which writes no
//!   `m:ep`) an `MGET <epoch> <epoch:run>` follows on the same connection,
//!   and the answer counts, found or missing, only if it shows that
//!   confirmed epoch, made by this process: completion never goes back, so
//!   the epoch existed, complete, from the confirmation through the
//!   `HGETALL`. What the one-command hit does not see: the epoch keys lost
//!   while the records stay (deleted by hand, evicted under a policy the
//!   connect check refused or warned about, or `wipe` part way), or the
//!   dataset replaced under the same connection by an operator (a manual
//!   `REPLICAOF` without Sentinel, `SWAPDB`, `RESTORE` of old dumps). Then
//!   hits on records written before report the old epoch for at most
//!   [`RECONFIRM_AFTER`] after it was last seen standing: each such hit is
//!   what the replica holds, as a hit from a lagging replica is (which R=1
//!   allows anyway), and misses already see the change. When `MGET` shows
//!   another epoch the confirmation is dropped and the read is made again,
//!   bracketed. The bracketed read, taken when nothing is confirmed: `MGET
//!   <epoch> <epoch:run>`, `HGETALL <key>`, `MGET <epoch> <epoch:run>`, as
//!   one fred pipeline (one message to the connection task, one write),
//!   which Redis runs in that order. A script would pay for every byte it
//!   moves in and out of Lua (several times the whole read), and `MULTI` in
//!   a fred pipeline is written one command per system call. If both
//!   `MGET`s see the same epoch, made by this process, the hash was read
//!   within that epoch: an epoch id is random, so the epoch key cannot have
//!   been deleted (a flush, a restart, `wipe`) and made again with the same
//!   id in between; the read counts the epoch complete only if it was
//!   complete before the hash was read (completion is the one change an
//!   epoch goes through). Otherwise the epoch script makes a new epoch (or
//!   finds the one made meanwhile) and the read reports it incomplete. Rust
//!   decodes the hash with the internal `codec::decode_pairs`.
//!
//! Every call carries a fresh random epoch candidate: when the epoch key is
//! missing (a Redis restarted empty, or flushed) the script stores the
//! candidate as a new, incomplete epoch, so the coordinator sees the change.
//! The same happens when the epoch was not made by the running Redis process
//! (`<prefix>epoch:run` differs from the process's `run_id`): the keyspace
//! was loaded from a snapshot or an AOF, or a replica was promoted by a
//! failover, and may lack acknowledged writes. A planned restart with
//! persistence therefore also starts a new epoch; anti-entropy refills it.
//! The run id is learnt with `INFO server` once per connection and passed
//! to every script; the reply of a request during which fred reconnected is
//! refused (see `process.rs`). That alone would not stop its effect: fred
//! may write a request queued before a connection dropped onto the next
//! one, so after a restart a script can run in the new process with the
//! old process's run id, and would make a new epoch there (one more per
//! such request, each making the replica write-only again). So a script
//! that finds no epoch made by the run id it carries (the only case where
//! it would make one) first compares that run id with the running
//! process's (`INFO server` inside the script, on this rare path only) and,
//! when they differ, answers `STALERUN` before any write; the request fails
//! as [`ReplicaError::Unavailable`] and the next one learns the run id
//! again. (After a restart *with* persistence the loaded run key still
//! names the old process, so a replayed merge finds its epoch and is
//! applied in it: a merge is a join and that epoch is replaced by the next
//! request anyway, so it only surfaces a write whose caller saw a failure,
//! as any failed write may.) Scripts are loaded once and called with
//! `EVALSHA` (reloaded on `NOSCRIPT`).
//!
//! # Merge calls
//!
//! Merges wait in one queue per replica (`queue.rs`); a merge goes out at
//! once when fewer than [`MERGE_CALLS_IN_FLIGHT`] calls are in flight, and
//! the ones that queue meanwhile leave together as the next call (at most
//! [`MERGE_BATCH_MAX_KEYS`] records and [`MERGE_BATCH_MAX_BYTES`]). No
//! timer: at low load every call carries one record. Under load one
//! `EVALSHA` (and one epoch `MGET` inside it) serves many records. Two
//! calls in flight keep Redis busy while the next call is on the way;
//! measured with the replication bench (c = 64, N = 3, W = 2), see
//! `CHANGELOG.md`. [`RedisReplicaConfig::merge_batch_max_keys`] = 1 turns
//! it off. Counts: [`RedisReplica::merge_call_stats`].
//!
//! # Deadlines and errors
//!
//! Every command runs under [`RedisReplicaConfig::request_timeout`] with
//! `tokio::time::timeout` (fred ignores per-command timeouts for `EVALSHA`).
//! A merge that timed out may still have been applied (merges are
//! idempotent: retrying is safe). A merge's deadline counts from when it
//! is queued; a merge call that fails as a whole fails each of its records
//! with the same error. Connection errors are
//! [`ReplicaError::Unavailable`] (so is a script's `STALERUN`, see
//! above), deadlines [`ReplicaError::Timeout`],
//! `WRONGTYPE`/`CORRUPT` [`ReplicaError::Corrupt`], and `OOM`, `READONLY`,
//! `NOPERM`, `BUSY` and script errors [`ReplicaError::Refused`]. Logs name a
//! key by its first 8 characters only and never show values.
//!
//! # Connections
//!
//! A dropped connection to a Redis that still runs costs milliseconds:
//! fred reconnects after `reconnect_delay_min` (10 ms by default), a
//! request waits up to `reconnect_wait` for it, and a request the drop
//! failed is made once more on the new connection (`reconnect.rs`).
//!
//! Two per replica: one for the requests (reads, merges, epochs, leases)
//! and one for anti-entropy's batched reads and creates and its `SCAN`s, so
//! that a page of hundreds of keys never queues a foreground request behind
//! it on the connection (while the second is down, or in Cluster mode, they
//! take the first). Each has its own run id and reconnection count
//! (`process.rs`); a batch's bracketing `MGET`s are checked on the
//! connection that ran it (a new epoch made after a failed check comes
//! from the first, and counts as incomplete anyway).
//!
//! # Files
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | this overview, [`RedisReplica`], the [`Replica`] impl (dispatch), error mapping of a command's outcome |
//! | `config.rs` | [`RedisReplicaConfig`], [`RedisConnectError`] |
//! | `connect.rs` | [`RedisReplica::connect`], the fred clients, the eviction-policy check, the usable-connection check |
//! | `reconnect.rs` | a dropped connection: waiting for it, making a request again on the new one |
//! | `process.rs` | the run id of the Redis process behind a connection |
//! | `identity.rs` | epochs: in script replies and `MGET` answers, the epoch script, the confirmation (`confirmed.rs`) |
//! | `scripts.rs` | script calls (`EVALSHA`), the merge call (one or more records) |
//! | `witness.rs` | Cluster mode: the witness of each slot, the epoch renewal |
//! | `queue.rs` | the merge queue: which merges share a call, the senders |
//! | `common.lua`, `merge.lua`, `epoch.lua`, `lease.lua`, `read.lua` | the scripts (`read.lua`: Cluster mode's read) |
//! | `read.rs` | the two read protocols of one record, decoding a hash |
//! | `batch.rs`, `dump.rs` | anti-entropy's batched reads and creates (`RESTORE` payloads) |
//! | `scan.rs` | `SCAN`, `UNLINK`, `wipe` |
//! | `lease.rs` | the anti-entropy lease |
//! | `wire.rs` | pure helpers: error mapping, epoch and cursor parsing, the delta as sent |
//!
//! # Permissions
//!
//! With ACLs, the user needs `EVALSHA`, `EVAL` and `SCRIPT LOAD`, `MGET`
//! and `HGETALL`, `INFO` (the run id, once per connection; in Cluster mode
//! inside every script), `EXISTS` (Cluster mode), `SCAN` and `UNLINK` (scans and `wipe`), read and write on
//! `~<prefix>*`; `CONFIG GET` is optional (without it the eviction policy
//! cannot be checked and a warning is logged).
//!
//! # Cluster mode
//!
//! A record's keys share a slot through their hash tag, but the epoch key
//! cannot share every record's slot. So every slot has a *witness* key (in
//! that slot) naming the Redis process that stamped it, and every read and
//! merge script checks its record's slot's witness in the same atomic call
//! (one `GET` and one `INFO server`, about 4 µs of the server's time): a
//! shard that restarted empty or from a snapshot, was flushed, or was failed
//! over to a Cluster replica is seen from the next reply for any of its
//! keys, and the replica gets a new epoch as a standalone Redis would after
//! a restart (the whole replica is refilled, not only that shard's slots).
//! How the renewal keeps a stamp from hiding a loss, and what it costs
//! (16,384 keys, about 2.3 MB per Cluster replica; stamping them all takes
//! about a second): `witness.rs`. A read is the read script, then the epoch
//! script on the epoch key's node (with its slot's witness); each merge is
//! its own call (records of one call would have to share a slot). Scans walk
//! every primary in turn (the cursor is `node:cursor`), and the eviction
//! check reads every primary's policy. With fred 10 one unreachable primary
//! stops the whole client (it reconnects as a whole), so every request
//! fails until that node is back or replaced (`tests/cluster.rs`).

mod batch;
mod config;
mod confirmed;
mod connect;
mod describe;
mod dump;
mod identity;
mod lease;
mod process;
mod queue;
mod read;
mod reconnect;
mod scan;
mod scripts;
mod wire;
mod witness;

use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::ConnectHandle;

pub use config::{
    EvictionCheck, RedisConnectError, RedisReplicaConfig, RedisTarget, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEY_PREFIX, DEFAULT_RECONNECT_DELAY_MAX, DEFAULT_RECONNECT_DELAY_MIN,
    DEFAULT_RECONNECT_WAIT, DEFAULT_REQUEST_TIMEOUT, KEY_PREFIX_MAX_BYTES,
};
pub use confirmed::RECONFIRM_AFTER;
pub use queue::{
    MergeCallStats, MERGE_BATCH_KEYS_LIMIT, MERGE_BATCH_MAX_BYTES, MERGE_BATCH_MAX_KEYS,
    MERGE_CALLS_IN_FLIGHT, MERGE_QUEUE_MAX,
};
pub use witness::{
    CLUSTER_SLOTS, RENEWAL_LEASE_TTL, RENEWAL_STAMPING_MAX, WITNESS_RENEWALS_PER_REQUEST,
    WITNESS_STAMPS_IN_FLIGHT,
};

use super::{Epoch, MergeMode, MergeReply, ReadReply, Replica, ReplicaInfo, ScanPage};
use crate::error::ReplicaError;
use crate::record::{Record, StoredFormat};
use confirmed::ConfirmedEpoch;
use process::ProcessIdentity;
use wire::{map_error, short_key};

/// Added to a record's effective expiry for its Redis TTL, so that a Redis
/// clock a little ahead never drops a record the coordinators still count
/// on (they enforce the exact expiry on reads).
pub const EXPIRY_MARGIN_MS: u64 = 60_000;
/// Keys fetched and unlinked per round by [`Replica::wipe`].
pub const WIPE_BATCH: usize = 500;
/// Largest `COUNT` hint a scan sends.
pub const SCAN_COUNT_MAX: usize = 10_000;
/// The hash field where `merge.lua` notes the epoch id (16 hex) it wrote the
/// record in: a read finding the epoch it has confirmed there needs no
/// epoch `MGET` (see "Reads" above).
const WRITE_EPOCH_FIELD: &[u8] = b"m:ep";
/// The summaries `merge.lua` keeps so that a write reads only the fields it
/// changes: the largest field stamp (32 hex, or `-` for none) and the flag
/// of an entry with an `until` (`1`). Not part of the record: a read
/// checks and drops them.
const FIELD_STAMP_SUMMARY: &[u8] = b"m:h";
const UNTIL_FLAG: &[u8] = b"m:u";
/// The connection a request went through (its generation, see
/// `process.rs`) and when it was sent.
#[derive(Clone, Copy, Debug)]
struct Via {
    generation: u64,
    sent: std::time::Instant,
}

impl Via {
    /// A request about to be sent on connection `generation`.
    fn now(generation: u64) -> Via {
        Via {
            generation,
            sent: std::time::Instant::now(),
        }
    }
}

/// Name of the epoch key, after the prefix.
const EPOCH_KEY_SUFFIX: &str = "epoch";
/// Name of the key holding the run id of the Redis process that made or
/// confirmed the epoch, after the prefix.
const RUN_KEY_SUFFIX: &str = "epoch:run";

const MERGE_LUA: &str = concat!(include_str!("common.lua"), include_str!("merge.lua"));
const EPOCH_LUA: &str = concat!(include_str!("common.lua"), include_str!("epoch.lua"));
const LEASE_LUA: &str = concat!(include_str!("common.lua"), include_str!("lease.lua"));
const READ_LUA: &str = concat!(include_str!("common.lua"), include_str!("read.lua"));
/// Name of the anti-entropy lease key, after the prefix.
const LEASE_KEY_SUFFIX: &str = "lease";

/// [`EXPIRY_MARGIN_MS`] as the merge script reads it.
const EXPIRY_MARGIN_ARG: &str = "60000";
const _: () = assert!(EXPIRY_MARGIN_MS == 60_000, "EXPIRY_MARGIN_ARG follows it");
/// Where the merge script reads the run id (`ARGV[4]`).
const MERGE_RUN_ID_SLOT: usize = 3;
/// Stands for the run id in script arguments until it is filled in (and in
/// Cluster mode, where the scripts do not read it).
fn run_id_placeholder() -> Value {
    Value::from_static_str("")
}

const EVICTION_UNCHECKED: u8 = 0;
const EVICTION_OK: u8 = 1;
const EVICTION_REFUSED: u8 = 2;

/// A replica on one Redis deployment. See the module docs.
pub struct RedisReplica {
    /// Shared with the tasks that send queued merges (`queue.rs`).
    inner: Arc<Inner>,
}

/// What a [`RedisReplica`] holds: connections, keys, scripts, epochs.
struct Inner {
    name: String,
    client: Client,
    prefix: String,
    epoch_key: String,
    run_key: String,
    /// The epoch and run keys, as fred keys (cheap to clone).
    epoch_fred_key: Key,
    run_fred_key: Key,
    timeout: Duration,
    /// How long a request waits for a dropped connection (see
    /// `reconnect.rs`).
    reconnect_wait: Duration,
    clustered: bool,
    eviction_check: EvictionCheck,
    /// The stored format merges and refills write (the delta's `m:v`).
    stored_format: StoredFormat,
    eviction_state: AtomicU8,
    merge_script: Script,
    epoch_script: Script,
    lease_script: Script,
    /// Cluster mode's read of one record (with its slot's witness).
    read_script: Script,
    /// Cluster mode: one epoch renewal at a time (`witness.rs`).
    renewal: Arc<tokio::sync::Mutex<()>>,
    /// This replica, for the renewal task (`witness.rs`).
    me: std::sync::Weak<Inner>,
    /// [`RedisReplicaConfig::adopt_unwitnessed_cluster`].
    adopt_unwitnessed: bool,
    /// When requests last started a takeover of a renewal (`witness.rs`).
    last_takeover: Mutex<Option<std::time::Instant>>,
    /// The witness of the epoch key's slot (Cluster mode, `witness.rs`).
    epoch_witness: Key,
    /// `<prefix>epoch:renewal` (Cluster mode, `witness.rs`).
    renewal_key: String,
    /// `<prefix>lease`.
    lease_key: String,
    /// The run id of the Redis process behind the connection.
    identity: ProcessIdentity,
    /// A second connection for anti-entropy's batches and scans, so that a
    /// page of hundreds of keys never queues foreground requests behind it
    /// (standalone and Sentinel; Cluster mode reads key by key and scans on
    /// `client`). While it is down, they take `client` (see `bulk_link`).
    bulk: Client,
    bulk_identity: ProcessIdentity,
    /// The epoch last confirmed complete on this connection (single-command
    /// reads).
    confirmed: ConfirmedEpoch,
    /// The connection tasks (`client`'s, `bulk`'s), aborted on drop.
    connections: Mutex<Vec<ConnectHandle>>,
    /// Merges waiting for a call (`queue.rs`).
    merges: queue::MergeQueue,
    merge_calls: queue::MergeCalls,
}

impl std::fmt::Debug for RedisReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisReplica")
            .field("name", &inner.name)
            .field("prefix", &inner.prefix)
            .field("clustered", &inner.clustered)
            .field("state", &inner.client.state())
            .finish()
    }
}

impl RedisReplica {
    /// The fred client (for diagnostics and tests; prefer the trait methods).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key of the epoch (`<prefix>epoch`).
    pub fn epoch_key(&self) -> &str {
        &self.inner.epoch_key
    }

    /// The Redis key that holds the record `key`: the prefix, then the key.
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.redis_key(key)
    }

    /// The deadline of every command.
    pub fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Counts of the merge calls made so far (how many records they
    /// carried; see [`MERGE_BATCH_MAX_KEYS`]).
    pub fn merge_call_stats(&self) -> MergeCallStats {
        self.inner.merge_calls.snapshot()
    }

    /// Closes the connection; every later request fails as unavailable.
    pub async fn quit(&self) {
        let inner = &self.inner;
        let quits = futures::future::join(inner.client.quit(), inner.bulk.quit());
        let _ = tokio::time::timeout(inner.timeout, quits).await;
        inner.abort_connections();
    }
}

impl Inner {
    /// The Redis key that holds the record `key`: the prefix, then the key.
    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn abort_connections(&self) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for handle in connections.drain(..) {
            handle.abort();
        }
    }

    /// Maps a command's outcome (deadline, then fred's result).
    fn finish<T>(
        &self,
        op: &'static str,
        key: Option<&str>,
        outcome: Result<Result<T, fred::error::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, ReplicaError> {
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => map_error(&self.name, error, self.timeout),
            Err(_) => ReplicaError::Timeout {
                after: self.timeout,
            },
        };
        tracing::debug!(
            replica = %self.name, op, key = %short_key(key.unwrap_or("")),
            kind = error.kind(), %error, "Redis request failed"
        );
        Err(error)
    }

    /// Maps the error of one command of a batch (and logs it).
    fn map_command_error(
        &self,
        op: &'static str,
        key: &str,
        error: fred::error::Error,
    ) -> ReplicaError {
        let error = map_error(&self.name, error, self.timeout);
        tracing::debug!(
            replica = %self.name, op, key = %short_key(key),
            kind = error.kind(), %error, "Redis request failed"
        );
        error
    }

    fn malformed(&self, op: &str) -> ReplicaError {
        ReplicaError::Refused {
            detail: format!("{}: unexpected reply shape from the {op} script", self.name),
            source: None,
        }
    }

    /// `Replica::read`.
    async fn read_record(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        self.check_key(key)?;
        self.retrying(|| Box::pin(self.read_once(key))).await
    }

    /// Refuses a logical key that would collide with the epoch keys (and
    /// the witnesses, `epoch:w:…`).
    fn check_key(&self, key: &str) -> Result<(), ReplicaError> {
        if key == EPOCH_KEY_SUFFIX
            || key == RUN_KEY_SUFFIX
            || key == LEASE_KEY_SUFFIX
            || key == witness::RENEWAL_KEY_SUFFIX
            || key.starts_with(witness::WITNESS_KEY_INFIX)
            || key.is_empty()
        {
            return Err(ReplicaError::Refused {
                detail: format!("{}: key {key:?} is reserved or empty", self.name),
                source: None,
            });
        }
        Ok(())
    }
}

impl Drop for RedisReplica {
    fn drop(&mut self) {
        // The connection tasks would otherwise reconnect forever (a sender
        // task still holding `inner` then fails at once).
        self.inner.abort_connections();
    }
}

#[async_trait]
impl Replica for RedisReplica {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        self.inner.read_record(key).await
    }

    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        self.inner.merge_queued(key, delta, mode, now_ms).await
    }

    async fn read_many(&self, keys: &[String]) -> Vec<Result<ReadReply, ReplicaError>> {
        self.inner.read_batch(keys).await
    }

    async fn merge_many(
        &self,
        items: &[(String, std::sync::Arc<Record>)],
        now_ms: u64,
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        self.inner.merge_batch(items, now_ms).await
    }

    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError> {
        self.inner.scan_page(cursor, count).await
    }

    async fn ping(&self) -> Result<Epoch, ReplicaError> {
        self.inner.ping_epoch().await
    }

    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        self.inner.mark_complete(epoch_id).await
    }

    async fn acquire_lease(&self, owner: u64, ttl: Duration) -> Result<bool, ReplicaError> {
        self.inner.acquire(owner, ttl).await
    }

    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError> {
        self.inner.release(owner).await
    }

    /// Deletes every key under the prefix (SCAN + UNLINK in batches of
    /// [`WIPE_BATCH`]) and the epoch key, which goes first and last so the
    /// next request starts a new epoch. Never `FLUSHDB`: the Redis may be
    /// shared.
    async fn describe(&self) -> Result<ReplicaInfo, ReplicaError> {
        self.inner.describe().await
    }

    async fn wipe(&self) -> Result<(), ReplicaError> {
        self.inner.wipe_all().await
    }
}
