//! Configuration of a [`RedisReplica`](super::RedisReplica) and the errors of
//! connecting one.

use std::time::Duration;

use fred::prelude::{Config, ServerConfig};

use crate::record::StoredFormat;

/// Default key prefix: every key this library writes starts with it.
pub const DEFAULT_KEY_PREFIX: &str = "qs:";
/// Default deadline of one command (scripts included).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Default time [`RedisReplica::connect`](super::RedisReplica::connect) waits
/// for the first connection before returning a replica that keeps trying in
/// the background.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default delay before the first reconnection attempt after a connection
/// drops (doubled after each failed attempt). Short: a dropped connection
/// to a server that still runs (an idle timeout, a proxy, `CLIENT KILL`)
/// should be back within a few milliseconds.
pub const DEFAULT_RECONNECT_DELAY_MIN: Duration = Duration::from_millis(10);
/// Default longest delay between two reconnection attempts.
pub const DEFAULT_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// Default longest time a request waits for a dropped connection to come
/// back (see [`RedisReplicaConfig::reconnect_wait`]).
pub const DEFAULT_RECONNECT_WAIT: Duration = Duration::from_millis(50);
/// Longest key prefix accepted.
pub const KEY_PREFIX_MAX_BYTES: usize = 64;

/// Where the Redis deployment of one replica is.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    /// A URL as fred reads it: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` (TLS, needs the `tls` feature), `redis-sentinel://…`,
    /// `redis-cluster://…`.
    Url(String),
    /// A standalone server, a Sentinel group or a Cluster, by address.
    Server {
        /// The servers (`ServerConfig::new_centralized`, `new_sentinel`,
        /// `new_clustered`).
        server: ServerConfig,
        /// The database index (standalone and Sentinel only).
        database: Option<u8>,
        /// Connect with TLS (rustls, the system's root certificates). Needs
        /// the `tls` feature.
        tls: bool,
    },
    /// A complete fred configuration, for what the other forms cannot say
    /// (a custom TLS connector, RESP3, …). Reconnection, timeouts and
    /// `fail_fast` are still set by the replica.
    Fred(Box<Config>),
}

/// What to do when a Redis can evict keys (its `maxmemory-policy` is not
/// `noeviction`): eviction silently drops tombstones and records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EvictionCheck {
    /// Refuse the replica ([`RedisConnectError::Eviction`] at connect, or
    /// every request refused when it was unreachable at connect).
    #[default]
    Refuse,
    /// Log a warning and use it anyway.
    Warn,
}

/// Configuration of one [`RedisReplica`](super::RedisReplica).
///
/// ```
/// use quorum_sessions::replica::redis::RedisReplicaConfig;
/// use std::time::Duration;
/// let mut config = RedisReplicaConfig::from_url("redis-a", "redis://127.0.0.1:6379/0");
/// config.request_timeout = Duration::from_millis(200);
/// assert_eq!(config.key_prefix, "qs:");
/// ```
#[derive(Clone, Debug)]
pub struct RedisReplicaConfig {
    /// The replica's name, in logs and errors.
    pub name: String,
    /// Where the Redis deployment is.
    pub target: RedisTarget,
    /// ACL user name; overrides the one of the URL or fred configuration.
    pub username: Option<String>,
    /// Password; overrides the one of the URL or fred configuration.
    pub password: Option<String>,
    /// Prefix of every key (records and the epoch key). Default `qs:`.
    pub key_prefix: String,
    /// Deadline of every command, scripts included.
    pub request_timeout: Duration,
    /// How long `connect` waits for the first connection.
    pub connect_timeout: Duration,
    /// What to do with a Redis that can evict keys.
    pub eviction_check: EvictionCheck,
    /// Delay before the first reconnection attempt after a connection
    /// drops, doubled after each failed attempt (plus a random jitter of up
    /// to half of it, so that many clients do not reconnect in step).
    pub reconnect_delay_min: Duration,
    /// Longest delay between reconnection attempts (exponential backoff).
    pub reconnect_delay_max: Duration,
    /// How long a request waits for a dropped connection to come back
    /// before it fails as unavailable; a request whose connection dropped
    /// while it ran is made once more on the new connection, within its
    /// deadline. Zero: fail at once while disconnected (a Redis that is
    /// down then costs nothing per request; one whose connection dropped
    /// is out of use until the coordinator's probe finds it again).
    pub reconnect_wait: Duration,
    /// Most records one merge call carries: merges that wait while calls
    /// are in flight leave together (see
    /// [`MERGE_BATCH_MAX_KEYS`](super::MERGE_BATCH_MAX_KEYS)). 1: every
    /// merge is its own call, sent at once (no queue).
    pub merge_batch_max_keys: usize,
    /// Most merge calls in flight at once (see
    /// [`MERGE_CALLS_IN_FLIGHT`](super::MERGE_CALLS_IN_FLIGHT)); unused
    /// when `merge_batch_max_keys` is 1.
    pub merge_calls_in_flight: usize,
    /// The stored format this replica writes (merges and refills): default
    /// [`StoredFormat::V2`]. [`StoredFormat::V1`] while app servers of a
    /// build that reads only format 1 still run (a rolling upgrade, see
    /// `docs/upgrades.md`). Both are read either way.
    pub stored_format: StoredFormat,
    /// Cluster mode: adopt a deployment written by a build without
    /// witnesses (an epoch and no witness at all) by stamping every slot
    /// and keeping its epoch, instead of renewing it (a new, incomplete
    /// epoch: refilled). For the upgrade from such a build only
    /// (`docs/upgrades.md`): a whole deployment restored from a backup older
    /// than its witnesses looks the same, and would be trusted. Default
    /// `false`.
    pub adopt_unwitnessed_cluster: bool,
}

impl RedisReplicaConfig {
    /// A configuration with defaults for the deployment at `url`.
    pub fn from_url(name: impl Into<String>, url: impl Into<String>) -> RedisReplicaConfig {
        RedisReplicaConfig::new(name, RedisTarget::Url(url.into()))
    }

    /// A configuration with defaults for `server`, without TLS.
    pub fn from_server(name: impl Into<String>, server: ServerConfig) -> RedisReplicaConfig {
        let target = RedisTarget::Server {
            server,
            database: None,
            tls: false,
        };
        RedisReplicaConfig::new(name, target)
    }

    /// A configuration with defaults around a complete fred configuration.
    pub fn from_fred_config(name: impl Into<String>, config: Config) -> RedisReplicaConfig {
        RedisReplicaConfig::new(name, RedisTarget::Fred(Box::new(config)))
    }

    /// A configuration with defaults for `target`.
    pub fn new(name: impl Into<String>, target: RedisTarget) -> RedisReplicaConfig {
        RedisReplicaConfig {
            name: name.into(),
            target,
            username: None,
            password: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            eviction_check: EvictionCheck::default(),
            reconnect_delay_min: DEFAULT_RECONNECT_DELAY_MIN,
            reconnect_delay_max: DEFAULT_RECONNECT_DELAY_MAX,
            reconnect_wait: DEFAULT_RECONNECT_WAIT,
            merge_batch_max_keys: super::MERGE_BATCH_MAX_KEYS,
            merge_calls_in_flight: super::MERGE_CALLS_IN_FLIGHT,
            stored_format: StoredFormat::default(),
            adopt_unwitnessed_cluster: false,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`RedisConnectError::Config`] naming the rule broken: empty name, empty
    /// or too long prefix, a prefix with control characters, zero timeouts,
    /// merge batch bounds out of range.
    pub fn validate(&self) -> Result<(), RedisConnectError> {
        let fail = |detail: &str| {
            Err(RedisConnectError::Config {
                replica: self.name.clone(),
                detail: detail.to_owned(),
                source: None,
            })
        };
        if self.name.is_empty() {
            return fail("the replica name is empty");
        }
        if self.key_prefix.is_empty() {
            // An empty prefix would make `wipe` delete the whole database.
            return fail("the key prefix is empty");
        }
        if self.key_prefix.len() > KEY_PREFIX_MAX_BYTES {
            return fail("the key prefix exceeds 64 bytes");
        }
        if self.key_prefix.chars().any(char::is_control) {
            return fail("the key prefix holds a control character");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return fail("a timeout is zero");
        }
        if self.reconnect_delay_min.is_zero() || self.reconnect_delay_min > self.reconnect_delay_max
        {
            return fail("reconnect delays must satisfy 0 < min <= max");
        }
        if !(1..=super::MERGE_BATCH_KEYS_LIMIT).contains(&self.merge_batch_max_keys) {
            let limit = super::MERGE_BATCH_KEYS_LIMIT;
            return fail(&format!("merge_batch_max_keys must be within 1..={limit}"));
        }
        if self.merge_calls_in_flight == 0 {
            return fail("merge_calls_in_flight is zero");
        }
        Ok(())
    }

    /// The fred configuration: target, credentials, TLS, `fail_fast = false`.
    pub(super) fn fred_config(&self) -> Result<Config, RedisConnectError> {
        let config_error =
            |detail: String, source: Option<fred::error::Error>| RedisConnectError::Config {
                replica: self.name.clone(),
                detail,
                source,
            };
        let mut config = match &self.target {
            RedisTarget::Url(url) => {
                let scheme = match url.split_once("://") {
                    Some((scheme, _)) => scheme.to_ascii_lowercase(),
                    None => String::new(),
                };
                // fred reads any other scheme as plain `redis://`: an
                // `http://` typo would otherwise connect somewhere.
                if !(scheme.starts_with("redis") || scheme.starts_with("valkey")) {
                    return Err(config_error(
                        "the Redis URL must start with redis://, rediss://, \
                         redis-cluster://, redis-sentinel:// (or their valkey forms)"
                            .into(),
                        None,
                    ));
                }
                let wants_tls = scheme.starts_with("rediss") || scheme.starts_with("valkeys");
                if wants_tls && !cfg!(feature = "tls") {
                    return Err(RedisConnectError::TlsNotEnabled {
                        replica: self.name.clone(),
                    });
                }
                Config::from_url(url).map_err(|error| {
                    // The URL may hold a password: never repeat it.
                    config_error("the Redis URL does not parse".into(), Some(error))
                })?
            }
            RedisTarget::Server {
                server,
                database,
                tls,
            } => {
                let mut config = Config {
                    server: server.clone(),
                    database: *database,
                    ..Config::default()
                };
                if *tls {
                    enable_tls(&mut config, &self.name)?;
                }
                config
            }
            RedisTarget::Fred(config) => (**config).clone(),
        };
        if self.username.is_some() {
            config.username = self.username.clone();
        }
        if self.password.is_some() {
            config.password = self.password.clone();
        }
        // Connect in the background when the node is down right now: a
        // coordinator must start with a replica down.
        config.fail_fast = false;
        Ok(config)
    }
}

#[cfg(feature = "tls")]
fn enable_tls(config: &mut Config, replica: &str) -> Result<(), RedisConnectError> {
    let connector = fred::prelude::TlsConnector::default_rustls().map_err(|error| {
        RedisConnectError::Config {
            replica: replica.to_owned(),
            detail: "cannot build the TLS connector".into(),
            source: Some(error),
        }
    })?;
    config.tls = Some(connector.into());
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn enable_tls(_config: &mut Config, replica: &str) -> Result<(), RedisConnectError> {
    Err(RedisConnectError::TlsNotEnabled {
        replica: replica.to_owned(),
    })
}

/// Why [`RedisReplica::connect`](super::RedisReplica::connect) refused to make
/// a replica. A node that is merely down is not an error: the replica is made
/// and keeps reconnecting.
#[derive(Debug, thiserror::Error)]
pub enum RedisConnectError {
    /// The configuration is invalid (bad URL, empty prefix, …).
    #[error("replica {replica}: invalid configuration: {detail}")]
    Config {
        /// The replica's name.
        replica: String,
        /// The rule broken.
        detail: String,
        /// fred's error, when there is one.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// TLS was asked for (`rediss://` or `tls: true`) in a build without the
    /// `tls` feature: refused rather than connecting in plain text.
    #[error(
        "replica {replica}: TLS was requested but this build has no TLS support \
         (enable the `tls` cargo feature of quorum-sessions)"
    )]
    TlsNotEnabled {
        /// The replica's name.
        replica: String,
    },
    /// Redis refused the credentials (wrong password, unknown ACL user).
    #[error("replica {replica}: authentication failed (wrong user name or password?)")]
    Auth {
        /// The replica's name.
        replica: String,
        /// fred's error.
        #[source]
        source: fred::error::Error,
    },
    /// The Redis can evict keys and [`EvictionCheck::Refuse`] is configured.
    #[error(
        "replica {replica}: maxmemory-policy is {policy:?}; only noeviction is safe \
         (eviction silently drops tombstones)"
    )]
    Eviction {
        /// The replica's name.
        replica: String,
        /// The policy found.
        policy: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_an_empty_prefix_and_zero_timeouts() {
        let mut config = RedisReplicaConfig::from_url("a", "redis://127.0.0.1:1");
        assert!(config.validate().is_ok());
        config.key_prefix.clear();
        assert!(matches!(
            config.validate(),
            Err(RedisConnectError::Config { .. })
        ));
        config.key_prefix = "qs:".into();
        config.request_timeout = Duration::ZERO;
        assert!(config.validate().is_err());
    }

    #[test]
    fn tls_urls_follow_the_feature() {
        let config = RedisReplicaConfig::from_url("a", "rediss://127.0.0.1:6380");
        let result = config.fred_config();
        if cfg!(feature = "tls") {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert!(matches!(
                result,
                Err(RedisConnectError::TlsNotEnabled { .. })
            ));
        }
    }

    #[test]
    fn fred_config_never_fails_fast_and_takes_credentials() {
        let mut config = RedisReplicaConfig::from_url("a", "redis://u:p@127.0.0.1:7000/2");
        config.password = Some("other".into());
        let fred = config.fred_config().unwrap();
        assert!(!fred.fail_fast);
        assert_eq!(fred.username.as_deref(), Some("u"));
        assert_eq!(fred.password.as_deref(), Some("other"));
        assert_eq!(fred.database, Some(2));
    }
}
