//! Connecting a [`RedisReplica`]: the fred clients (reconnection policy,
//! deadlines), the first connection, the eviction-policy check, and the
//! check before every request that the connection is usable.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::confirmed::ConfirmedEpoch;
use super::process::ProcessIdentity;
use super::queue::{MergeCalls, MergeQueue};
use super::{
    EvictionCheck, Inner, RedisConnectError, RedisReplica, RedisReplicaConfig, EPOCH_KEY_SUFFIX,
    EPOCH_LUA, EVICTION_OK, EVICTION_REFUSED, EVICTION_UNCHECKED, LEASE_KEY_SUFFIX, LEASE_LUA,
    MERGE_LUA, READ_LUA, RUN_KEY_SUFFIX,
};
use crate::error::ReplicaError;

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
        if clustered && config.key_prefix.contains(['{', '}']) {
            // The witnesses' hash tags must decide their slots.
            return Err(RedisConnectError::Config {
                replica: config.name,
                detail: "a Cluster replica's key prefix cannot hold '{' or '}'".into(),
                source: None,
            });
        }
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
        let inner = |me: &std::sync::Weak<Inner>| Inner {
            me: me.clone(),
            read_script: Script::from_lua(READ_LUA),
            renewal: Default::default(),
            last_takeover: Mutex::new(None),
            epoch_witness: super::witness::witness_of(&config.key_prefix, epoch_key.as_bytes()),
            adopt_unwitnessed: config.adopt_unwitnessed_cluster,
            renewal_key: format!(
                "{}{}",
                config.key_prefix,
                super::witness::RENEWAL_KEY_SUFFIX
            ),
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
            stored_format: config.stored_format,
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
            merges: MergeQueue::new(config.merge_batch_max_keys, config.merge_calls_in_flight),
            merge_calls: MergeCalls::default(),
            client,
        };
        // Wrapped at once: dropping it (an error below) aborts the
        // connection tasks.
        let replica = RedisReplica {
            inner: Arc::new_cyclic(inner),
        };
        match tokio::time::timeout(config.connect_timeout, first).await {
            Ok(Ok(())) => {
                replica.inner.check_eviction().await?;
                if clustered {
                    // A new Cluster replica stamps its 16,384 witnesses
                    // before its first epoch (`witness.rs`): done here,
                    // within the connect deadline, rather than in the first
                    // requests (a coordinator would see them time out).
                    // Unfinished by then, it goes on in the background.
                    let first = replica.inner.ping_epoch();
                    if let Ok(Err(error)) =
                        tokio::time::timeout(config.connect_timeout, first).await
                    {
                        tracing::warn!(
                            replica = %replica.inner.name, %error,
                            "Cluster epoch not read at connect; the first request reads it"
                        );
                    }
                }
                // The node answers: the bulk connection follows at once (or
                // later, in the background; batches use the main connection
                // while it is down).
                let bulk = replica.inner.bulk.wait_for_connect();
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
                replica = %replica.inner.name, %error,
                "Redis unreachable at connect; reconnecting in the background"
            ),
            Err(_) => tracing::warn!(
                replica = %replica.inner.name, after = ?config.connect_timeout,
                "Redis not connected yet; reconnecting in the background"
            ),
        }
        Ok(replica)
    }
}

impl Inner {
    /// Checks `maxmemory-policy` once per replica, when the node answers.
    pub(super) async fn check_eviction(&self) -> Result<(), RedisConnectError> {
        if self.eviction_state.load(Ordering::Relaxed) != EVICTION_UNCHECKED {
            return Ok(());
        }
        let answer = tokio::time::timeout(self.timeout, self.eviction_policies()).await;
        let policy = match answer {
            // No primary known yet (Cluster mode): check at the next request.
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(pairs))) => {
                let mut policies = pairs.into_iter().filter(|(k, _)| k == "maxmemory-policy");
                let first = policies.next();
                // Several primaries: one that can evict is enough to refuse.
                match first {
                    Some((_, ref policy)) if policy == "noeviction" => policies
                        .find(|(_, policy)| policy != "noeviction")
                        .or(first),
                    other => other,
                }
            }
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

    /// `CONFIG GET maxmemory-policy` on the node, or in Cluster mode on
    /// every primary (fred would ask one node only, and a single evicting
    /// primary silently drops its shard's tombstones); `None` when no
    /// primary is known yet.
    async fn eviction_policies(&self) -> Result<Option<Vec<(String, String)>>, fred::error::Error> {
        if !self.clustered {
            let pairs = self
                .client
                .config_get::<Vec<(String, String)>, _>("maxmemory-policy")
                .await?;
            return Ok(Some(pairs));
        }
        let primaries: Vec<Server> = self.scan_nodes().into_iter().flatten().collect();
        if primaries.is_empty() {
            return Ok(None);
        }
        let mut pairs = Vec::new();
        for primary in primaries {
            let node = self.client.with_cluster_node(primary);
            pairs.extend(
                node.config_get::<Vec<(String, String)>, _>("maxmemory-policy")
                    .await?,
            );
        }
        Ok(Some(pairs))
    }

    /// Before every request: the replica must not be refused for eviction,
    /// and must be connected (a disconnected fred client would queue the
    /// command until the deadline; answering after at most
    /// `reconnect_wait`, see `reconnect.rs`, lets the coordinator skip the
    /// replica).
    pub(super) async fn ensure_usable(&self) -> Result<(), ReplicaError> {
        self.ensure_usable_on(&self.client).await
    }

    /// The connection for anti-entropy's batches and scans, with its
    /// reconnection count: `bulk` when it is connected (not in Cluster mode,
    /// whose scans walk `client`'s view of the primaries), else `client`, so
    /// that a bulk connection still reconnecting (or refused by
    /// `maxclients`) never fails a pass nor counts against the replica's
    /// health.
    pub(super) fn bulk_link(&self) -> (&Client, &ProcessIdentity) {
        if !self.clustered && self.bulk.is_connected() {
            (&self.bulk, &self.bulk_identity)
        } else {
            (&self.client, &self.identity)
        }
    }

    /// [`ensure_usable`](Self::ensure_usable) for a request on `client`.
    pub(super) async fn ensure_usable_on(&self, client: &Client) -> Result<(), ReplicaError> {
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
            // fred leaves Nagle on: a small request written while an earlier
            // one is unacknowledged then waits for the server's delayed ACK
            // (up to 40 ms) behind a slow reply (bench case `read-slow1`).
            c.tcp.nodelay = Some(true);
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
