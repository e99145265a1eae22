//! Fault injection, drawn from the run's seed: crash (the server restarts
//! from its last snapshot, in a new epoch), restart empty, flush (an
//! operator empties a running server), partition of one app server ↔
//! replica link, slow replica (a heavy-tailed latency mixture), lost
//! messages, clock skew. Faults start at exponential intervals during the
//! fault phase, last a uniform time, and all end at the heal.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use super::{Phase, World};
use crate::config::{FaultConfig, FaultKind};

#[derive(Clone, Copy, Debug, PartialEq)]
enum ActiveFault {
    Crash { replica: usize, empty: bool },
    Flush { replica: usize },
    Partition { coord: usize, replica: usize },
    Slow { replica: usize },
    Loss { replica: usize, probability: f64 },
    Skew { coord: usize, delta_ms: i64 },
}

impl ActiveFault {
    fn kind(self) -> FaultKind {
        match self {
            ActiveFault::Crash { empty: false, .. } => FaultKind::Crash,
            ActiveFault::Crash { empty: true, .. } => FaultKind::RestartEmpty,
            ActiveFault::Flush { .. } => FaultKind::Flush,
            ActiveFault::Partition { .. } => FaultKind::Partition,
            ActiveFault::Slow { .. } => FaultKind::Slow,
            ActiveFault::Loss { .. } => FaultKind::Loss,
            ActiveFault::Skew { .. } => FaultKind::ClockSkew,
        }
    }

    /// What it is, for the trace: `crash of r1`, `partition c2 -x- r0`.
    fn describe(self) -> String {
        match self {
            ActiveFault::Crash {
                replica,
                empty: false,
            } => format!("crash of r{replica} (restarts from its last snapshot)"),
            ActiveFault::Crash {
                replica,
                empty: true,
            } => format!("crash of r{replica} (restarts empty)"),
            ActiveFault::Flush { replica } => format!("flush of r{replica} (FLUSHALL)"),
            ActiveFault::Partition { coord, replica } => {
                format!("partition c{coord} -x- r{replica}")
            }
            ActiveFault::Slow { replica } => format!("slow r{replica}"),
            ActiveFault::Loss {
                replica,
                probability,
            } => format!("r{replica} loses {:.0}% of messages", probability * 100.0),
            ActiveFault::Skew { coord, delta_ms } => {
                format!("clock skew: c{coord}'s clock {delta_ms:+} ms")
            }
        }
    }

    /// The replica that loses (or may lose) data through it.
    fn data_loss(self) -> Option<usize> {
        match self {
            ActiveFault::Crash { replica, .. } | ActiveFault::Flush { replica } => Some(replica),
            _ => None,
        }
    }
}

/// The faults of one run.
#[derive(Debug)]
pub(crate) struct Faults {
    config: FaultConfig,
    /// Slot = fault id; `None` once ended.
    active: Vec<Option<ActiveFault>>,
    started: Vec<(FaultKind, u64)>,
}

impl Faults {
    pub(crate) fn new(config: &FaultConfig) -> Faults {
        Faults {
            config: config.clone(),
            active: Vec::new(),
            started: FaultKind::ALL.iter().map(|&kind| (kind, 0)).collect(),
        }
    }

    fn active_count(&self) -> usize {
        self.active.iter().flatten().count()
    }

    fn count(&mut self, kind: FaultKind) {
        let slot = self
            .started
            .iter_mut()
            .find(|(k, _)| *k == kind)
            .expect("every kind has a counter");
        slot.1 += 1;
    }

    /// How many faults of each kind started.
    pub(crate) fn started_counts(&self) -> Vec<(FaultKind, u64)> {
        self.started.clone()
    }
}

impl World {
    fn fault_interval(&self) -> Duration {
        let uniform = 1.0 - self.driver().rng.random::<f64>();
        let ms = -uniform.ln() * self.config.faults.mean_interval_ms;
        Duration::from_micros((ms * 1000.0) as u64 + 1)
    }

    /// Starts faults at exponential intervals while the fault phase lasts.
    pub(super) async fn inject_faults(self: Rc<Self>) {
        loop {
            tokio::time::sleep(self.fault_interval()).await;
            if self.driver().phase != Phase::Faults {
                return;
            }
            let room = {
                let driver = self.driver();
                driver.faults.active_count() < driver.faults.config.concurrent_max
            };
            if !room {
                continue;
            }
            // A few draws: some faults are not possible right now (the
            // replica is already down, the wipe budget is spent).
            for _ in 0..4 {
                let kind = {
                    let mut driver = self.driver();
                    let driver = &mut *driver;
                    let kinds = &driver.faults.config.kinds;
                    kinds[driver.rng.random_range(0..kinds.len())]
                };
                if let Some(fault) = self.draw_fault(kind) {
                    self.start_fault(fault);
                    break;
                }
            }
        }
    }

    fn draw_fault(&self, kind: FaultKind) -> Option<ActiveFault> {
        let n = self.config.replicas;
        let mut driver = self.driver();
        let replica = driver.rng.random_range(0..n);
        let coord = driver.rng.random_range(0..self.app_count());
        if self.is_retired(replica) {
            return None; // not in the cluster: nothing to break
        }
        let down = self.net.lock().servers[replica].down;
        let budget_ok =
            || !driver.faults.config.wipe_budget || self.wipe_budget_allows(&driver.faults);
        match kind {
            FaultKind::Crash => (!down && budget_ok()).then_some(ActiveFault::Crash {
                replica,
                empty: false,
            }),
            FaultKind::RestartEmpty => (!down && budget_ok()).then_some(ActiveFault::Crash {
                replica,
                empty: true,
            }),
            FaultKind::Flush => (!down && budget_ok()).then_some(ActiveFault::Flush { replica }),
            FaultKind::Partition => Some(ActiveFault::Partition { coord, replica }),
            FaultKind::Slow => Some(ActiveFault::Slow { replica }),
            FaultKind::Loss => {
                let (low, high) = driver.faults.config.loss_probability;
                let probability = low + (high - low) * driver.rng.random::<f64>();
                Some(ActiveFault::Loss {
                    replica,
                    probability,
                })
            }
            FaultKind::ClockSkew => {
                let max = driver.faults.config.skew_jump_max_ms as i64;
                let magnitude = driver.rng.random_range(max / 4..=max);
                let delta_ms = if driver.rng.random_bool(0.5) {
                    magnitude
                } else {
                    -magnitude
                };
                Some(ActiveFault::Skew { coord, delta_ms })
            }
        }
    }

    /// At most one replica loses data at a time: every other server is in a
    /// complete epoch and no other data-losing fault is on. (A crash
    /// restarts from a snapshot: it may lose the last second of writes.)
    fn wipe_budget_allows(&self, faults: &Faults) -> bool {
        let net = self.net.lock();
        let all_complete =
            (0..self.config.replicas).all(|i| self.is_retired(i) || net.is_complete(i));
        let loss_pending = faults
            .active
            .iter()
            .flatten()
            .any(|f| f.data_loss().is_some());
        all_complete && !loss_pending
    }

    fn start_fault(self: &Rc<Self>, fault: ActiveFault) {
        let duration = {
            let mut driver = self.driver();
            let (shortest, longest) = driver.faults.config.duration_ms;
            Duration::from_millis(driver.rng.random_range(shortest..=longest))
        };
        match fault {
            ActiveFault::Crash { replica, .. } => self.net.lock().stop(replica),
            ActiveFault::Flush { replica } => self.net.lock().flush(replica),
            ActiveFault::Partition { coord, replica } => {
                self.net.lock().partitions[coord * self.config.replicas + replica] += 1;
            }
            ActiveFault::Slow { replica } => self.net.lock().servers[replica].slow += 1,
            ActiveFault::Loss {
                replica,
                probability,
            } => {
                let mut net = self.net.lock();
                let loss = &mut net.servers[replica].loss;
                *loss = loss.max(probability);
            }
            ActiveFault::Skew { coord, delta_ms } => {
                self.app_offset(coord)
                    .fetch_add(delta_ms, Ordering::Relaxed);
            }
        }
        let id = {
            let mut driver = self.driver();
            driver.faults.count(fault.kind());
            driver.faults.active.push(Some(fault));
            driver.faults.active.len() - 1
        };
        self.trace(|| {
            format!(
                "fault #{id} starts: {} for {} ms",
                fault.describe(),
                duration.as_millis()
            )
        });
        let world = self.clone();
        self.spawn(async move {
            tokio::time::sleep(duration).await;
            world.end_fault(id);
        });
    }

    fn end_fault(&self, id: usize) {
        let Some(fault) = self.driver().faults.active[id].take() else {
            return; // ended at the heal
        };
        self.trace(|| format!("fault #{id} ends: {}", fault.describe()));
        match fault {
            ActiveFault::Crash { replica, .. } if self.is_retired(replica) => {
                // Removed while it was down: it stays stopped.
            }
            ActiveFault::Crash { replica, empty } => {
                self.net.lock().start(replica, !empty);
                self.trace(|| {
                    let from = if empty {
                        "empty"
                    } else {
                        "from its last snapshot"
                    };
                    format!("r{replica} restarts {from}, in a new epoch")
                });
            }
            ActiveFault::Flush { .. } => {}
            ActiveFault::Partition { coord, replica } => {
                self.net.lock().partitions[coord * self.config.replicas + replica] -= 1;
            }
            ActiveFault::Slow { replica } => self.net.lock().servers[replica].slow -= 1,
            ActiveFault::Loss { replica, .. } => {
                // The loss left is the largest of the loss faults still on.
                let remaining = self
                    .driver()
                    .faults
                    .active
                    .iter()
                    .flatten()
                    .filter_map(|f| match *f {
                        ActiveFault::Loss {
                            replica: r,
                            probability,
                        } if r == replica => Some(probability),
                        _ => None,
                    })
                    .fold(0.0, f64::max);
                self.net.lock().servers[replica].loss = remaining;
            }
            ActiveFault::Skew { coord, delta_ms } => {
                self.app_offset(coord)
                    .fetch_sub(delta_ms, Ordering::Relaxed);
            }
        }
    }

    /// Ends every active fault now (the heal).
    pub(super) fn end_all_faults(&self) {
        let count = self.driver().faults.active.len();
        for id in 0..count {
            self.end_fault(id);
        }
        let net = self.net.lock();
        assert!(net.partitions.iter().all(|&p| p == 0), "no partition left");
        assert!(
            (0..net.servers.len()).all(|r| self.is_retired(r) || !net.servers[r].down),
            "every server in the cluster is up"
        );
    }
}
