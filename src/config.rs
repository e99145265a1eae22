//! Coordinator configuration, its named limits, and its validation.

use std::time::Duration;

pub use crate::core::hints::HintLimits;
use crate::error::ConfigError;

/// Default write quorum.
pub const DEFAULT_WRITE_QUORUM: usize = 2;
/// Default read quorum.
pub const DEFAULT_READ_QUORUM: usize = 2;
/// The replica count the defaults are meant for.
pub const DEFAULT_REPLICA_COUNT: usize = 3;
const _: () = assert!(DEFAULT_READ_QUORUM + DEFAULT_WRITE_QUORUM > DEFAULT_REPLICA_COUNT);

/// What a read does with replicas whose answer differs from the merged record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRepair {
    /// Write the merged record back until W replicas are known to hold it,
    /// then answer (`docs/epochs.md`, claim 13). A replica holds it when its answer equalled
    /// it (answers still in flight when the read concluded are awaited) or
    /// when a repair merge of it was applied. The asked replicas that
    /// differed are repaired first, all at once; while fewer than W hold it
    /// (counting the repairs running), one more replica is repaired: those
    /// not asked, in read order, then those that failed during the read,
    /// then, when those cannot make up W, those the read skipped as Down
    /// (this coordinator's view of them may be stale: probes back off).
    /// A repair slower than `hedge_delay` also starts the next one; when
    /// only repairs of Down replicas run at that point, all the Down
    /// replicas not tried yet are repaired at once and the read waits one
    /// more `hedge_delay` for them, no longer (a replica really down must
    /// not make every read pay the timeout). The wait ends after at most
    /// `request_timeout` (which alone bounds the wait for Down replicas
    /// when `hedge_delay` is `None`); the repairs still running then finish
    /// in the background.
    ///
    /// Guarantee, when R + W > N: a read that answered after W replicas
    /// held its record is seen by every later read that gets R answers
    /// (its fields at least as new, the record present until its expiry or
    /// a delete): reads are monotonic, as long as the replicas holding it
    /// keep it (a wipe may lose it, as it may lose an acknowledged write).
    /// A tombstone read is written back the same way; a read that finds
    /// nothing else (absent, expired) or is unavailable repairs nothing.
    ///
    /// When W could not be reached — the repairs failed with no replica
    /// left to try, or only Down replicas were left and were slower than
    /// the hedge, or `request_timeout` passed — the read still answers with the merged
    /// record (it is what
    /// the replicas hold: refusing it would make the session unavailable)
    /// and counts [`CoordinatorStats::read_repairs_short`]. The record is
    /// then known to be held only by the replicas counted (at least one), and
    /// a later read may miss it until hinted handoff, a later read-repair or
    /// anti-entropy spreads it: such a read is not monotonic.
    ///
    /// When R + W ≤ N no write-back makes a later read see the record (it
    /// may ask only replicas that were not written): only the asked
    /// replicas that differed are repaired, and waited for.
    ///
    /// Cost: nothing while the R answers agree and R ≥ W (the default 3/2/2);
    /// with R < W (e.g. N=3, W=3, R=1), every read writes W − R replicas.
    ///
    /// [`CoordinatorStats::read_repairs_short`]: crate::CoordinatorStats::read_repairs_short
    Blocking,
    /// Write it back in the background, to the asked replicas whose answer
    /// differed (and answers that arrive after the read concluded and
    /// differ): no wait, no count, reads are not monotonic.
    Background,
    /// Never (for studies of staleness only).
    Off,
}

/// Which replicas a read asks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOrder {
    /// A per-key rotation of the replica list: R=1 load spreads over replicas.
    PerKey,
    /// The order the replicas were given in.
    Configured,
}

/// Health tracking: when a replica is suspect, down, and probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive failures that make a replica Down (skipped at once).
    pub down_after_failures: u32,
    /// First probe delay after a replica goes down.
    pub probe_interval_min: Duration,
    /// Probe backoff cap.
    pub probe_interval_max: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            down_after_failures: 3,
            probe_interval_min: Duration::from_millis(100),
            probe_interval_max: Duration::from_secs(2),
        }
    }
}

/// Size limits, checked before any replica is contacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest field name, in bytes.
    pub max_field_name_bytes: usize,
    /// Largest field value, in bytes.
    pub max_value_bytes: usize,
    /// Most fields one write may carry.
    pub max_fields_per_write: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_name_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_fields_per_write: 256,
            max_key_bytes: 256,
        }
    }
}

/// The largest [`AntiEntropyConfig::scan_batch`] accepted: a page's keys,
/// and their copies from every replica, are held in memory at once.
pub const SCAN_BATCH_MAX: usize = 16_384;

/// Anti-entropy passes: how they walk the keyspace and how much they may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// Keys asked per SCAN page (the `COUNT` hint), at most
    /// [`SCAN_BATCH_MAX`]. A page is read and repaired in requests of
    /// [`BATCH_KEYS`](crate::recovery::BATCH_KEYS) keys, all in flight at
    /// once, while the next page is scanned: larger pages refill faster and
    /// hold more keys in memory.
    pub scan_batch: usize,
    /// Pause after each page, to leave the replicas to foreground requests
    /// (the pass's share of the replicas' time).
    pub pause_between_pages: Duration,
    /// Start a pass by itself when a replica rejoins with a new epoch or its
    /// hint queue overflowed.
    pub on_rejoin: bool,
    /// Also run a pass on this schedule (`None`: only on rejoin and demand).
    pub interval: Option<Duration>,
    /// After a rejoin-triggered pass that could not refill a replica (too
    /// few complete sources: more than N − W replicas lost data), wait this
    /// long before trying again.
    pub retry_interval: Duration,
    /// How long the anti-entropy lease lasts unless renewed (a pass renews
    /// it after each page once a third of it went by), from
    /// [`LEASE_TTL_MIN`] to [`LEASE_TTL_MAX`]. A pass runs only while its
    /// coordinator holds the lease on a majority of the replicas, so one
    /// pass runs at a time across all app servers; a coordinator that
    /// stops in the middle of a pass blocks others for at most this long.
    pub lease_ttl: Duration,
}

/// The shortest [`AntiEntropyConfig::lease_ttl`] accepted.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
/// The longest [`AntiEntropyConfig::lease_ttl`] accepted (what a replica
/// grants at most).
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(86_400);

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            scan_batch: 1024,
            pause_between_pages: Duration::ZERO,
            on_rejoin: true,
            interval: None,
            retry_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// Everything a coordinator needs besides its replicas.
///
/// ```
/// use quorum_sessions::ClusterConfig;
/// let config = ClusterConfig { write_quorum: 2, read_quorum: 2, ..ClusterConfig::default() };
/// assert!(config.validate(3).is_ok());
/// let err = ClusterConfig { write_quorum: 4, ..ClusterConfig::default() }.validate(3).unwrap_err();
/// assert_eq!(err.field, "write_quorum");
/// ```
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// W: acknowledgements a write needs. A field update also needs N − W + 1
    /// from replicas in a complete epoch, to be ordered after every write
    /// acknowledged before it (see `core::quorum`, `docs/epochs.md`):
    /// with a majority W that is no more than W while every replica is
    /// complete, but with W = 1 of 3 every replica must answer.
    pub write_quorum: usize,
    /// R: answers a read needs.
    pub read_quorum: usize,
    /// Deadline of one request to one replica. It also bounds the writes that
    /// go on in the background after the quorum was reached.
    pub request_timeout: Duration,
    /// Ask the next replica too when one has not answered within this delay
    /// (the cap of the adaptive delay, see `hedge_percentile`). `None`: never
    /// hedge.
    pub hedge_delay: Option<Duration>,
    /// Hedge once the asked replica has taken longer than this percentile of
    /// the fastest replica's recent read latencies (Cassandra's speculative
    /// retry), at least 1 ms and at most `hedge_delay` (which is also the
    /// delay until 32 latencies are known). `None`: always `hedge_delay`.
    /// Default: p99.
    pub hedge_percentile: Option<f64>,
    /// Read-repair mode.
    pub read_repair: ReadRepair,
    /// Read order.
    pub read_order: ReadOrder,
    /// Stamps and expiries further ahead of the local clock are refused.
    pub max_clock_skew: Duration,
    /// Health tracking.
    pub health: HealthConfig,
    /// Input size limits.
    pub limits: Limits,
    /// Hinted handoff: per-replica queue bounds and replay rate.
    pub hints: HintLimits,
    /// How often queued hints are replayed to replicas that are up.
    pub handoff_interval: Duration,
    /// Anti-entropy passes.
    pub anti_entropy: AntiEntropyConfig,
    /// Names of replicas this coordinator writes to but never reads, and
    /// never marks complete after a refill: a replica joining the cluster,
    /// or leaving it, while app servers roll from one replica list to
    /// another (`docs/membership.md`). Their acknowledgements count toward
    /// W as any replica's. Reads need `max(R, N − W + 1)` of the others.
    pub write_only: Vec<String>,
    /// Whether this coordinator marks a brand-new cluster complete (every
    /// replica answering in a new epoch and empty by a whole SCAN). Default
    /// true; an admin tool that may be pointed at a subset of the replicas
    /// turns it off, so that looking never decides anything.
    pub bootstrap_new_cluster: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            write_quorum: DEFAULT_WRITE_QUORUM,
            read_quorum: DEFAULT_READ_QUORUM,
            request_timeout: Duration::from_millis(500),
            hedge_delay: Some(Duration::from_millis(50)),
            hedge_percentile: Some(0.99),
            read_repair: ReadRepair::Blocking,
            read_order: ReadOrder::PerKey,
            max_clock_skew: Duration::from_secs(60),
            health: HealthConfig::default(),
            limits: Limits::default(),
            hints: HintLimits::default(),
            handoff_interval: Duration::from_millis(100),
            anti_entropy: AntiEntropyConfig::default(),
            write_only: Vec::new(),
            bootstrap_new_cluster: true,
        }
    }
}

impl ClusterConfig {
    /// Checks every rule against a replica count. Warns (through `tracing`)
    /// when `R + W <= N`: reads may then miss acknowledged writes.
    ///
    /// # Errors
    ///
    /// The first rule broken, naming the field.
    pub fn validate(&self, replica_count: usize) -> Result<(), ConfigError> {
        if replica_count == 0 {
            return Err(ConfigError::new(
                "replicas",
                "must hold at least one replica",
            ));
        }
        let n = replica_count;
        if !(1..=n).contains(&self.write_quorum) {
            return Err(ConfigError::new(
                "write_quorum",
                format!("must be in 1..={n}"),
            ));
        }
        if !(1..=n).contains(&self.read_quorum) {
            return Err(ConfigError::new(
                "read_quorum",
                format!("must be in 1..={n}"),
            ));
        }
        let readable = n.saturating_sub(self.write_only.len());
        let reads_need = self.read_quorum.max(self.misses_for_absence(n));
        if reads_need > readable {
            return Err(ConfigError::new(
                "write_only",
                format!(
                    "leaves {readable} readable replicas of {n}, but reads need {reads_need} \
                     (max(R, N - W + 1)): raise N or W, or make fewer replicas write-only"
                ),
            ));
        }
        check_positive("request_timeout", self.request_timeout)?;
        if let Some(hedge) = self.hedge_delay {
            check_positive("hedge_delay", hedge)?;
        }
        if let Some(q) = self.hedge_percentile {
            if !(q > 0.0 && q <= 1.0) {
                return Err(ConfigError::new("hedge_percentile", "must be in (0, 1]"));
            }
        }
        check_positive("max_clock_skew", self.max_clock_skew)?;
        if self.health.down_after_failures == 0 {
            return Err(ConfigError::new(
                "health.down_after_failures",
                "must be at least 1",
            ));
        }
        check_positive("health.probe_interval_min", self.health.probe_interval_min)?;
        if self.health.probe_interval_max < self.health.probe_interval_min {
            return Err(ConfigError::new(
                "health.probe_interval_max",
                "must be at least probe_interval_min",
            ));
        }
        check_positive("handoff_interval", self.handoff_interval)?;
        let hints = &self.hints;
        for (field, value) in [
            ("hints.entries_max", hints.entries_max),
            ("hints.bytes_max", hints.bytes_max),
            ("hints.replay_per_sec", hints.replay_per_sec as usize),
            ("hints.replay_burst", hints.replay_burst as usize),
            ("anti_entropy.scan_batch", self.anti_entropy.scan_batch),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be positive"));
            }
        }
        if self.anti_entropy.scan_batch > SCAN_BATCH_MAX {
            return Err(ConfigError::new(
                "anti_entropy.scan_batch",
                format!("must be at most {SCAN_BATCH_MAX}"),
            ));
        }
        if !(LEASE_TTL_MIN..=LEASE_TTL_MAX).contains(&self.anti_entropy.lease_ttl) {
            return Err(ConfigError::new(
                "anti_entropy.lease_ttl",
                format!("must be from {LEASE_TTL_MIN:?} to {LEASE_TTL_MAX:?}"),
            ));
        }
        let limits = &self.limits;
        for (field, value) in [
            ("limits.max_field_name_bytes", limits.max_field_name_bytes),
            ("limits.max_value_bytes", limits.max_value_bytes),
            ("limits.max_fields_per_write", limits.max_fields_per_write),
            ("limits.max_key_bytes", limits.max_key_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be positive"));
            }
        }
        if self.read_quorum + self.write_quorum <= n {
            tracing::warn!(
                n,
                r = self.read_quorum,
                w = self.write_quorum,
                "R + W <= N: reads may miss acknowledged writes"
            );
        }
        Ok(())
    }

    /// N − W + 1: misses from complete replicas that prove a record absent.
    pub fn misses_for_absence(&self, replica_count: usize) -> usize {
        replica_count - self.write_quorum + 1
    }
}

fn check_positive(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(field, "must be greater than zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_field() {
        let base = ClusterConfig::default;
        let cases: Vec<(ClusterConfig, usize, &str)> = vec![
            (base(), 0, "replicas"),
            (
                ClusterConfig {
                    write_quorum: 0,
                    ..base()
                },
                3,
                "write_quorum",
            ),
            (
                ClusterConfig {
                    write_quorum: 4,
                    ..base()
                },
                3,
                "write_quorum",
            ),
            (
                ClusterConfig {
                    read_quorum: 0,
                    ..base()
                },
                3,
                "read_quorum",
            ),
            (
                ClusterConfig {
                    read_quorum: 4,
                    ..base()
                },
                3,
                "read_quorum",
            ),
            (
                ClusterConfig {
                    request_timeout: Duration::ZERO,
                    ..base()
                },
                3,
                "request_timeout",
            ),
            (
                ClusterConfig {
                    hedge_delay: Some(Duration::ZERO),
                    ..base()
                },
                3,
                "hedge_delay",
            ),
            (
                ClusterConfig {
                    anti_entropy: AntiEntropyConfig {
                        scan_batch: SCAN_BATCH_MAX + 1,
                        ..AntiEntropyConfig::default()
                    },
                    ..base()
                },
                3,
                "anti_entropy.scan_batch",
            ),
            (
                ClusterConfig {
                    anti_entropy: AntiEntropyConfig {
                        lease_ttl: Duration::from_millis(999),
                        ..AntiEntropyConfig::default()
                    },
                    ..base()
                },
                3,
                "anti_entropy.lease_ttl",
            ),
            (
                ClusterConfig {
                    max_clock_skew: Duration::ZERO,
                    ..base()
                },
                3,
                "max_clock_skew",
            ),
        ];
        for (config, n, field) in cases {
            assert_eq!(config.validate(n).unwrap_err().field, field);
        }
        assert!(
            ClusterConfig {
                read_quorum: 1,
                write_quorum: 1,
                ..base()
            }
            .validate(3)
            .is_ok(),
            "R+W<=N warns, not refuses"
        );
    }
}
