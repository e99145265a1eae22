//! Errors, grouped by what the caller does next.

use std::time::Duration;

/// Result of the coordinator's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one replica failed one request. The coordinator keeps each one, with
/// its source, inside [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The replica could not be reached (connection refused, reset, closed):
    /// mark it suspect.
    #[error("replica unreachable: {detail}")]
    Unavailable {
        /// What happened.
        detail: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// No answer within the deadline (a hung or overloaded replica).
    #[error("replica did not answer within {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The replica holds data we cannot decode (foreign data, a wrong type,
    /// an unknown format): it counts as failed and is read-repaired.
    #[error("replica holds corrupt data: {detail}")]
    Corrupt {
        /// What was wrong.
        detail: String,
    },
    /// The replica refused the command (out of memory, read-only, no
    /// permission, script error): it is up but cannot take this write.
    #[error("replica refused the command: {detail}")]
    Refused {
        /// What was refused and why.
        detail: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The replica is known down and was not asked.
    #[error("replica is down and was skipped")]
    Skipped,
}

impl ReplicaError {
    /// True for failures that say something about the replica's health
    /// (unreachable, timeout), as opposed to one bad key or one refused command.
    pub fn is_health_failure(&self) -> bool {
        matches!(
            self,
            ReplicaError::Unavailable { .. } | ReplicaError::Timeout { .. }
        )
    }

    /// True for a [`Corrupt`](ReplicaError::Corrupt) record written in a
    /// stored format newer than this build reads (a newer build wrote it
    /// while servers roll): the record is left as it is, never repaired by
    /// this build. See `docs/upgrades.md`.
    pub fn is_newer_format(&self) -> bool {
        match self {
            ReplicaError::Corrupt { detail } => detail.contains(crate::record::NEWER_FORMAT),
            _ => false,
        }
    }

    /// A short name of the kind, for logs and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplicaError::Unavailable { .. } => "unavailable",
            ReplicaError::Timeout { .. } => "timeout",
            ReplicaError::Corrupt { .. } => "corrupt",
            ReplicaError::Refused { .. } => "refused",
            ReplicaError::Skipped => "skipped",
        }
    }
}

/// One replica's failure within one operation.
#[derive(Debug, thiserror::Error)]
#[error("replica {replica}: {error}")]
pub struct ReplicaFailure {
    /// The replica's configured name.
    pub replica: String,
    /// What went wrong.
    #[source]
    pub error: ReplicaError,
}

/// Input the coordinator refuses before contacting any replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// A field name breaks the naming rules or the size limit.
    #[error("invalid field name: {0}")]
    FieldName(String),
    /// A value exceeds `max_value_bytes`.
    #[error("value of field {field:?} is {size} bytes, limit {limit}")]
    ValueTooLarge {
        /// The field.
        field: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A write carries more fields than `max_fields_per_write`.
    #[error("{count} fields in one write, limit {limit}")]
    TooManyFields {
        /// Fields in the write.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A key is empty, too long, or holds characters a key may not hold.
    #[error("invalid key: {0}")]
    Key(String),
    /// An expiry or cap is in the past, beyond 48 bits, or too far ahead.
    #[error("invalid expiry: {0}")]
    Expiry(String),
    /// A per-call quorum ([`WriteOptions`](crate::WriteOptions),
    /// [`ReadOptions`](crate::ReadOptions)) out of its range.
    #[error("invalid quorum: {0}")]
    Quorum(String),
}

/// Errors of the coordinator's operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer than W replicas acknowledged a write (or, for a field update,
    /// fewer than N − W + 1 replicas in a complete epoch: see
    /// `core::quorum`, `docs/epochs.md`). The write may still have
    /// reached some replicas and may surface later (as in Dynamo): retrying
    /// the same mutation is safe, it is idempotent.
    #[error("write quorum not reached: {acked} of {needed} acknowledgements ({} replica failures)", failures.len())]
    QuorumNotReached {
        /// The acknowledgements needed: W, or N − W + 1 from complete
        /// replicas for a field update that had W.
        needed: usize,
        /// Acknowledgements received.
        acked: usize,
        /// Each failed or skipped replica's error.
        failures: Vec<ReplicaFailure>,
    },
    /// A read could not reach a conclusive answer: too few replicas answered,
    /// or the misses that came back cannot prove the record absent. Never read
    /// this as "not found" (map it to 503, not to "logged out").
    #[error(
        "read unavailable: {answered} replicas answered, {needed} conclusive answers needed \
         ({} replica failures){}",
        failures.len(),
        data_loss_detail(not_refilled, *operator_needed)
    )]
    Unavailable {
        /// Conclusive answers needed: R, or N − W + 1 misses from replicas
        /// in a complete epoch to prove "not found".
        needed: usize,
        /// Replicas that answered, those not refilled included.
        answered: usize,
        /// Each failed replica's error.
        failures: Vec<ReplicaFailure>,
        /// Replicas that lost data (restarted empty or from an old
        /// snapshot) and are not refilled yet: their misses prove nothing.
        not_refilled: Vec<String>,
        /// More replicas lost data than anti-entropy can refill (fewer than
        /// N − W + 1 complete ones are left): reads stay unavailable until
        /// an operator calls
        /// [`Coordinator::accept_data_loss`](crate::Coordinator::accept_data_loss)
        /// (README, "Operating it").
        operator_needed: bool,
    },
    /// The record was deleted: the write landed on a tombstone and was not
    /// applied.
    #[error("the record was deleted")]
    Gone,
    /// A conditional create found another record under the same key.
    #[error("a record already exists under this key")]
    Collision,
    /// [`Coordinator::shutdown`](crate::Coordinator::shutdown) began: this
    /// coordinator takes no new work. Map it to 503 (another app server
    /// answers).
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The input was refused before any replica was contacted.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
}

fn data_loss_detail(not_refilled: &[String], operator_needed: bool) -> String {
    if not_refilled.is_empty() {
        return String::new();
    }
    let mut detail = format!(
        "; {} replica(s) lost data and are not refilled yet ({}): their misses do not count",
        not_refilled.len(),
        not_refilled.join(", ")
    );
    if operator_needed {
        detail.push_str(
            "; too few complete replicas are left to refill them: an operator must decide \
             (Coordinator::accept_data_loss, see the README's \"Operating it\")",
        );
    }
    detail
}

/// A configuration rule broken; names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{field}` {rule}")]
pub struct ConfigError {
    /// The configuration field.
    pub field: &'static str,
    /// The rule it breaks.
    pub rule: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, rule: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            rule: rule.into(),
        }
    }
}

/// Why [`SessionStoreBuilder::connect`](crate::session::SessionStoreBuilder::connect)
/// (or `TowerSessionStore::connect`) could not build a store. A Redis that
/// is merely down is not an error: the coordinator starts with it marked
/// down and probes it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting breaks a rule (no replica, W or R out of range, a session
    /// limit); names the field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An environment variable meant to list the replicas is unusable.
    #[error("environment variable {var} {reason}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Redis replica was refused: bad URL, TLS without the `tls` feature,
    /// credentials refused, an evicting Redis. Names the replica.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] crate::replica::redis::RedisConnectError),
}
