//! One-call construction: [`SessionStore::builder`] connects the replicas,
//! starts the coordinator and validates every setting in one `connect`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorum_sessions::ConnectError> {
//! use quorum_sessions::SessionStore;
//!
//! let store = SessionStore::builder()
//!     .redis(["redis://a:6379", "redis://b:6379", "redis://c:6379"])
//!     .quorum(2, 2)
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::coordinator::Coordinator;
use crate::error::{ConfigError, ConnectError};
use crate::replica::Replica;

#[cfg(feature = "redis")]
use crate::record::StoredFormat;
#[cfg(feature = "redis")]
use crate::replica::redis::{RedisReplica, RedisReplicaConfig};

use super::{SessionConfig, SessionStore};

/// Builds a [`SessionStore`] (or a bare [`Coordinator`]) over N replicas.
///
/// Replicas are added in read order, from URLs ([`redis`](Self::redis),
/// [`redis_from_env`](Self::redis_from_env)), from full per-replica
/// configurations ([`redis_replica`](Self::redis_replica): a fred
/// `ServerConfig` or `Config`, TLS, ACL, key prefix) or as your own
/// [`Replica`] implementations ([`replica`](Self::replica)). Nothing is
/// contacted before [`connect`](Self::connect), which reports every
/// mistake as a typed [`ConnectError`].
///
/// Defaults: a majority quorum (W = R = ⌊N/2⌋ + 1, so R + W > N), the rest
/// of [`ClusterConfig::default`] and [`SessionConfig::default`].
#[must_use = "a builder does nothing until `connect`"]
pub struct SessionStoreBuilder {
    replicas: Vec<ReplicaSpec>,
    quorum: Option<(usize, usize)>,
    cluster: Option<ClusterConfig>,
    sessions: SessionConfig,
    /// The stored format every Redis replica writes, when set (see
    /// [`stored_format`](Self::stored_format)).
    #[cfg(feature = "redis")]
    stored_format: Option<StoredFormat>,
    /// A mistake found while adding replicas (an unset variable), reported
    /// by `connect` so that the chain stays one expression.
    deferred: Option<ConnectError>,
}

enum ReplicaSpec {
    #[cfg(feature = "redis")]
    Redis(Box<RedisReplicaConfig>),
    Custom(Arc<dyn Replica>),
}

impl SessionStore {
    /// A [`SessionStoreBuilder`]: replicas, quorum and settings, then one
    /// `connect().await?`.
    pub fn builder() -> SessionStoreBuilder {
        SessionStoreBuilder {
            replicas: Vec::new(),
            quorum: None,
            cluster: None,
            sessions: SessionConfig::default(),
            #[cfg(feature = "redis")]
            stored_format: None,
            deferred: None,
        }
    }
}

impl std::fmt::Debug for SessionStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStoreBuilder")
            .field("replicas", &self.replicas.len())
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

impl SessionStoreBuilder {
    /// Adds one Redis replica per URL (`redis://`, `rediss://` with the
    /// `tls` feature; user and password may be in the URL). Each replica is
    /// named after its host and port (never its credentials), in logs,
    /// errors and stats.
    #[cfg(feature = "redis")]
    pub fn redis<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for url in urls {
            let url = url.as_ref().trim();
            let name = self.unique_name(&replica_name(url));
            let config = RedisReplicaConfig::from_url(name, url);
            self.replicas.push(ReplicaSpec::Redis(Box::new(config)));
        }
        self
    }

    /// Adds the Redis replicas listed in the environment variable `var`
    /// (URLs separated by commas or whitespace), e.g.
    /// `QS_REDIS_URLS=redis://a:6379,redis://b:6379,redis://c:6379`.
    /// An unset or empty variable makes [`connect`](Self::connect) fail with
    /// [`ConnectError::Env`].
    #[cfg(feature = "redis")]
    pub fn redis_from_env(self, var: &str) -> Self {
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => {
                let urls: Vec<&str> = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|url| !url.is_empty())
                    .collect();
                self.redis(urls)
            }
            Ok(_) => self.defer(ConnectError::Env {
                var: var.to_owned(),
                reason: "is empty".to_owned(),
            }),
            Err(error) => self.defer(ConnectError::Env {
                var: var.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    /// Adds a Redis replica from a full configuration: a fred `Config` or
    /// `ServerConfig` (standalone, Sentinel, Cluster), TLS, ACL user, key
    /// prefix, timeouts, eviction check.
    #[cfg(feature = "redis")]
    pub fn redis_replica(mut self, config: RedisReplicaConfig) -> Self {
        self.replicas.push(ReplicaSpec::Redis(Box::new(config)));
        self
    }

    /// The stored format every Redis replica of this builder writes,
    /// whether added before or after this call (it overrides
    /// [`RedisReplicaConfig::stored_format`]). Default
    /// [`StoredFormat::V2`]; [`StoredFormat::V1`] while app servers of a
    /// build that reads only format 1 still run: the first rolling deploy
    /// of an upgrade (see `docs/upgrades.md`). Either way both formats are
    /// read. Replicas of your own ([`replica`](Self::replica)) store what
    /// they like.
    #[cfg(feature = "redis")]
    pub fn stored_format(mut self, format: StoredFormat) -> Self {
        self.stored_format = Some(format);
        self
    }

    /// Adds a replica of your own (any [`Replica`] implementation; see the
    /// conformance suite in `quorum_sessions::testing`).
    pub fn replica(mut self, replica: Arc<dyn Replica>) -> Self {
        self.replicas.push(ReplicaSpec::Custom(replica));
        self
    }

    /// W (acknowledgements a write needs) and R (answers a read needs).
    /// Validated against N at `connect`: `1 ≤ W, R ≤ N`; `R + W ≤ N` is
    /// allowed but logged, since reads may then miss acknowledged writes.
    /// Default: a majority for both.
    pub fn quorum(mut self, write_quorum: usize, read_quorum: usize) -> Self {
        self.quorum = Some((write_quorum, read_quorum));
        self
    }

    /// Every coordinator setting (timeouts, hedging, read-repair, limits,
    /// hints, anti-entropy). Its `write_quorum` and `read_quorum` are used
    /// unless [`quorum`](Self::quorum) is called.
    pub fn cluster_config(mut self, config: ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// The session settings (lifetimes, limits, cookie policy).
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.sessions = config;
        self
    }

    /// Connects every replica, starts the coordinator and builds the store.
    ///
    /// A Redis that is down is not an error (the coordinator starts with it
    /// marked down and probes it); a wrong password, an evicting Redis or a
    /// bad URL is.
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: no replica, an unset variable, a replica refused,
    /// or a setting that breaks a rule (naming the field).
    pub async fn connect(self) -> Result<SessionStore, ConnectError> {
        let sessions = self.sessions.clone();
        let coordinator = self.connect_coordinator().await?;
        Ok(SessionStore::new(coordinator, sessions)?)
    }

    /// As [`connect`](Self::connect), for a bare [`Coordinator`]: replicated
    /// records of your own, without the session layer. The session
    /// settings are ignored.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_coordinator(self) -> Result<Coordinator, ConnectError> {
        if let Some(error) = self.deferred {
            return Err(error);
        }
        if self.replicas.is_empty() {
            return Err(ConfigError::new("replicas", "at least one replica is needed").into());
        }
        let n = self.replicas.len();
        let majority = n / 2 + 1;
        let (w, r) = self
            .quorum
            .or_else(|| {
                self.cluster
                    .as_ref()
                    .map(|c| (c.write_quorum, c.read_quorum))
            })
            .unwrap_or((majority, majority));
        let mut config = self.cluster.unwrap_or_default();
        config.write_quorum = w;
        config.read_quorum = r;
        // Checked before any connection is made.
        config.validate(n)?;
        #[cfg(feature = "redis")]
        let stored_format = self.stored_format;
        let connecting = self.replicas.into_iter().map(|spec| async move {
            match spec {
                #[cfg(feature = "redis")]
                ReplicaSpec::Redis(mut config) => {
                    if let Some(format) = stored_format {
                        config.stored_format = format;
                    }
                    RedisReplica::connect(*config)
                        .await
                        .map(|replica| Arc::new(replica) as Arc<dyn Replica>)
                        .map_err(ConnectError::from)
                }
                ReplicaSpec::Custom(replica) => Ok::<_, ConnectError>(replica),
            }
        });
        let replicas = futures::future::join_all(connecting)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Coordinator::connect(config, replicas).await?)
    }

    #[cfg(feature = "redis")]
    fn defer(mut self, error: ConnectError) -> Self {
        self.deferred.get_or_insert(error);
        self
    }

    /// `name`, or `name#2`, `name#3`… when a replica already has it (two
    /// databases of one server, say): names must be unique.
    #[cfg(feature = "redis")]
    fn unique_name(&self, name: &str) -> String {
        let taken = |candidate: &str| {
            self.replicas.iter().any(|spec| match spec {
                ReplicaSpec::Redis(config) => config.name == candidate,
                ReplicaSpec::Custom(replica) => replica.name() == candidate,
            })
        };
        let mut candidate = name.to_owned();
        let mut suffix = 2;
        while taken(&candidate) {
            candidate = format!("{name}#{suffix}");
            suffix += 1;
        }
        candidate
    }
}

/// `host:port` of a Redis URL, without scheme, credentials or database; the
/// whole text (credentials cut) when it does not parse that way.
#[cfg(feature = "redis")]
fn replica_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.is_empty() {
        "redis".to_owned()
    } else {
        host.to_owned()
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::replica::memory::InMemoryReplica;

    #[test]
    fn replica_names_never_carry_credentials() {
        assert_eq!(replica_name("redis://127.0.0.1:6381"), "127.0.0.1:6381");
        assert_eq!(
            replica_name("rediss://user:s3cret@redis-a.internal:6380/2"),
            "redis-a.internal:6380"
        );
        assert_eq!(replica_name("redis://:p@ss@h:1?x=y"), "h:1");
    }

    #[test]
    fn two_databases_of_one_server_get_distinct_names() {
        let builder =
            SessionStore::builder().redis(["redis://h:1/0", "redis://h:1/1", "redis://h:1/2"]);
        let names: Vec<String> = builder
            .replicas
            .iter()
            .map(|spec| match spec {
                ReplicaSpec::Redis(config) => config.name.clone(),
                ReplicaSpec::Custom(replica) => replica.name().to_owned(),
            })
            .collect();
        assert_eq!(names, ["h:1", "h:1#2", "h:1#3"]);
    }

    #[tokio::test]
    async fn the_default_quorum_is_a_majority() {
        let mut builder = SessionStore::builder();
        for name in ["a", "b", "c", "d", "e"] {
            builder = builder.replica(Arc::new(InMemoryReplica::new(name)));
        }
        let store = builder.connect().await.expect("valid");
        let config = store.coordinator().config();
        assert_eq!((config.write_quorum, config.read_quorum), (3, 3));
    }

    #[tokio::test]
    async fn mistakes_are_typed_errors_before_any_connection() {
        let none = SessionStore::builder().connect().await.unwrap_err();
        assert!(
            matches!(none, ConnectError::Config(ref e) if e.field == "replicas"),
            "{none}"
        );

        let too_large = SessionStore::builder()
            .replica(Arc::new(InMemoryReplica::new("a")))
            .quorum(2, 1)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(too_large, ConnectError::Config(ref e) if e.field == "write_quorum"),
            "{too_large}"
        );

        let unset = SessionStore::builder()
            .redis_from_env("QS_TEST_SURELY_UNSET_VARIABLE")
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(unset, ConnectError::Env { ref var, .. } if var == "QS_TEST_SURELY_UNSET_VARIABLE")
        );

        let bad_url = SessionStore::builder()
            .redis(["http://not-redis"])
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(bad_url, ConnectError::Redis(_)), "{bad_url}");
    }
}
