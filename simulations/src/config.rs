//! The simulator's configuration: the cluster (the crate's own
//! [`ClusterConfig`]), the workload, the faults, and the switches that build
//! the *bad* configurations the history checker must catch.

use std::time::Duration;

use anyhow::{bail, Result};
use quorum_sessions::config::ReadRepair;
use quorum_sessions::core::hints::HintLimits;
use quorum_sessions::ClusterConfig;

use crate::latency::{Component, Exponential, LatencyModel, Mixture, MixtureSpec, Pareto};

/// The seed of the default run.
pub const DEFAULT_SEED: u64 = 13;
/// Client operations of the default run.
pub const DEFAULT_OPS: u64 = 100_000;

/// A kind of fault the simulator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A replica stops answering, then restarts from its last snapshot (a
    /// new, incomplete epoch: the run id changed).
    Crash,
    /// A replica stops answering, then restarts empty (a new, incomplete epoch).
    RestartEmpty,
    /// An operator empties a running replica (`FLUSHALL`): its data and
    /// epoch key are gone, with no restart.
    Flush,
    /// One coordinator ↔ replica link drops every message.
    Partition,
    /// A replica's answers follow a heavy-tailed latency mixture.
    Slow,
    /// Messages to and from a replica are lost with some probability.
    Loss,
    /// A coordinator's wall clock jumps (within `max_clock_skew`).
    ClockSkew,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Crash,
        FaultKind::RestartEmpty,
        FaultKind::Flush,
        FaultKind::Partition,
        FaultKind::Slow,
        FaultKind::Loss,
        FaultKind::ClockSkew,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::RestartEmpty => "restart-empty",
            FaultKind::Flush => "flush",
            FaultKind::Partition => "partition",
            FaultKind::Slow => "slow",
            FaultKind::Loss => "loss",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    /// Parses [`FaultKind::name`].
    ///
    /// # Errors
    ///
    /// An unknown name.
    pub fn parse(name: &str) -> Result<FaultKind> {
        match FaultKind::ALL.iter().find(|kind| kind.name() == name) {
            Some(kind) => Ok(*kind),
            None => {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown fault {name:?} (known: {})", names.join(", "))
            }
        }
    }
}

/// Which faults occur, how often and how long.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// The kinds drawn (empty: no faults).
    pub kinds: Vec<FaultKind>,
    /// Mean virtual time between two fault starts, ms (exponential).
    pub mean_interval_ms: f64,
    /// Shortest and longest fault, ms (uniform).
    pub duration_ms: (u64, u64),
    /// Most faults active at once.
    pub concurrent_max: usize,
    /// Loss probability of a `Loss` fault: uniform in this range.
    pub loss_probability: (f64, f64),
    /// Largest clock jump of a `ClockSkew` fault, ms (either direction).
    pub skew_jump_max_ms: u64,
    /// Largest steady offset of a coordinator's clock, ms (either direction).
    pub skew_base_max_ms: u64,
    /// Budget: a replica is only restarted empty while every other replica's
    /// epoch is complete (at most one replica being refilled at a time: the
    /// data acknowledged on W replicas then always survives on W − 1 of them).
    /// Off lets several wipes overlap, which may lose acknowledged writes.
    pub wipe_budget: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            kinds: FaultKind::ALL.to_vec(),
            mean_interval_ms: 2_500.0,
            duration_ms: (200, 1_500),
            concurrent_max: 2,
            loss_probability: (0.05, 0.3),
            skew_jump_max_ms: 2_000,
            skew_base_max_ms: 150,
            wipe_budget: true,
        }
    }
}

/// The mix of client operations and the sessions they act on.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// App servers, each a coordinator with its own HLC and wall clock.
    pub coordinators: usize,
    /// Virtual arrival rate of client operations, per second (Poisson).
    pub ops_per_sec: f64,
    /// Relative weights: read, update, touch, remove a field, create, delete,
    /// and a read of any session ever created (old cookies: expired and
    /// deleted sessions).
    pub weights: OpWeights,
    /// Sessions clients keep using; beyond, the oldest-used one is dropped.
    pub active_sessions_max: usize,
    /// Probability that an operation targets one of the few newest sessions
    /// (concurrent requests on one session).
    pub hot_probability: f64,
    /// Fraction of sessions with a short idle timeout.
    pub short_ttl_fraction: f64,
    /// Idle timeout (sliding expiry) and lifetime cap of short sessions, ms.
    pub short_ttl_ms: (u64, u64),
    /// Idle timeout and lifetime cap of the other sessions, ms.
    pub long_ttl_ms: (u64, u64),
}

/// Relative weights of the client operations.
#[derive(Clone, Copy, Debug)]
pub struct OpWeights {
    /// Read a session.
    pub read: u32,
    /// Write one to three fields.
    pub update: u32,
    /// Extend the expiry.
    pub touch: u32,
    /// Remove one field.
    pub remove_field: u32,
    /// Create a session.
    pub create: u32,
    /// Delete a session.
    pub delete: u32,
    /// Read a session taken from every session ever created.
    pub revisit: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            coordinators: 4,
            ops_per_sec: 4_000.0,
            weights: OpWeights {
                read: 50,
                update: 20,
                touch: 8,
                remove_field: 3,
                create: 8,
                delete: 5,
                revisit: 6,
            },
            active_sessions_max: 300,
            hot_probability: 0.3,
            short_ttl_fraction: 0.25,
            short_ttl_ms: (3_000, 12_000),
            long_ttl_ms: (30 * 60_000, 2 * 3_600_000),
        }
    }
}

/// Switches that make the simulated cluster unsafe, to show that the history
/// checker catches what the protections prevent. The library is never
/// changed: a switch either sets one of the library's own settings (read
/// repair, hint age, anti-entropy scheduling) or makes the simulated Redis
/// servers behave like a naive store (no tombstones, no epochs, no held
/// stamps in merge replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switches {
    /// Deletes write a tombstone. Off: the servers remove the key when a
    /// tombstone arrives (what naive stores do), so stale copies come back.
    pub tombstones: bool,
    /// Anti-entropy passes run (on rejoin, on schedule, on an operator's
    /// demand during quiesce). Off: never.
    pub anti_entropy: bool,
    /// Failed or skipped writes leave hints that are replayed. Off: every
    /// hint expires as soon as it is queued (`age_max_ms = 0`).
    pub hints: bool,
    /// Servers start a new epoch when they lose data. Off: a server keeps
    /// one complete epoch whatever happens to its data, so a replica that
    /// restarted empty is read at once and its misses count.
    pub epochs: bool,
    /// Merge replies carry the largest stamp the record held (the HLC
    /// receive rule, and the re-stamp that keeps acknowledgement order and
    /// stamp order in agreement). Off: they carry none.
    pub held_stamps: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            tombstones: true,
            anti_entropy: true,
            hints: true,
            epochs: true,
            held_stamps: true,
        }
    }
}

/// Anti-entropy pacing.
#[derive(Clone, Debug)]
pub struct AntiEntropyConfig {
    /// A pass runs at least this often during the fault phase, ms.
    pub interval_ms: u64,
    /// Keys per scanned page.
    pub page_keys: usize,
    /// Virtual time one page costs, µs (scan, digests, repairs).
    pub page_cost_us: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval_ms: 30_000,
            page_keys: 256,
            page_cost_us: 2_000,
        }
    }
}

/// Everything one simulated run needs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of the run's one RNG.
    pub seed: u64,
    /// N: replicas.
    pub replicas: usize,
    /// W, R, timeouts, hedging, read-repair mode, clock skew limit, health:
    /// the crate's own configuration.
    pub cluster: ClusterConfig,
    /// Client operations issued during the fault phase.
    pub ops: u64,
    /// Workload.
    pub workload: WorkloadConfig,
    /// Faults.
    pub faults: FaultConfig,
    /// Protections on or off.
    pub switches: Switches,
    /// Hint queue bounds (the core's).
    pub hints: HintLimits,
    /// Anti-entropy pacing.
    pub anti_entropy: AntiEntropyConfig,
    /// Network latency of a healthy replica.
    pub latency: LatencyModel,
    /// The component a `Slow` fault blends into a replica's answers.
    pub slow_component: Mixture,
    /// Weight of that component while slow.
    pub slow_weight: f64,
    /// Replicas drop a key this long after its effective expiry (Redis
    /// `PEXPIREAT` = expiry + margin). Must exceed every clock offset.
    pub ttl_margin_ms: u64,
    /// Coordinators run probes and hint replay every this many ms.
    pub tick_ms: u64,
    /// After the heal, repair must converge within this virtual time, ms.
    pub quiesce_bound_ms: u64,
    /// After convergence, read every session once through the normal read
    /// path and check the answers too.
    pub audit_reads: bool,
}

/// The latency of a healthy replica on a LAN: mostly a fraction of a
/// millisecond, with an exponential tail (the shape of Bailis et al.'s
/// LinkedIn SSD fit).
pub fn lan_latency() -> LatencyModel {
    let leg = |xm: f64| {
        MixtureSpec {
            components: vec![
                Component {
                    weight: 0.92,
                    pareto: Some(Pareto { xm, alpha: 6.0 }),
                    exponential: None,
                },
                Component {
                    weight: 0.08,
                    pareto: None,
                    exponential: Some(Exponential { lambda: 1.2 }),
                },
            ],
        }
        .build("lan")
        .expect("built-in model is valid")
    };
    LatencyModel {
        write: leg(0.25),
        ack: leg(0.2),
        read: leg(0.2),
        response: leg(0.2),
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: DEFAULT_SEED,
            replicas: 3,
            cluster: ClusterConfig {
                write_quorum: 2,
                read_quorum: 2,
                read_repair: ReadRepair::Blocking,
                ..ClusterConfig::default()
            },
            ops: DEFAULT_OPS,
            workload: WorkloadConfig::default(),
            faults: FaultConfig::default(),
            switches: Switches::default(),
            hints: HintLimits {
                entries_max: 4_096,
                bytes_max: 4 * 1024 * 1024,
                age_max_ms: 10 * 60_000,
                replay_per_sec: 5_000,
                replay_burst: 250,
            },
            anti_entropy: AntiEntropyConfig::default(),
            latency: lan_latency(),
            slow_component: Mixture::pareto(25.0, 1.6),
            slow_weight: 0.35,
            ttl_margin_ms: 10_000,
            tick_ms: 20,
            quiesce_bound_ms: 60_000,
            audit_reads: true,
        }
    }
}

impl SimConfig {
    /// W.
    pub fn write_quorum(&self) -> usize {
        self.cluster.write_quorum
    }

    /// R.
    pub fn read_quorum(&self) -> usize {
        self.cluster.read_quorum
    }

    /// Sets N, W and R.
    pub fn with_quorums(mut self, n: usize, w: usize, r: usize) -> SimConfig {
        self.replicas = n;
        self.cluster.write_quorum = w;
        self.cluster.read_quorum = r;
        self
    }

    /// Checks the configuration (the cluster part with the crate's own
    /// validation).
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn validate(&self) -> Result<()> {
        if self.replicas == 0 || self.replicas > 64 {
            bail!("replicas must be in 1..=64 (got {})", self.replicas);
        }
        self.cluster
            .validate(self.replicas)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.workload.coordinators == 0 || self.workload.coordinators > 64 {
            bail!("coordinators must be in 1..=64");
        }
        if !(self.workload.ops_per_sec.is_finite() && self.workload.ops_per_sec > 0.0) {
            bail!("ops_per_sec must be > 0");
        }
        let skew_max = self.faults.skew_base_max_ms + self.faults.skew_jump_max_ms;
        if skew_max >= duration_ms(self.cluster.max_clock_skew) {
            bail!("clock offsets ({skew_max} ms) must stay below max_clock_skew");
        }
        if self.ttl_margin_ms <= 2 * skew_max {
            bail!(
                "ttl_margin_ms ({}) must exceed twice the largest clock offset ({skew_max} ms)",
                self.ttl_margin_ms
            );
        }
        let (shortest, longest) = self.faults.duration_ms;
        if shortest == 0 || shortest > longest {
            bail!("fault durations must satisfy 0 < min <= max");
        }
        let (low, high) = self.faults.loss_probability;
        if !(0.0..=1.0).contains(&low) || !(low..=1.0).contains(&high) {
            bail!("loss probabilities must satisfy 0 <= low <= high <= 1");
        }
        if self.tick_ms == 0 || self.anti_entropy.page_keys == 0 {
            bail!("tick_ms and anti-entropy page_keys must be positive");
        }
        Ok(())
    }
}

/// A duration in whole milliseconds.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in whole microseconds.
pub fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        SimConfig::default().validate().unwrap();
        assert!(SimConfig::default()
            .with_quorums(3, 4, 1)
            .validate()
            .is_err());
    }

    #[test]
    fn fault_names_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()).unwrap(), kind);
        }
        assert!(FaultKind::parse("meteor").is_err());
    }
}
