//! `RedisReplica`: a [`Replica`] on one Redis deployment (standalone,
//! Sentinel or Cluster), through fred and two Lua scripts.
//!
//! # Stored layout
//!
//! ```text
//! <prefix><key>     hash    one record (key = "s:{id}", "u:{user}", …)
//!   f:<name>        stamp(32 hex) ‖ kind(v|d|V|D) ‖ until(12 hex, kinds V/D) ‖ value bytes
//!   m:v             "1"                format version
//!   m:e             12 hex             expiry, ms since the Unix epoch
//!   m:c             12 hex             lifetime cap, ms
//!   m:t             stamp (32 hex)     tombstone (absent when live)
//!   m:o             stamp (32 hex)     origin: the create's stamp (absent when unknown)
//!   m:p             "1"                partial (absent when full)
//!   m:ep            16 hex             epoch of the last merge that wrote it (not part of the record)
//!   TTL             PEXPIREAT min(m:e, m:c) + EXPIRY_MARGIN_MS
//! <prefix>epoch     string  16 hex ‖ ":n" (new) or ":c" (complete)
//! <prefix>epoch:run string  run_id of the Redis process that made or confirmed the epoch
//! <prefix>lease     string  16 hex: the coordinator holding the anti-entropy lease (PX ttl)
//! ```
//!
//! (See [`crate::codec`]; the default prefix is `qs:`.)
//!
//! # The scripts
//!
//! - `merge.lua` applies a delta to one record atomically, with exactly the
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
//!   before the merge.
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
//!   decodes the hash with [`codec::decode_pairs`].
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
//! # Deadlines and errors
//!
//! Every command runs under [`RedisReplicaConfig::request_timeout`] with
//! `tokio::time::timeout` (fred ignores per-command timeouts for `EVALSHA`).
//! A merge that timed out may still have been applied (merges are
//! idempotent: retrying is safe). Connection errors are
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
//! # Permissions
//!
//! With ACLs, the user needs `EVALSHA`, `EVAL` and `SCRIPT LOAD`, `MGET`
//! and `HGETALL`, `INFO` (the run id, once per connection), `SCAN` and `UNLINK` (scans and `wipe`), read and write on
//! `~<prefix>*`; `CONFIG GET` is optional (without it the eviction policy
//! cannot be checked and a warning is logged).
//!
//! # Cluster mode
//!
//! A record's keys share a slot through their hash tag, but the epoch key
//! cannot share every record's slot. In Cluster mode the merge script
//! therefore gets the record key only, a read is a plain `HGETALL`, and the
//! epoch is read by a second script call on the epoch key's node, after the
//! record call, without the run-id check (the run key may live in a third
//! slot). Limitation: the epoch then
//! detects only that the epoch key's node restarted empty; a Cluster shard
//! that loses or reloads its data is not seen by the epoch (rely on Cluster
//! replicas for that, and on anti-entropy). Scans walk every
//! primary in turn (the cursor is `node:cursor`). Standalone and Sentinel
//! deployments keep everything atomic.

mod batch;
mod config;
mod confirmed;
mod dump;
mod process;
mod reconnect;
mod wire;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, Resp3Frame};

pub use config::{
    EvictionCheck, RedisConnectError, RedisReplicaConfig, RedisTarget, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEY_PREFIX, DEFAULT_RECONNECT_DELAY_MAX, DEFAULT_RECONNECT_DELAY_MIN,
    DEFAULT_RECONNECT_WAIT, DEFAULT_REQUEST_TIMEOUT, KEY_PREFIX_MAX_BYTES,
};
pub use confirmed::RECONFIRM_AFTER;

use super::{Epoch, MergeMode, MergeReply, MergeStatus, ReadReply, Replica, ScanPage};
use crate::codec;
use crate::error::ReplicaError;
use crate::record::Record;
use crate::stamp::{encode_ms, Stamp, PHYSICAL_MAX};
use confirmed::ConfirmedEpoch;
use process::ProcessIdentity;
use wire::{
    blob, delta_args, delta_for_wire, epoch_candidate, glob_escape, map_error, parse_epoch,
    short_key, split_cursor,
};

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

const MERGE_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/merge.lua")
);
const EPOCH_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/epoch.lua")
);
const LEASE_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/lease.lua")
);
/// Name of the anti-entropy lease key, after the prefix.
const LEASE_KEY_SUFFIX: &str = "lease";

/// [`EXPIRY_MARGIN_MS`] as the merge script reads it.
const EXPIRY_MARGIN_ARG: &str = "60000";
const _: () = assert!(EXPIRY_MARGIN_MS == 60_000, "EXPIRY_MARGIN_ARG follows it");
/// Where the merge script reads the run id (`ARGV[5]`).
const MERGE_RUN_ID_SLOT: usize = 4;
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
    eviction_state: AtomicU8,
    merge_script: Script,
    epoch_script: Script,
    lease_script: Script,
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
}

impl std::fmt::Debug for RedisReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplica")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("clustered", &self.clustered)
            .field("state", &self.client.state())
            .finish()
    }
}

impl RedisReplica {
    /// Makes a replica and starts connecting.
    ///
    /// Waits up to `connect_timeout` for the first connection. A node that is
    /// down (or slow) is not an error: the replica is returned and fred keeps
    /// reconnecting in the background (its requests fail as
    /// [`ReplicaError::Unavailable`] meanwhile), because a coordinator must be
    /// able to start with a replica down. When the node answers, its
    /// `maxmemory-policy` is checked (see [`EvictionCheck`]).
    ///
    /// # Errors
    ///
    /// [`RedisConnectError`]: invalid configuration, TLS asked for in a build
    /// without the `tls` feature, credentials refused, or an evicting Redis
    /// with [`EvictionCheck::Refuse`].
    pub async fn connect(config: RedisReplicaConfig) -> Result<RedisReplica, RedisConnectError> {
        config.validate()?;
        let fred_config = config.fred_config()?;
        let clustered = fred_config.server.is_clustered();
        let client = build_client(&config, fred_config)?;
        // Count connections from the first one on (see process.rs).
        let identity = ProcessIdentity::new(&client);
        // Subscribe to the first connection result and to connection errors
        // before the connection task starts, so that a fast failure (a wrong
        // password) is not missed. fred retries authentication errors
        // forever: they only show on the error stream.
        let errors = client.error_rx();
        let waiter = client.clone();
        let mut wait = Box::pin(waiter.wait_for_connect());
        let _ = futures::poll!(wait.as_mut());
        // Both clients are built before either connects: an error returned
        // below must not leave a connection task running.
        let bulk = build_client(&config, config.fred_config()?)?;
        let bulk_identity = ProcessIdentity::new(&bulk);
        let handle = client.connect();
        let first = first_connection(wait, errors);
        let bulk_handle = bulk.connect();
        let epoch_key = format!("{}{EPOCH_KEY_SUFFIX}", config.key_prefix);
        let run_key = format!("{}{RUN_KEY_SUFFIX}", config.key_prefix);
        let replica = RedisReplica {
            name: config.name.clone(),
            prefix: config.key_prefix.clone(),
            epoch_fred_key: Key::from(epoch_key.as_str()),
            run_fred_key: Key::from(run_key.as_str()),
            epoch_key,
            run_key,
            timeout: config.request_timeout,
            reconnect_wait: config.reconnect_wait.min(config.request_timeout),
            clustered,
            eviction_check: config.eviction_check,
            eviction_state: AtomicU8::new(EVICTION_UNCHECKED),
            merge_script: Script::from_lua(MERGE_LUA),
            epoch_script: Script::from_lua(EPOCH_LUA),
            lease_script: Script::from_lua(LEASE_LUA),
            lease_key: format!("{}{LEASE_KEY_SUFFIX}", config.key_prefix),
            identity,
            bulk,
            bulk_identity,
            confirmed: ConfirmedEpoch::default(),
            connections: Mutex::new(vec![handle, bulk_handle]),
            client,
        };
        match tokio::time::timeout(config.connect_timeout, first).await {
            Ok(Ok(())) => {
                replica.check_eviction().await?;
                // The node answers: the bulk connection follows at once (or
                // later, in the background; batches use the main connection
                // while it is down).
                let bulk = replica.bulk.wait_for_connect();
                let _ = tokio::time::timeout(config.connect_timeout, bulk).await;
            }
            Ok(Err(error)) if *error.kind() == ErrorKind::Auth => {
                // Dropping the replica aborts the connection task.
                return Err(RedisConnectError::Auth {
                    replica: config.name,
                    source: error,
                });
            }
            Ok(Err(error)) if matches!(error.kind(), ErrorKind::Config | ErrorKind::Url) => {
                return Err(RedisConnectError::Config {
                    replica: config.name,
                    detail: "fred refused the configuration".into(),
                    source: Some(error),
                });
            }
            Ok(Err(error)) => tracing::warn!(
                replica = %replica.name, %error,
                "Redis unreachable at connect; reconnecting in the background"
            ),
            Err(_) => tracing::warn!(
                replica = %replica.name, after = ?config.connect_timeout,
                "Redis not connected yet; reconnecting in the background"
            ),
        }
        Ok(replica)
    }

    /// The fred client (for diagnostics and tests; prefer the trait methods).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the epoch (`<prefix>epoch`).
    pub fn epoch_key(&self) -> &str {
        &self.epoch_key
    }

    /// The Redis key that holds the record `key`: the prefix, then the key.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The deadline of every command.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes the connection; every later request fails as unavailable.
    pub async fn quit(&self) {
        let quits = futures::future::join(self.client.quit(), self.bulk.quit());
        let _ = tokio::time::timeout(self.timeout, quits).await;
        self.abort_connections();
    }

    fn abort_connections(&self) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for handle in connections.drain(..) {
            handle.abort();
        }
    }

    /// Checks `maxmemory-policy` once per replica, when the node answers.
    async fn check_eviction(&self) -> Result<(), RedisConnectError> {
        if self.eviction_state.load(Ordering::Relaxed) != EVICTION_UNCHECKED {
            return Ok(());
        }
        let answer = tokio::time::timeout(
            self.timeout,
            self.client
                .config_get::<Vec<(String, String)>, _>("maxmemory-policy"),
        )
        .await;
        let policy = match answer {
            Ok(Ok(pairs)) => pairs.into_iter().find(|(k, _)| k == "maxmemory-policy"),
            // Unreachable or slow: check again at the next request.
            Ok(Err(error))
                if matches!(
                    error.kind(),
                    ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout
                ) =>
            {
                return Ok(())
            }
            Err(_) => return Ok(()),
            // NOPERM, or CONFIG renamed away: the policy cannot be known.
            Ok(Err(error)) => {
                tracing::warn!(replica = %self.name, %error, "cannot read maxmemory-policy; make sure it is noeviction");
                self.eviction_state.store(EVICTION_OK, Ordering::Relaxed);
                return Ok(());
            }
        };
        let Some((_, policy)) = policy else {
            tracing::warn!(replica = %self.name, "CONFIG GET maxmemory-policy answered nothing; make sure it is noeviction");
            self.eviction_state.store(EVICTION_OK, Ordering::Relaxed);
            return Ok(());
        };
        if policy == "noeviction" {
            self.eviction_state.store(EVICTION_OK, Ordering::Relaxed);
            return Ok(());
        }
        match self.eviction_check {
            EvictionCheck::Warn => {
                tracing::warn!(replica = %self.name, %policy, "this Redis can evict keys: tombstones and records may silently disappear");
                self.eviction_state.store(EVICTION_OK, Ordering::Relaxed);
                Ok(())
            }
            EvictionCheck::Refuse => {
                self.eviction_state
                    .store(EVICTION_REFUSED, Ordering::Relaxed);
                Err(RedisConnectError::Eviction {
                    replica: self.name.clone(),
                    policy,
                })
            }
        }
    }

    /// Before every request: the replica must not be refused for eviction,
    /// and must be connected (a disconnected fred client would queue the
    /// command until the deadline; answering after at most
    /// `reconnect_wait`, see `reconnect.rs`, lets the coordinator skip the
    /// replica).
    async fn ensure_usable(&self) -> Result<(), ReplicaError> {
        self.ensure_usable_on(&self.client).await
    }

    /// The connection for anti-entropy's batches and scans, with its
    /// reconnection count: `bulk` when it is connected (not in Cluster mode,
    /// whose scans walk `client`'s view of the primaries), else `client`, so
    /// that a bulk connection still reconnecting (or refused by
    /// `maxclients`) never fails a pass nor counts against the replica's
    /// health.
    fn bulk_link(&self) -> (&Client, &ProcessIdentity) {
        if !self.clustered && self.bulk.is_connected() {
            (&self.bulk, &self.bulk_identity)
        } else {
            (&self.client, &self.identity)
        }
    }

    /// [`ensure_usable`](Self::ensure_usable) for a request on `client`.
    async fn ensure_usable_on(&self, client: &Client) -> Result<(), ReplicaError> {
        if !client.is_connected() && !self.wait_connected(client).await {
            return Err(ReplicaError::Unavailable {
                detail: format!("{}: not connected (reconnecting)", self.name),
                source: None,
            });
        }
        let unchecked = self.eviction_state.load(Ordering::Relaxed) == EVICTION_UNCHECKED;
        // Boxed (see `run_id`), and only built while the check is due.
        if let Err(error) = if unchecked {
            Box::pin(self.check_eviction()).await
        } else {
            Ok(())
        } {
            return Err(ReplicaError::Refused {
                detail: error.to_string(),
                source: None,
            });
        }
        if self.eviction_state.load(Ordering::Relaxed) == EVICTION_REFUSED {
            return Err(ReplicaError::Refused {
                detail: format!(
                    "{}: this Redis can evict keys (maxmemory-policy)",
                    self.name
                ),
                source: None,
            });
        }
        Ok(())
    }

    /// Runs a script under the deadline and maps its errors. `request`
    /// makes the keys and arguments; `args[run_id_slot]` is a placeholder
    /// for the run id, filled in here outside Cluster mode (`None`: the
    /// script takes no run id). An answer that
    /// arrives after a reconnection is refused (see `process.rs`). On
    /// `NOSCRIPT` (a restarted or flushed Redis) the script is loaded and
    /// the request made and sent again: the usual case sends what `request`
    /// made without copying it.
    ///
    /// Made once more when the connection dropped under it (see
    /// `reconnect.rs`).
    async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        request: impl Fn() -> (Vec<Key>, Vec<Value>),
        run_id_slot: Option<usize>,
        key: Option<&str>,
    ) -> Result<(Value, Option<Via>), ReplicaError> {
        let once = || Box::pin(self.eval_once(op, script, &request, run_id_slot, key));
        self.retrying(once).await
    }

    /// One [`eval`](Self::eval).
    async fn eval_once(
        &self,
        op: &'static str,
        script: &Script,
        request: &impl Fn() -> (Vec<Key>, Vec<Value>),
        run_id_slot: Option<usize>,
        key: Option<&str>,
    ) -> Result<(Value, Option<Via>), ReplicaError> {
        self.ensure_usable().await?;
        let (via, run_id) = if self.clustered || run_id_slot.is_none() {
            (None, run_id_placeholder())
        } else {
            let (generation, run_id) = self.run_id().await?;
            (Some(Via::now(generation)), run_id)
        };
        let call = async {
            // Boxed: see `run_id`.
            let send = || {
                let (keys, mut args) = request();
                if let Some(slot) = run_id_slot {
                    args[slot] = run_id.clone();
                }
                Box::pin(
                    self.client
                        .evalsha::<Value, _, _, _>(script.sha1().clone(), keys, args),
                )
            };
            match send().await {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    Box::pin(script.load(&self.client)).await?;
                    send().await
                }
                result => result,
            }
        };
        let outcome = tokio::time::timeout(self.timeout, call).await;
        if let (Some(via), Ok(Err(error))) = (via, &outcome) {
            if wire::is_stale_run_id(error) {
                // Nothing was written; the next request learns the run id
                // again (if no reconnection announced it already).
                self.identity.forget(via.generation);
            }
        }
        let reply = self.finish(op, key, outcome)?;
        if let Some(via) = via {
            self.identity
                .check(&self.name, &self.client, via.generation)?;
        }
        Ok((reply, via))
    }

    /// Notes the epoch a reply showed (see `confirmed.rs`), as of when its
    /// request was sent: a reply noted late cannot make a confirmation last
    /// beyond [`RECONFIRM_AFTER`] after the epoch was last seen standing.
    /// Cluster mode (`None`) never reads with one command.
    fn note_epoch(&self, via: Option<Via>, epoch: Epoch) {
        if let Some(via) = via {
            self.confirmed.note(via.generation, epoch, via.sent);
        }
    }

    /// The run id of the Redis process behind the connection, and the
    /// connection generation it holds for (`INFO server` after each new
    /// connection).
    ///
    /// fred's command futures are several KB each and an async fn holds
    /// every future it awaits inline, so the ones awaited here are boxed:
    /// the request futures stay small and cheap to move.
    async fn run_id(&self) -> Result<(u64, Value), ReplicaError> {
        self.run_id_on(&self.client, &self.identity).await
    }

    /// [`run_id`](Self::run_id) of the connection of `client`, whose
    /// reconnections `identity` counts.
    async fn run_id_on(
        &self,
        client: &Client,
        identity: &ProcessIdentity,
    ) -> Result<(u64, Value), ReplicaError> {
        if let Some(known) = identity.cached(client) {
            return Ok(known);
        }
        let info = Box::pin(async {
            let call = process::info_server(client);
            self.finish("info", None, tokio::time::timeout(self.timeout, call).await)
        });
        identity.learn(&self.name, client, info).await
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

    /// The script keys: the record key, then the epoch and run keys
    /// (standalone and Sentinel only; see the module docs on Cluster mode).
    fn script_keys(&self, key: &str) -> Vec<Key> {
        let mut keys = Vec::with_capacity(3);
        keys.push(Key::from(self.redis_key(key)));
        if !self.clustered {
            keys.push(self.epoch_fred_key.clone());
            keys.push(self.run_fred_key.clone());
        }
        keys
    }

    /// The epoch script's keys: the epoch key, then the run key (not in
    /// Cluster mode: it may live in another slot).
    fn epoch_keys(&self) -> Vec<Key> {
        let mut keys = vec![self.epoch_fred_key.clone()];
        if !self.clustered {
            keys.push(self.run_fred_key.clone());
        }
        keys
    }

    /// The epoch and run keys' names (the run key not in Cluster mode).
    fn epoch_key_names(&self) -> Vec<String> {
        let mut keys = vec![self.epoch_key.clone()];
        if !self.clustered {
            keys.push(self.run_key.clone());
        }
        keys
    }

    /// The epoch from a script reply through `via`, or (Cluster mode) from
    /// the epoch key.
    async fn epoch_from(
        &self,
        value: Option<&Value>,
        via: Option<Via>,
    ) -> Result<Epoch, ReplicaError> {
        if self.clustered {
            return Box::pin(self.ping_epoch()).await;
        }
        let text = value.and_then(Value::as_bytes).unwrap_or_default();
        let epoch = parse_epoch(text).ok_or_else(|| ReplicaError::Corrupt {
            detail: format!("{}: malformed epoch in a script reply", self.name),
        })?;
        self.note_epoch(via, epoch);
        Ok(epoch)
    }

    async fn ping_epoch(&self) -> Result<Epoch, ReplicaError> {
        let args = vec![
            Value::from_static_str("get"),
            Value::from(epoch_candidate()),
            run_id_placeholder(),
        ];
        let request = || (self.epoch_keys(), args.clone());
        let (reply, via) = self
            .eval("ping", &self.epoch_script, request, Some(2), None)
            .await?;
        let epoch = parse_epoch(reply.as_bytes().unwrap_or_default()).ok_or_else(|| {
            ReplicaError::Corrupt {
                detail: format!("{}: malformed epoch", self.name),
            }
        })?;
        self.note_epoch(via, epoch);
        Ok(epoch)
    }

    /// One read outside Cluster mode: `MGET <epoch> <epoch:run>`, `HGETALL
    /// <key>`, `MGET <epoch> <epoch:run>` again, as one fred pipeline (one
    /// message to the connection task, one write; Redis runs them in that
    /// order). Returns the epoch that held while the hash was read (see the
    /// module docs: `None` when there was none made by this process, or it
    /// changed), then the hash.
    async fn read_bracketed(&self, key: &str) -> Result<(Option<Epoch>, Value), ReplicaError> {
        self.ensure_usable().await?;
        let (generation, run_id) = self.run_id().await?;
        let via = Via::now(generation);
        // Boxed: see `run_id`.
        let call = Box::pin(async {
            let pipeline = self.client.pipeline();
            let () = pipeline.mget(self.epoch_ids()).await?;
            let () = pipeline.hgetall(self.redis_key(key)).await?;
            let () = pipeline.mget(self.epoch_ids()).await?;
            pipeline.all::<Vec<Value>>().await
        });
        let answers = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        let Ok([before, hash, after]) = <[Value; 3]>::try_from(answers) else {
            return Err(self.malformed("read"));
        };
        self.identity.check(&self.name, &self.client, generation)?;
        let epoch = self.epoch_between(before, after, &run_id)?;
        match epoch {
            Some(epoch) => self.note_epoch(Some(via), epoch),
            None => self.confirmed.forget(),
        }
        Ok((epoch, hash))
    }

    /// The keys of `MGET <epoch> <epoch:run>`.
    fn epoch_ids(&self) -> Vec<fred::types::Key> {
        vec![self.epoch_fred_key.clone(), self.run_fred_key.clone()]
    }

    /// `HGETALL` of the record `key`, under the deadline, decoded from the
    /// reply frame itself: fred's typed `hgetall` would build a hash map of
    /// owned values first (hashing every field name, checking every value
    /// for UTF-8: about 8% of the benchmark process's CPU in a `perf`
    /// profile of R=1 reads), only for us to take it apart again.
    async fn hgetall(&self, key: &str) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        self.ensure_usable().await?;
        let command = CustomCommand::new_static("HGETALL", ClusterHash::FirstKey, false);
        // Boxed: see `run_id`.
        let call = Box::pin(
            self.client
                .custom_raw(command, vec![Value::from(self.redis_key(key))]),
        );
        let frame = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        let error_reply = |text: String| {
            let error = fred::error::Error::new(ErrorKind::Unknown, text);
            self.map_command_error("read", key, error)
        };
        let mut pairs = Vec::new();
        match &frame {
            Resp3Frame::Array { data, .. } if data.len() % 2 == 0 => {
                pairs.reserve(data.len() / 2);
                for pair in data.chunks_exact(2) {
                    match (blob(&pair[0]), blob(&pair[1])) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            Resp3Frame::Map { data, .. } => {
                pairs.reserve(data.len());
                for (name, value) in data {
                    match (blob(name), blob(value)) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            // An error reply (a key of another type answers WRONGTYPE).
            Resp3Frame::SimpleError { data, .. } => return Err(error_reply(data.to_string())),
            Resp3Frame::BlobError { data, .. } => {
                return Err(error_reply(String::from_utf8_lossy(data).into_owned()))
            }
            _ => return Err(self.malformed("read")),
        }
        self.decode_pairs(key, pairs)
    }

    /// A read when an epoch was confirmed complete on the current
    /// connection (see the module docs): `HGETALL <key>` alone when it finds
    /// a record whose last merge ran in that epoch (`m:ep`); otherwise (a
    /// miss, a record written in another epoch or by a refill) `MGET
    /// <epoch> <epoch:run>` next on the same connection, and the read
    /// counts if that shows the confirmed epoch. `Ok(None)`: no confirmation
    /// to rely on, or the `MGET` did not show it (the confirmation is then
    /// dropped): take the bracketed path.
    async fn read_fast(&self, key: &str) -> Result<Option<ReadReply>, ReplicaError> {
        let Some((generation, run_id)) = self.identity.cached(&self.client) else {
            return Ok(None);
        };
        let Some(epoch_id) = self.confirmed.get(generation, std::time::Instant::now()) else {
            return Ok(None);
        };
        let decoded = self.hgetall(key).await;
        self.identity.check(&self.name, &self.client, generation)?;
        let (record, written_in) = decoded?;
        let epoch = Epoch {
            id: epoch_id,
            complete: true,
        };
        if record.is_some() && written_in == Some(epoch_id) {
            return Ok(Some(ReadReply { record, epoch }));
        }
        // Boxed: see `run_id`.
        let call = Box::pin(self.client.mget::<Value, _>(self.epoch_ids()));
        let after = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        self.identity.check(&self.name, &self.client, generation)?;
        if self.epoch_in(after, &run_id)? != Some(epoch) {
            self.confirmed.forget();
            return Ok(None);
        }
        Ok(Some(ReadReply { record, epoch }))
    }

    /// The epoch that held between two `MGET <epoch> <epoch:run>` answers:
    /// the same epoch both times, made by the process whose run id is
    /// `run_id`, complete only if it was complete the first time. `None`
    /// when it was missing, made by another process, or changed.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Corrupt`] when the epoch key holds foreign data.
    fn epoch_between(
        &self,
        before: Value,
        after: Value,
        run_id: &Value,
    ) -> Result<Option<Epoch>, ReplicaError> {
        let (before, after) = (
            self.epoch_in(before, run_id)?,
            self.epoch_in(after, run_id)?,
        );
        Ok(match (before, after) {
            (Some(before), Some(after)) if before.id == after.id => Some(Epoch {
                id: before.id,
                complete: before.complete && after.complete,
            }),
            _ => None,
        })
    }

    /// The epoch in one `MGET <epoch> <epoch:run>` answer, if it was made by
    /// the process whose run id is `run_id`.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Corrupt`] when the epoch key holds foreign data.
    fn epoch_in(&self, ids: Value, run_id: &Value) -> Result<Option<Epoch>, ReplicaError> {
        let Value::Array(ids) = ids else {
            return Err(self.malformed("read"));
        };
        let Ok([epoch, run]) = <[Value; 2]>::try_from(ids) else {
            return Err(self.malformed("read"));
        };
        if epoch.is_null() {
            return Ok(None);
        }
        let epoch = parse_epoch(epoch.as_bytes().unwrap_or_default()).ok_or_else(|| {
            ReplicaError::Corrupt {
                detail: format!("{}: the epoch key holds foreign data", self.name),
            }
        })?;
        let made_here = run.as_bytes().is_some() && run.as_bytes() == run_id.as_bytes();
        Ok(made_here.then_some(epoch))
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

    /// Decodes a hash as `HGETALL` answers it (a flat array, or a map with
    /// RESP3): the record, and the epoch id its last merge ran in (`m:ep`,
    /// kept apart from the record: it belongs to this replica, not to the
    /// data).
    fn decode_hash(
        &self,
        key: &str,
        hash: Value,
    ) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        let mut pairs = Vec::new();
        let (flat, map);
        match hash {
            Value::Array(array) if array.len() % 2 == 0 => {
                flat = array;
                pairs.reserve(flat.len() / 2);
                for pair in flat.chunks_exact(2) {
                    match (pair[0].as_bytes(), pair[1].as_bytes()) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            Value::Map(resp3) => {
                map = resp3.inner();
                pairs.reserve(map.len());
                for (name, value) in &map {
                    match value.as_bytes() {
                        Some(value) => pairs.push((name.as_bytes(), value)),
                        None => return Err(self.malformed("read")),
                    }
                }
            }
            _ => return Err(self.malformed("read")),
        }
        self.decode_pairs(key, pairs)
    }

    /// A record's hash pairs decoded: the record (see [`codec::decode_pairs`])
    /// and, apart, the `m:ep` of its last merge.
    fn decode_pairs(
        &self,
        key: &str,
        mut pairs: Vec<(&[u8], &[u8])>,
    ) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        let corrupt = |detail: &str| {
            tracing::debug!(replica = %self.name, key = %short_key(key), %detail, "corrupt record");
            ReplicaError::Corrupt {
                detail: format!("{}: {detail}", self.name),
            }
        };
        let mut written_in = None;
        if let Some(at) = pairs
            .iter()
            .position(|(name, _)| *name == WRITE_EPOCH_FIELD)
        {
            let (_, value) = pairs.swap_remove(at);
            written_in =
                Some(wire::parse_epoch_id(value).ok_or_else(|| corrupt("bad write epoch"))?);
            if pairs.is_empty() {
                // As merge.lua sees it: a hash, but no record in it.
                return Err(corrupt("missing record metadata"));
            }
        }
        let record = codec::decode_pairs(pairs).map_err(|detail| corrupt(&detail))?;
        Ok((record, written_in))
    }

    /// Refuses a logical key that would collide with the epoch keys.
    fn check_key(&self, key: &str) -> Result<(), ReplicaError> {
        if key == EPOCH_KEY_SUFFIX
            || key == RUN_KEY_SUFFIX
            || key == LEASE_KEY_SUFFIX
            || key.is_empty()
        {
            return Err(ReplicaError::Refused {
                detail: format!("{}: key {key:?} is reserved or empty", self.name),
                source: None,
            });
        }
        Ok(())
    }

    /// The nodes a scan walks: one `None` (the client's node) unless
    /// clustered, else every primary, in a stable order.
    fn scan_nodes(&self) -> Vec<Option<Server>> {
        if !self.clustered {
            return vec![None];
        }
        let mut nodes = self
            .client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default();
        nodes.sort_by_key(|server| server.to_string());
        nodes.into_iter().map(Some).collect()
    }

    /// One `SCAN` page of full Redis keys under the prefix, on one node.
    async fn scan_raw(
        &self,
        node: &Option<Server>,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), ReplicaError> {
        let (client, _) = self.bulk_link();
        self.ensure_usable_on(client).await?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let count = Some(count.clamp(1, SCAN_COUNT_MAX) as u32);
        let call = async {
            let (next, keys): (String, Vec<Key>) = match node {
                Some(server) => {
                    client
                        .with_cluster_node(server.clone())
                        .scan_page(cursor.to_owned(), pattern, count, None)
                        .await?
                }
                None => {
                    client
                        .scan_page(cursor.to_owned(), pattern, count, None)
                        .await?
                }
            };
            let keys = keys
                .iter()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect();
            Ok::<_, fred::error::Error>((next, keys))
        };
        self.finish("scan", None, tokio::time::timeout(self.timeout, call).await)
    }

    /// Deletes full Redis keys (in Cluster mode one by one: they may live in
    /// different slots).
    async fn unlink(&self, keys: Vec<String>) -> Result<(), ReplicaError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.ensure_usable().await?;
        let call = async {
            if self.clustered {
                let deletes = keys.iter().map(|key| self.client.unlink::<i64, _>(key));
                for result in futures::future::join_all(deletes).await {
                    result?;
                }
            } else {
                self.client.unlink::<i64, _>(keys).await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        self.finish(
            "unlink",
            None,
            tokio::time::timeout(self.timeout, call).await,
        )
    }
}

impl Drop for RedisReplica {
    fn drop(&mut self) {
        // The connection tasks would otherwise reconnect forever.
        self.abort_connections();
    }
}

/// The result of the first connection: success, or the first error that
/// retrying cannot fix (authentication, configuration). Errors such as a
/// refused connection are retried by fred and waited through.
async fn first_connection(
    wait: impl std::future::Future<Output = Result<(), fred::error::Error>>,
    mut errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
) -> Result<(), fred::error::Error> {
    tokio::pin!(wait);
    loop {
        tokio::select! {
            biased;
            result = &mut wait => return result,
            received = errors.recv() => match received {
                Ok((error, _)) if is_fatal_at_connect(&error) => return Err(error),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return wait.await,
            },
        }
    }
}

fn is_fatal_at_connect(error: &fred::error::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url
    ) || error.details().starts_with("WRONGPASS")
        || error.details().starts_with("NOAUTH")
}

fn build_client(
    config: &RedisReplicaConfig,
    fred_config: Config,
) -> Result<Client, RedisConnectError> {
    let timeout = config.request_timeout;
    let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    // TRAP: without a reconnect policy fred never reconnects after a restart.
    let mut policy = ReconnectPolicy::new_exponential(
        0,
        millis(config.reconnect_delay_min),
        millis(config.reconnect_delay_max),
        2,
    );
    // fred adds up to 100 ms of jitter to every delay by default: more than
    // the whole outage a dropped connection should cost (see reconnect.rs).
    policy.set_jitter(millis(config.reconnect_delay_min / 2));
    let unresponsive = (timeout * 4).max(Duration::from_secs(2));
    Builder::from_config(fred_config)
        .with_connection_config(|c| {
            c.connection_timeout = config.connect_timeout;
            c.internal_command_timeout = timeout.max(Duration::from_millis(500));
            // One write per command: a command fred wrote again on a new
            // connection would carry the run id learnt on the old one (its
            // reply is refused, see process.rs). A request whose
            // connection dropped is made again whole instead, run id
            // included (see reconnect.rs).
            c.max_command_attempts = 1;
            // A hung (paused) node: drop the connection, reconnect.
            c.unresponsive.max_timeout = Some(unresponsive);
            c.unresponsive.interval = (unresponsive / 4).max(Duration::from_millis(100));
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(policy)
        .build()
        .map_err(|error| RedisConnectError::Config {
            replica: config.name.clone(),
            detail: "cannot build the Redis client".into(),
            source: Some(error),
        })
}

#[async_trait]
impl Replica for RedisReplica {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        self.check_key(key)?;
        self.retrying(|| Box::pin(self.read_once(key))).await
    }

    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        self.check_key(key)?;
        let delta = delta_for_wire(delta);
        if let Err(detail) = delta.check_shape() {
            return Err(ReplicaError::Refused {
                detail: format!("{}: invalid delta: {detail}", self.name),
                source: None,
            });
        }
        let mode = match mode {
            MergeMode::Upsert => "u",
            MergeMode::Create => "c",
        };
        let now = encode_ms(now_ms.min(PHYSICAL_MAX));
        let candidate = epoch_candidate();
        let pairs = delta_args(&delta);
        let request = || {
            let mut args = Vec::with_capacity(5 + pairs.len());
            args.push(Value::from_static_str(mode));
            args.push(Value::from(now.as_str()));
            args.push(Value::from(candidate.as_str()));
            args.push(Value::from_static_str(EXPIRY_MARGIN_ARG));
            args.push(run_id_placeholder());
            args.extend(pairs.iter().cloned().map(Value::Bytes));
            (self.script_keys(key), args)
        };
        let (reply, via) = self
            .eval(
                "merge",
                &self.merge_script,
                request,
                Some(MERGE_RUN_ID_SLOT),
                Some(key),
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(self.malformed("merge"));
        };
        let [status, epoch, held] = items.as_slice() else {
            return Err(self.malformed("merge"));
        };
        let status = match status.as_bytes() {
            Some(b"applied") => MergeStatus::Applied,
            Some(b"gone") => MergeStatus::Gone,
            Some(b"exists") => MergeStatus::Exists,
            _ => return Err(self.malformed("merge")),
        };
        let held_max = match held.as_bytes() {
            Some(b"") => None,
            Some(text) => Some(Stamp::decode(text).ok_or_else(|| self.malformed("merge"))?),
            None => return Err(self.malformed("merge")),
        };
        let epoch = self.epoch_from(Some(epoch), via).await?;
        Ok(MergeReply {
            status,
            epoch,
            held_max,
        })
    }

    async fn read_many(&self, keys: &[String]) -> Vec<Result<ReadReply, ReplicaError>> {
        self.read_batch(keys).await
    }

    async fn merge_many(
        &self,
        items: &[(String, std::sync::Arc<Record>)],
        now_ms: u64,
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        self.merge_batch(items, now_ms).await
    }

    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError> {
        let nodes = self.scan_nodes();
        let bad_cursor = || ReplicaError::Refused {
            detail: format!("{}: bad scan cursor {cursor:?}", self.name),
            source: None,
        };
        let (node_index, redis_cursor) = split_cursor(cursor).ok_or_else(bad_cursor)?;
        let node = nodes.get(node_index).ok_or_else(bad_cursor)?;
        let (next, full_keys) = self.scan_raw(node, redis_cursor, count).await?;
        let keys = full_keys
            .iter()
            .filter(|key| {
                **key != self.epoch_key && **key != self.run_key && **key != self.lease_key
            })
            .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_owned))
            .collect();
        let next_cursor = match (next.as_str(), self.clustered) {
            ("0", _) if node_index + 1 < nodes.len() => Some(format!("{}:0", node_index + 1)),
            ("0", _) => None,
            (next, true) => Some(format!("{node_index}:{next}")),
            (next, false) => Some(next.to_owned()),
        };
        Ok(ScanPage { keys, next_cursor })
    }

    async fn ping(&self) -> Result<Epoch, ReplicaError> {
        self.ping_epoch().await
    }

    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        let args = vec![
            Value::from_static_str("complete"),
            Value::from(format!("{epoch_id:016x}")),
            run_id_placeholder(),
        ];
        let request = || (self.epoch_keys(), args.clone());
        let (reply, _) = self
            .eval(
                "mark_epoch_complete",
                &self.epoch_script,
                request,
                Some(2),
                None,
            )
            .await?;
        match reply {
            Value::Integer(1) => Ok(true),
            Value::Integer(0) => Ok(false),
            _ => Err(self.malformed("mark_epoch_complete")),
        }
    }

    async fn acquire_lease(&self, owner: u64, ttl: Duration) -> Result<bool, ReplicaError> {
        // The script refuses more than a day: the longest lease configurable.
        let ttl_ms = ttl.min(crate::config::LEASE_TTL_MAX).as_millis().max(1);
        let reply = self
            .lease_call("acquire", owner, ttl_ms.to_string())
            .await?;
        match reply {
            Value::Integer(granted) => Ok(granted == 1),
            _ => Err(self.malformed("lease")),
        }
    }

    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError> {
        self.lease_call("release", owner, String::new()).await?;
        Ok(())
    }

    /// Deletes every key under the prefix (SCAN + UNLINK in batches of
    /// [`WIPE_BATCH`]) and the epoch key, which goes first and last so the
    /// next request starts a new epoch. Never `FLUSHDB`: the Redis may be
    /// shared.
    async fn wipe(&self) -> Result<(), ReplicaError> {
        self.confirmed.forget();
        self.unlink(self.epoch_key_names()).await?;
        for node in self.scan_nodes() {
            let mut cursor = "0".to_owned();
            loop {
                let (next, keys) = self.scan_raw(&node, &cursor, WIPE_BATCH).await?;
                self.unlink(keys).await?;
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        self.unlink(self.epoch_key_names()).await?;
        self.confirmed.forget();
        Ok(())
    }
}

impl RedisReplica {
    /// One [`Replica::read`] (made once more when the connection dropped
    /// under it, see `reconnect.rs`).
    async fn read_once(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        if self.clustered {
            let (record, _) = self.hgetall(key).await?;
            let epoch = Box::pin(self.ping_epoch()).await?;
            return Ok(ReadReply { record, epoch });
        }
        if let Some(reply) = self.read_fast(key).await? {
            return Ok(reply);
        }
        let (epoch, hash) = self.read_bracketed(key).await?;
        let (record, _) = self.decode_hash(key, hash)?;
        let epoch = match epoch {
            Some(epoch) => epoch,
            None => Box::pin(self.new_epoch_after_read()).await?,
        };
        Ok(ReadReply { record, epoch })
    }

    /// After a read that found no epoch made by this process: the epoch
    /// script makes a new one (or finds the one another request made), and
    /// the read reports it incomplete whatever it says by now (the hash was
    /// read before it existed).
    async fn new_epoch_after_read(&self) -> Result<Epoch, ReplicaError> {
        let epoch = self.ping_epoch().await?;
        Ok(Epoch {
            id: epoch.id,
            complete: false,
        })
    }

    /// One call of the lease script (a single key: any deployment).
    async fn lease_call(
        &self,
        op: &'static str,
        owner: u64,
        ttl_ms: String,
    ) -> Result<Value, ReplicaError> {
        let args = vec![
            Value::from_static_str(op),
            Value::from(format!("{owner:016x}")),
            Value::from(ttl_ms),
        ];
        let request = || (vec![Key::from(self.lease_key.as_str())], args.clone());
        let (reply, _) = self
            .eval("lease", &self.lease_script, request, None, None)
            .await?;
        Ok(reply)
    }

    fn malformed(&self, op: &str) -> ReplicaError {
        ReplicaError::Refused {
            detail: format!("{}: unexpected reply shape from the {op} script", self.name),
            source: None,
        }
    }
}
