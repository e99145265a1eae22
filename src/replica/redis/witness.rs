//! Cluster mode: the witnesses, one key per hash slot that tells whether
//! the slot still holds what the epoch covers (see "Cluster mode" in the
//! module docs of [`replica::redis`](super)).
//!
//! The epoch key lives in one slot; a record in another. So every slot has
//! a witness key, `<prefix>epoch:w:{<tag>}` with a tag chosen to hash to
//! that slot, holding the run id of the Redis process that stamped it.
//! Every script that reads or writes a record (and the epoch script's `get`
//! and `complete`) first checks its slot's witness, in the same atomic
//! call: missing (the shard restarted empty, was flushed) or stamped by
//! another process (reloaded from a snapshot, failed over to a Cluster
//! replica, the slot migrated) and the call changes nothing and answers
//! `NOWITNESS` or `NEWPROCESS`. The replica then *renews* its epoch, so the
//! coordinators see a new epoch, exactly as after a standalone Redis
//! restarted, and refill the whole replica:
//!
//! 1. take the renewal lease (`<prefix>epoch:renewal`, one app server at a
//!    time, [`RENEWAL_LEASE_TTL`] or longer with long request deadlines);
//! 2. `begin`: a new epoch id, *being renewed* (`<id>:s`): incomplete to
//!    every reader from now on, and never marked complete;
//! 3. stamp every slot's witness with the run id of the process serving it
//!    (within [`RENEWAL_STAMPING_MAX`] of taking the lease);
//! 4. `publish`: another new id, incomplete (refillable), if the epoch is
//!    still the one `begin` set; release the lease.
//!
//! Why this order: a stamp makes a witness good again, so it could hide a
//! loss of its slot. Every stamp falls between `begin` and `publish`: a slot
//! that lost its data before its stamp reads as incomplete until `publish`,
//! and every refill of the published epoch starts after it (it covers the
//! loss); a slot that lost its data after its stamp is caught by its
//! witness. A renewal that stops half way (its app server died, the
//! stamping took too long) leaves the epoch being renewed: still
//! incomplete, so nothing is hidden; the next ping (a coordinator's probe)
//! or attempt to mark the epoch complete (anti-entropy, after a refill)
//! that sees it takes the lease once it is free and renews again. A
//! request's own epoch read never takes over, so requests of slots that
//! kept their data never queue behind a renewal (a request of a lost slot
//! waits for the renewal this app server runs, within its deadline). A renewal is never cancelled by a dropped request (it
//! runs in a task of its own: a coordinator drops the request futures of
//! replicas it no longer waits for); one that finds the epoch replaced
//! since the loss was seen (published after the loss by another app
//! server) does nothing. The lease has no fencing token: an app server
//! whose stamps arrive after its lease expired (a pause, or a partition
//! that delivers them late, beyond the lease's slack over the stamping
//! bound) could hide a loss that happened in between.
//!
//! A request reads its record with its slot's witness, but the epoch lives
//! on another node: so the epoch is read before (`peek`) and after (`get`,
//! with the epoch slot's witness) the record's call, and the reply counts
//! as complete only if both showed the same complete epoch (as the
//! standalone bracketed read). [`Replica::ping`](crate::replica::Replica::ping)
//! also checks the witness of one slot of every primary, so a shard that
//! lost its data shows in the coordinators' probes and in anti-entropy's
//! confirmation of its sources even when no request touched its keys.
//!
//! A replica with an epoch and no witness at all was written by a build
//! without witnesses (or restored whole from a backup older than them):
//! renewed by default, adopted (stamped, its epoch kept) with
//! [`RedisReplicaConfig::adopt_unwitnessed_cluster`](super::RedisReplicaConfig::adopt_unwitnessed_cluster).
//!
//! The script asks the running process for its run id on every call (one
//! `INFO server`, about 3 µs of the server's time): no cheaper proof works.
//! A caller cannot know which process serves a slot when its call arrives
//! (after a failover the old primary answers `MOVED` and fred sends the
//! same call on to the new one), and a witness copied to a Cluster replica
//! or loaded from a snapshot looks the same as the original.

use std::sync::{Arc, OnceLock};

use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};

use super::wire::{epoch_candidate, parse_epoch, parse_epoch_id};
use super::Inner;
use crate::error::ReplicaError;
use crate::replica::Epoch;

/// Hash slots of a Redis Cluster: one witness each.
pub const CLUSTER_SLOTS: usize = 16_384;
/// Witness stamps in flight while a renewal stamps every slot.
pub const WITNESS_STAMPS_IN_FLIGHT: usize = 256;
/// Renewals one request goes through (a slot found lost, renewed, found
/// lost again…) before it fails as [`ReplicaError::Unavailable`].
pub const WITNESS_RENEWALS_PER_REQUEST: usize = 2;
/// How long the renewal lease is held at most (its time to live).
pub const RENEWAL_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a renewal may stamp witnesses before it gives up (the epoch
/// stays being renewed: incomplete; the next renewal starts over). Half the
/// lease: the lease outlives every stamp.
pub const RENEWAL_STAMPING_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// Attempts to release the renewal lease, and the pause between two.
pub const RENEWAL_RELEASE_ATTEMPTS: usize = 10;
const RENEWAL_RELEASE_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
/// How often requests that see an epoch being renewed start a takeover
/// attempt (`take_over_in_background`).
pub const RENEWAL_TAKEOVER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The renewal lease key, after the prefix.
pub(super) const RENEWAL_KEY_SUFFIX: &str = "epoch:renewal";
/// What a witness key's name has after the prefix, before its hash tag.
pub(super) const WITNESS_KEY_INFIX: &str = "epoch:w:";
/// The scripts' error replies for a lost slot (see `witness_check` in
/// `common.lua`).
const NO_WITNESS_ERROR: &str = "NOWITNESS";
const NEW_PROCESS_ERROR: &str = "NEWPROCESS";

/// For each slot, a number whose decimal form, as a hash tag, hashes to it
/// (the smallest one): computed once per process, 64 KiB.
fn slot_tags() -> &'static [u32] {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; CLUSTER_SLOTS];
        let mut missing = CLUSTER_SLOTS;
        let mut n: u32 = 0;
        while missing > 0 {
            let slot = usize::from(fred::util::redis_keyslot(n.to_string().as_bytes()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// True when `error` is a script's answer that the slot lost its data.
pub(super) fn is_witness_loss(error: &ReplicaError) -> bool {
    let ReplicaError::Unavailable {
        source: Some(source),
        ..
    } = error
    else {
        return false;
    };
    source
        .downcast_ref::<fred::error::Error>()
        .and_then(|error| error.details().split_whitespace().next())
        .is_some_and(is_witness_error_word)
}

/// True for the first word of a witness error reply (mapped as
/// unavailable: the request may be made again once the replica renewed).
pub(super) fn is_witness_error_word(word: &str) -> bool {
    word == NO_WITNESS_ERROR || word == NEW_PROCESS_ERROR
}

/// The renewal lease's time to live and the stamping budget within it.
/// The lease counts from when Redis ran the acquire, which is after the
/// caller's clock started; the last stamp may take a request's whole
/// course (`retrying`: half a deadline, a wait for the connection, a
/// second deadline; and a wait in `ensure_usable`), and so may
/// `publish`: the tail is twice that, and ten seconds more. The time to
/// live is [`RENEWAL_LEASE_TTL`] or the budget plus the tail, at most the
/// lease script's cap (a day); the budget is [`RENEWAL_STAMPING_MAX`] or
/// what the cap leaves (zero: no renewal can run, see `renew_epoch`).
fn renewal_timing(
    timeout: std::time::Duration,
    reconnect_wait: std::time::Duration,
) -> (std::time::Duration, std::time::Duration) {
    let request = timeout * 3 / 2 + reconnect_wait * 2;
    let tail = request * 2 + std::time::Duration::from_secs(10);
    let ttl = (RENEWAL_STAMPING_MAX + tail)
        .max(RENEWAL_LEASE_TTL)
        .min(crate::config::LEASE_TTL_MAX);
    (ttl, ttl.saturating_sub(tail).min(RENEWAL_STAMPING_MAX))
}

/// The witness key of `slot` under `prefix`.
fn witness_key(prefix: &str, slot: u16) -> String {
    let tag = slot_tags()[usize::from(slot)];
    format!("{prefix}{WITNESS_KEY_INFIX}{{{tag}}}")
}

/// The witness key of the slot of the Redis key `redis_key` under `prefix`
/// (`connect.rs` keeps the epoch key's, read by every Cluster request).
pub(super) fn witness_of(prefix: &str, redis_key: &[u8]) -> Key {
    Key::from(witness_key(prefix, fred::util::redis_keyslot(redis_key)))
}

/// A Cluster replica's epoch as the epoch script answers it.
#[derive(Clone, Copy, Debug)]
struct ClusterEpoch {
    epoch: Epoch,
    /// `<id>:s`: being renewed (incomplete, never marked complete).
    renewing: bool,
}

impl Inner {
    /// The witness key of the slot of the Redis key `redis_key`.
    pub(super) fn witness_of(&self, redis_key: &[u8]) -> Key {
        witness_of(&self.prefix, redis_key)
    }

    /// The witness key of `slot`.
    fn witness_key(&self, slot: u16) -> String {
        witness_key(&self.prefix, slot)
    }

    /// True when a full Redis key is one of the witnesses.
    pub(super) fn is_witness_key(&self, redis_key: &str) -> bool {
        redis_key
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(WITNESS_KEY_INFIX))
    }

    /// Runs `call` (a script that checks a witness); when the witness shows
    /// a lost slot, renews the replica's epoch and runs it again, at most
    /// [`WITNESS_RENEWALS_PER_REQUEST`] times.
    pub(super) async fn with_witness<T, F>(&self, call: impl Fn() -> F) -> Result<T, ReplicaError>
    where
        F: std::future::Future<Output = Result<T, ReplicaError>>,
    {
        let mut renewals = 0;
        loop {
            match call().await {
                Err(error)
                    if is_witness_loss(&error) && renewals < WITNESS_RENEWALS_PER_REQUEST =>
                {
                    renewals += 1;
                    // Every request of a lost slot sees it: the renewal logs.
                    tracing::debug!(replica = %self.name, %error, "a Cluster slot lost its data");
                    let seen = self.peek_epoch().await?;
                    self.renew_epoch(seen.map(|seen| seen.epoch.id)).await?;
                }
                result => return result,
            }
        }
    }

    /// Cluster mode: `call` (a record's script, checked by its slot's
    /// witness) bracketed by the epoch, read before (`peek`) and after
    /// (`get`, with the epoch slot's witness): the reply counts as complete
    /// only if both showed the same complete epoch, as in the standalone
    /// bracketed read (the epoch lives on another node, so no single call
    /// reads both).
    pub(super) async fn epoch_bracketed<T, F>(
        &self,
        call: impl Fn() -> F,
    ) -> Result<(T, Epoch), ReplicaError>
    where
        F: std::future::Future<Output = Result<T, ReplicaError>>,
    {
        let before = Box::pin(self.peek_epoch()).await?;
        let answer = self.with_witness(call).await?;
        let after = Box::pin(self.reply_epoch()).await?;
        let held = matches!(
            before,
            Some(ClusterEpoch { epoch, renewing: false }) if epoch.id == after.id && epoch.complete
        );
        Ok((
            answer,
            Epoch {
                id: after.id,
                complete: held && after.complete,
            },
        ))
    }

    /// A cluster epoch-script call: `(keys, [op, id, expected, "cluster"])`.
    async fn epoch_call(
        &self,
        op: &'static str,
        keys: Vec<Key>,
        id: String,
        expected: &str,
    ) -> Result<Value, ReplicaError> {
        let args = vec![
            Value::from_static_str(op),
            Value::from(id),
            Value::from(expected),
            Value::from_static_str("cluster"),
        ];
        let request = || (keys.clone(), args.clone());
        let (reply, _) = self
            .eval(op, &self.epoch_script, request, None, None)
            .await?;
        Ok(reply)
    }

    /// An epoch as a cluster epoch call answers it: `None` when missing.
    fn cluster_epoch(&self, answer: &Value) -> Result<Option<ClusterEpoch>, ReplicaError> {
        let corrupt = || ReplicaError::Corrupt {
            detail: format!("{}: malformed epoch", self.name),
        };
        match answer.as_bytes() {
            Some(b"") => Ok(None),
            Some(text) if text.len() == 18 && text.ends_with(b":s") => {
                let id = parse_epoch_id(&text[..16]).ok_or_else(corrupt)?;
                Ok(Some(ClusterEpoch {
                    epoch: Epoch {
                        id,
                        complete: false,
                    },
                    renewing: true,
                }))
            }
            Some(text) => {
                let epoch = parse_epoch(text).ok_or_else(corrupt)?;
                Ok(Some(ClusterEpoch {
                    epoch,
                    renewing: false,
                }))
            }
            None => Err(self.malformed("epoch")),
        }
    }

    /// The epoch, without a witness check (`None`: missing).
    async fn peek_epoch(&self) -> Result<Option<ClusterEpoch>, ReplicaError> {
        let keys = vec![self.epoch_fred_key.clone()];
        let answer = self.epoch_call("peek", keys, epoch_candidate(), "").await?;
        self.cluster_epoch(&answer)
    }

    /// The epoch after the epoch slot's witness check (`get`), made (every
    /// witness stamped first) when missing. With `take_over`, an epoch left
    /// being renewed is renewed here when no renewal runs (the lease is
    /// free); without, it is answered as it is (incomplete).
    async fn epoch_checked(&self, take_over: bool) -> Result<Epoch, ReplicaError> {
        let keys = vec![self.epoch_fred_key.clone(), self.epoch_witness.clone()];
        for _attempt in 0..=WITNESS_RENEWALS_PER_REQUEST {
            let call = || self.epoch_call("get", keys.clone(), epoch_candidate(), "");
            let answer = self.with_witness(call).await?;
            match self.cluster_epoch(&answer)? {
                Some(ClusterEpoch {
                    epoch,
                    renewing: false,
                }) => return Ok(epoch),
                Some(ClusterEpoch { epoch, .. }) if !take_over => {
                    self.take_over_in_background(epoch.id);
                    return Ok(epoch);
                }
                Some(ClusterEpoch { epoch, .. }) => {
                    // A renewal that runs holds the lease: this returns at
                    // once; one that stopped half way is taken over.
                    self.renew_epoch(Some(epoch.id)).await?;
                    if let Some(ClusterEpoch { epoch, .. }) = self.peek_epoch().await? {
                        return Ok(epoch);
                    }
                }
                None => self.renew_epoch(None).await?,
            }
        }
        Err(ReplicaError::Unavailable {
            detail: format!(
                "{}: the epoch went missing again after each renewal",
                self.name
            ),
            source: None,
        })
    }

    /// A request saw the epoch being renewed: at most once per
    /// [`RENEWAL_TAKEOVER_INTERVAL`], and never while a renewal runs here,
    /// a task tries to take it over (it returns at once while another app
    /// server holds the lease). The request does not wait for it: a renewal
    /// that failed half way is thus taken over once its lease expires even
    /// when no probe pings this replica (a coordinator probes an Up replica
    /// rarely) and no pass marks it.
    fn take_over_in_background(&self, renewing: u64) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        {
            let mut last = self.last_takeover.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < RENEWAL_TAKEOVER_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        if self.renewal.try_lock().is_err() {
            return;
        }
        tokio::spawn(async move {
            if let Err(error) = me.renew_epoch(Some(renewing)).await {
                tracing::debug!(replica = %me.name, %error, "takeover of a renewal failed");
            }
        });
    }

    /// The epoch a record's reply carries (after its own call): no takeover
    /// of a stopped renewal (the probes do that), so requests never queue
    /// behind one.
    pub(super) async fn reply_epoch(&self) -> Result<Epoch, ReplicaError> {
        self.epoch_checked(false).await
    }

    /// Cluster mode's [`Replica::ping`](crate::replica::Replica::ping): the
    /// witness of one slot of every primary (fred's map), then the epoch
    /// (taking over a renewal that stopped half way). A shard that lost its
    /// data shows here even when no request touched its keys: the
    /// coordinator's probes, bootstrap and anti-entropy (which confirms its
    /// sources with `ping`) all see it. One primary unreachable fails the
    /// ping (fred 10 takes a clustered client down as a whole anyway).
    pub(super) async fn cluster_ping(&self) -> Result<Epoch, ReplicaError> {
        for witness in self.one_witness_per_primary().await? {
            let call = || self.epoch_call("check", vec![witness.clone()], epoch_candidate(), "");
            self.with_witness(call).await?;
        }
        self.epoch_checked(true).await
    }

    /// The witness key of the first slot of each primary's ranges, from
    /// fred's map of the cluster: refreshed (`CLUSTER SLOTS`) when it is
    /// missing or does not cover every slot, and an error if it still does
    /// not (a ping must not pass a replica for want of a map).
    async fn one_witness_per_primary(&self) -> Result<Vec<Key>, ReplicaError> {
        let covers_every_slot = |routing: &fred::types::cluster::ClusterRouting| {
            let covered: usize = routing
                .slots()
                .iter()
                .map(|range| usize::from(range.end) + 1 - usize::from(range.start))
                .sum();
            covered == CLUSTER_SLOTS
        };
        let mut routing = self.client.cached_cluster_state();
        if !routing.as_ref().is_some_and(covers_every_slot) {
            let sync = Box::pin(self.client.sync_cluster());
            self.finish(
                "cluster map",
                None,
                tokio::time::timeout(self.timeout, sync).await,
            )?;
            routing = self.client.cached_cluster_state();
        }
        let Some(routing) = routing.filter(covers_every_slot) else {
            return Err(ReplicaError::Unavailable {
                detail: format!(
                    "{}: fred's map of the cluster does not cover every slot",
                    self.name
                ),
                source: None,
            });
        };
        let mut seen = Vec::new();
        let mut witnesses = Vec::new();
        for range in routing.slots() {
            if !seen.contains(&range.primary) {
                seen.push(range.primary.clone());
                witnesses.push(Key::from(self.witness_key(range.start)));
            }
        }
        Ok(witnesses)
    }

    /// Cluster mode's `mark_epoch_complete`, after the epoch slot's witness
    /// check.
    pub(super) async fn cluster_mark_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        let keys = vec![self.epoch_fred_key.clone(), self.epoch_witness.clone()];
        let call = || self.epoch_call("complete", keys.clone(), format!("{epoch_id:016x}"), "");
        match self.with_witness(call).await? {
            Value::Integer(1) => Ok(true),
            Value::Integer(0) => {
                // Anti-entropy marks a refilled replica here, again and
                // again: an epoch left being renewed (a renewal that failed
                // half way) is taken over from here too, not only by probes
                // (a coordinator probes a replica that is up rarely).
                if let Some(ClusterEpoch {
                    epoch,
                    renewing: true,
                }) = self.peek_epoch().await?
                {
                    self.renew_epoch(Some(epoch.id)).await?;
                }
                Ok(false)
            }
            _ => Err(self.malformed("mark_epoch_complete")),
        }
    }

    /// Renews the epoch (see the module docs) unless it was replaced since
    /// `seen` (its id, read after the loss was seen; `None`: missing) by an
    /// epoch that is not being renewed: then another app server published
    /// after the loss. Waits for a renewal that runs here; when one runs
    /// elsewhere (the lease is taken), returns at once: that renewal, or the
    /// next one, covers the loss. Runs in a task of its own so that dropping
    /// the request that started it never leaves it half done.
    async fn renew_epoch(&self, seen: Option<u64>) -> Result<(), ReplicaError> {
        let Some(me) = self.me.upgrade() else {
            return Err(ReplicaError::Unavailable {
                detail: format!("{}: the replica was dropped", self.name),
                source: None,
            });
        };
        // Waits for a renewal that runs here (then, most often, finds the
        // epoch renewed and does nothing); only requests of a lost slot and
        // pings come here, never a request's reply epoch.
        let one_at_a_time = Arc::clone(&self.renewal).lock_owned().await;
        let task = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            if me.renewed_since(seen).await? {
                return Ok(());
            }
            let owner = rand::random::<u64>();
            let (ttl, budget) = renewal_timing(me.timeout, me.reconnect_wait);
            if budget.is_zero() {
                return Err(ReplicaError::Refused {
                    detail: format!(
                        "{}: request_timeout and reconnect_wait too long for a Cluster epoch renewal within a day's lease",
                        me.name
                    ),
                    source: None,
                });
            }
            // Before the acquire: the lease may start as soon as it is sent.
            let lease_taken = std::time::Instant::now();
            let acquired = me
                .lease_call(
                    &me.renewal_key,
                    "acquire",
                    owner,
                    ttl.as_millis().to_string(),
                )
                .await;
            let renewed = match acquired {
                Ok(Value::Integer(1)) => me.renew_under_lease(seen, lease_taken + budget).await,
                // Another app server renews.
                Ok(Value::Integer(0)) => return Ok(()),
                Ok(_) => Err(me.malformed("renewal lease")),
                // The lease may be ours although the reply was lost: it is
                // released below (it would block every renewal for `ttl`).
                Err(error) => Err(error),
            };
            if let Err(error) = &renewed {
                tracing::warn!(replica = %me.name, %error, "Cluster epoch renewal failed; the next request or probe tries again");
            }
            // Most often after a failed renewal, on a struggling connection:
            // tried again, as a lease left behind blocks every renewal (and
            // so the replica's refill) until it expires.
            for attempt in 1..=RENEWAL_RELEASE_ATTEMPTS {
                match me
                    .lease_call(&me.renewal_key, "release", owner, String::new())
                    .await
                {
                    Ok(_) => break,
                    // It expires by itself; the renewal's own outcome stands.
                    Err(error) if attempt == RENEWAL_RELEASE_ATTEMPTS => {
                        tracing::warn!(replica = %me.name, %error, "renewal lease not released");
                    }
                    Err(_) => tokio::time::sleep(RENEWAL_RELEASE_PAUSE).await,
                }
            }
            renewed
        });
        task.await.unwrap_or_else(|join| {
            Err(ReplicaError::Unavailable {
                detail: format!("{}: the epoch renewal did not finish: {join}", self.name),
                source: None,
            })
        })
    }

    /// True when the epoch is no longer `seen` and not being renewed.
    async fn renewed_since(&self, seen: Option<u64>) -> Result<bool, ReplicaError> {
        Ok(matches!(
            self.peek_epoch().await?,
            Some(ClusterEpoch { epoch, renewing: false }) if Some(epoch.id) != seen
        ))
    }

    /// Steps 2 to 4 of a renewal (module docs), the lease held, stamping
    /// until `deadline`; or the adoption of a replica written before
    /// witnesses existed, when allowed.
    async fn renew_under_lease(
        &self,
        seen: Option<u64>,
        deadline: std::time::Instant,
    ) -> Result<(), ReplicaError> {
        if self.renewed_since(seen).await? {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if self.adopt_unwitnessed && self.never_stamped().await? {
            // Stamped in place, the epoch kept: an upgrade from a build
            // without witnesses (docs/upgrades.md).
            self.stamp_every_slot(deadline).await?;
            tracing::warn!(
                replica = %self.name, took = ?started.elapsed(),
                "Cluster replica written before witnesses adopted: every slot stamped, epoch kept"
            );
            return Ok(());
        }
        let keys = vec![self.epoch_fred_key.clone()];
        let begun = self
            .epoch_call("begin", keys.clone(), epoch_candidate(), "")
            .await?;
        let begun = begun
            .as_str()
            .map(|text| text.into_owned())
            .unwrap_or_default();
        self.stamp_every_slot(deadline).await?;
        let published = self
            .epoch_call("publish", keys, epoch_candidate(), &begun)
            .await?;
        let published = published == Value::Integer(1);
        tracing::warn!(
            replica = %self.name, took = ?started.elapsed(), published,
            "Cluster data loss seen: every slot's witness stamped, new epoch"
        );
        Ok(())
    }

    /// True when this replica was written by a build without witnesses: an
    /// epoch that is not being renewed, and no witness at all, neither in
    /// the epoch's slot nor in the first slot of any primary's range (fred's
    /// cached map; unknown: `false`). A shard that lost its data (the
    /// epoch's included) cannot look like this: the epoch key and its
    /// slot's witness live and die together, and the other primaries keep
    /// theirs. A whole deployment restored from a backup older than its
    /// witnesses can: hence only with
    /// [`RedisReplicaConfig::adopt_unwitnessed_cluster`](super::RedisReplicaConfig::adopt_unwitnessed_cluster).
    async fn never_stamped(&self) -> Result<bool, ReplicaError> {
        if !matches!(
            self.peek_epoch().await?,
            Some(ClusterEpoch {
                renewing: false,
                ..
            })
        ) {
            return Ok(false);
        }
        let Ok(per_primary) = self.one_witness_per_primary().await else {
            return Ok(false);
        };
        let mut witnesses = vec![self.epoch_witness.clone()];
        witnesses.extend(per_primary);
        for witness in witnesses {
            let call = Box::pin(self.client.exists::<i64, _>(witness));
            let found = self.finish(
                "exists",
                None,
                tokio::time::timeout(self.timeout, call).await,
            )?;
            if found != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sets every slot's witness to the run id of the process serving it
    /// ([`WITNESS_STAMPS_IN_FLIGHT`] at a time), or fails once `deadline`
    /// has passed.
    async fn stamp_every_slot(&self, deadline: std::time::Instant) -> Result<(), ReplicaError> {
        futures::stream::iter(0..CLUSTER_SLOTS)
            .map(|slot| async move {
                if std::time::Instant::now() > deadline {
                    return Err(ReplicaError::Unavailable {
                        detail: format!(
                            "{}: stamping the witnesses outlasted their share of the renewal lease",
                            self.name
                        ),
                        source: None,
                    });
                }
                let slot = u16::try_from(slot).expect("a slot fits in u16");
                let keys = vec![Key::from(self.witness_key(slot))];
                self.epoch_call("stamp", keys, epoch_candidate(), "")
                    .await?;
                Ok(())
            })
            .buffer_unordered(WITNESS_STAMPS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        let tags = slot_tags();
        assert_eq!(tags.len(), CLUSTER_SLOTS);
        for (slot, tag) in tags.iter().enumerate() {
            let key = format!("qs:{WITNESS_KEY_INFIX}{{{tag}}}");
            assert_eq!(usize::from(fred::util::redis_keyslot(key.as_bytes())), slot);
        }
    }

    #[test]
    fn the_renewal_lease_outlives_the_stamping_and_its_last_requests() {
        use std::time::Duration;
        for (t, rw) in [
            (Duration::from_millis(300), Duration::from_millis(300)),
            (Duration::from_secs(10), Duration::from_secs(10)),
        ] {
            let (ttl, budget) = renewal_timing(t, rw);
            assert_eq!(budget, RENEWAL_STAMPING_MAX);
            assert!(ttl >= RENEWAL_LEASE_TTL, "{ttl:?}");
            assert!(ttl >= budget + (t * 3 / 2 + rw * 2) * 2, "{ttl:?}");
        }
        // Past the lease script's one-day cap: no budget, no renewal.
        let (ttl, budget) = renewal_timing(Duration::from_secs(86_400), Duration::ZERO);
        assert_eq!(
            (ttl, budget),
            (crate::config::LEASE_TTL_MAX, Duration::ZERO)
        );
    }

    #[test]
    fn witness_errors_are_recognised_through_the_mapping() {
        let error = fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "NOWITNESS the slot has no witness",
        );
        let mapped = super::super::wire::map_error("r", error, std::time::Duration::from_secs(1));
        assert!(is_witness_loss(&mapped), "{mapped:?}");
        let other = fred::error::Error::new(fred::error::ErrorKind::Unknown, "STALERUN x");
        let mapped = super::super::wire::map_error("r", other, std::time::Duration::from_secs(1));
        assert!(!is_witness_loss(&mapped));
    }
}
