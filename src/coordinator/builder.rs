//! Building and starting a [`Coordinator`]: configuration validation, the
//! writer id and wall clock, then (in [`CoordinatorBuilder::connect`]) the
//! first pings and the background task.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::config::ClusterConfig;
use crate::core::epoch::EpochTable;
use crate::core::health::HealthTracker;
use crate::core::hints::HintQueues;
use crate::error::{ConfigError, Result};
use crate::replica::Replica;
use crate::stamp::{duration_ms, Hlc, WRITER_MAX};

use super::stats::Counters;
use super::{system_clock, Coordinator, CoreState, Inner, WallClock};

/// Builds a [`Coordinator`] with a custom writer id or wall clock.
pub struct CoordinatorBuilder {
    config: ClusterConfig,
    replicas: Vec<Arc<dyn Replica>>,
    writer_id: Option<u64>,
    lease_owner: Option<u64>,
    wall_clock: WallClock,
}

impl Coordinator {
    /// A builder over `replicas` (their order is the configured read order).
    pub fn builder(config: ClusterConfig, replicas: Vec<Arc<dyn Replica>>) -> CoordinatorBuilder {
        CoordinatorBuilder {
            config,
            replicas,
            writer_id: None,
            lease_owner: None,
            wall_clock: system_clock(),
        }
    }

    /// Validates, builds, pings every replica, bootstraps a fresh cluster and
    /// starts the health probes. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid configuration. Unreachable replicas are
    /// marked and probed, not an error.
    pub async fn connect(
        config: ClusterConfig,
        replicas: Vec<Arc<dyn Replica>>,
    ) -> Result<Coordinator, ConfigError> {
        Coordinator::builder(config, replicas).connect().await
    }
}

impl CoordinatorBuilder {
    /// The HLC writer id (default: random, 48 bits).
    pub fn writer_id(mut self, writer_id: u64) -> Self {
        self.writer_id = Some(writer_id);
        self
    }

    /// This coordinator's id as a holder of the anti-entropy lease (default:
    /// random). Must differ between app servers; set it only to make runs
    /// reproducible (the simulator does).
    pub fn lease_owner(mut self, lease_owner: u64) -> Self {
        self.lease_owner = Some(lease_owner);
        self
    }

    /// The wall clock (default: the system clock).
    pub fn wall_clock(mut self, wall_clock: WallClock) -> Self {
        self.wall_clock = wall_clock;
        self
    }

    /// Validates the configuration and builds the coordinator, without
    /// contacting any replica (no replica is readable until [`Coordinator::initialize`]
    /// or its first reply).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field and rule broken, including duplicate
    /// replica names and a writer id beyond 48 bits.
    pub fn build(self) -> Result<Coordinator, ConfigError> {
        let n = self.replicas.len();
        self.config.validate(n)?;
        let mut names: Vec<&str> = self.replicas.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::new(
                "replicas",
                format!("duplicate replica name {:?}", pair[0]),
            ));
        }
        let mut write_only = Vec::new();
        for name in &self.config.write_only {
            match self.replicas.iter().position(|r| r.name() == name) {
                Some(index) if !write_only.contains(&index) => write_only.push(index),
                Some(_) => {
                    return Err(ConfigError::new(
                        "write_only",
                        format!("{name:?} is listed twice"),
                    ))
                }
                None => {
                    return Err(ConfigError::new(
                        "write_only",
                        format!("{name:?} is not the name of a replica"),
                    ))
                }
            }
        }
        let writer_id = self
            .writer_id
            .unwrap_or_else(|| rand::random::<u64>() & WRITER_MAX);
        if writer_id > WRITER_MAX {
            return Err(ConfigError::new("writer_id", "must fit in 48 bits"));
        }
        let skew_ms = duration_ms(self.config.max_clock_skew);
        let state = CoreState {
            clock: Hlc::new(writer_id, skew_ms),
            health: HealthTracker::new(n, &self.config.health),
            epochs: {
                let mut epochs = EpochTable::new(n);
                for &index in &write_only {
                    epochs.set_write_only(index);
                }
                epochs
            },
            hints: HintQueues::new(n, self.config.hints.clone()),
            latency: vec![Default::default(); n],
        };
        Ok(Coordinator {
            inner: Arc::new(Inner {
                replicas: self.replicas,
                config: self.config,
                state: Mutex::new(state),
                counters: Counters::default(),
                wall_clock: self.wall_clock,
                started: Instant::now(),
                anti_entropy_running: std::sync::atomic::AtomicBool::new(false),
                lease_owner: self.lease_owner.unwrap_or_else(rand::random),
                anti_entropy_not_before_ms: AtomicU64::new(0),
                anti_entropy_next_scheduled_ms: AtomicU64::new(0),
                lifecycle: Default::default(),
            }),
        })
    }

    /// [`build`](Self::build), then [`Coordinator::initialize`], then starts
    /// the background probe task.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as for `build`. Unreachable replicas are not an error.
    pub async fn connect(self) -> Result<Coordinator, ConfigError> {
        let coordinator = self.build()?;
        coordinator.initialize().await;
        coordinator.spawn_probe_task();
        Ok(coordinator)
    }
}
