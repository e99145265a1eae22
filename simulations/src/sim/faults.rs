//! Fault injection, drawn from the run's seed: crash (restart with data),
//! restart empty (a new, incomplete epoch), partition of one coordinator ↔
//! replica link, slow replica (a heavy-tailed latency mixture), lost
//! messages, clock skew. Faults start at exponential intervals during the
//! fault phase, last a uniform time, and all end at the heal.

use quorum_sessions::replica::Epoch;
use rand::Rng;

use super::{Event, Phase, World};
use crate::config::{FaultConfig, FaultKind};

#[derive(Clone, Copy, Debug, PartialEq)]
enum ActiveFault {
    Crash { replica: usize, empty: bool },
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
            ActiveFault::Partition { .. } => FaultKind::Partition,
            ActiveFault::Slow { .. } => FaultKind::Slow,
            ActiveFault::Loss { .. } => FaultKind::Loss,
            ActiveFault::Skew { .. } => FaultKind::ClockSkew,
        }
    }
}

/// The faults of one run.
#[derive(Debug)]
pub(super) struct Faults {
    config: FaultConfig,
    /// Slot = fault id; `None` once ended.
    active: Vec<Option<ActiveFault>>,
    started: Vec<(FaultKind, u64)>,
}

impl Faults {
    pub(super) fn new(config: &FaultConfig) -> Faults {
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
    pub(super) fn started_counts(&self) -> Vec<(FaultKind, u64)> {
        self.started.clone()
    }
}

impl World {
    pub(super) fn on_next_fault(&mut self) {
        if self.phase != Phase::Faults {
            return;
        }
        if self.faults.active_count() < self.faults.config.concurrent_max {
            // A few draws: some faults are not possible right now (the
            // replica is already down, the wipe budget is spent).
            for _ in 0..4 {
                let kinds = &self.faults.config.kinds;
                let kind = kinds[self.rng.random_range(0..kinds.len())];
                if let Some(fault) = self.draw_fault(kind) {
                    self.start_fault(fault);
                    break;
                }
            }
        }
        let next = self.fault_interval_us();
        self.schedule(next, Event::NextFault);
    }

    fn draw_fault(&mut self, kind: FaultKind) -> Option<ActiveFault> {
        let n = self.replicas.len();
        let replica = self.rng.random_range(0..n);
        let coord = self.rng.random_range(0..self.coords.len());
        match kind {
            FaultKind::Crash => (!self.replicas[replica].crashed).then_some(ActiveFault::Crash {
                replica,
                empty: false,
            }),
            FaultKind::RestartEmpty => {
                let budget_ok = !self.faults.config.wipe_budget || self.wipe_budget_allows(replica);
                (!self.replicas[replica].crashed && budget_ok).then_some(ActiveFault::Crash {
                    replica,
                    empty: true,
                })
            }
            FaultKind::Partition => Some(ActiveFault::Partition { coord, replica }),
            FaultKind::Slow => Some(ActiveFault::Slow { replica }),
            FaultKind::Loss => {
                let (low, high) = self.faults.config.loss_probability;
                let probability = low + (high - low) * self.rng.random::<f64>();
                Some(ActiveFault::Loss {
                    replica,
                    probability,
                })
            }
            FaultKind::ClockSkew => {
                let max = self.faults.config.skew_jump_max_ms as i64;
                let magnitude = self.rng.random_range(max / 4..=max);
                let delta_ms = if self.rng.random_bool(0.5) {
                    magnitude
                } else {
                    -magnitude
                };
                Some(ActiveFault::Skew { coord, delta_ms })
            }
        }
    }

    /// At most one replica is being refilled at a time: every other replica
    /// is complete and no other wipe is pending.
    fn wipe_budget_allows(&self, target: usize) -> bool {
        let others_complete = (0..self.replicas.len())
            .filter(|&i| i != target)
            .all(|i| self.replicas[i].epoch.complete);
        let wipe_pending = self
            .faults
            .active
            .iter()
            .flatten()
            .any(|f| matches!(f, ActiveFault::Crash { empty: true, .. }));
        others_complete && !wipe_pending && self.replicas[target].epoch.complete
    }

    fn start_fault(&mut self, fault: ActiveFault) {
        let (shortest, longest) = self.faults.config.duration_ms;
        let duration_us = self.rng.random_range(shortest..=longest) * 1000;
        match fault {
            ActiveFault::Crash { replica, .. } => self.replicas[replica].crashed = true,
            ActiveFault::Partition { coord, replica } => {
                let link = self.link(coord, replica);
                self.partitions[link] += 1;
            }
            ActiveFault::Slow { replica } => self.replicas[replica].slow += 1,
            ActiveFault::Loss {
                replica,
                probability,
            } => {
                let loss = &mut self.replicas[replica].loss;
                *loss = loss.max(probability);
            }
            ActiveFault::Skew { coord, delta_ms } => self.coords[coord].offset_ms += delta_ms,
        }
        self.faults.count(fault.kind());
        let id = self.faults.active.len();
        self.faults.active.push(Some(fault));
        self.trace(None, || {
            format!(
                "fault #{id} starts: {fault:?} for {} ms",
                duration_us / 1000
            )
        });
        self.schedule(duration_us, Event::FaultEnd { fault: id });
    }

    pub(super) fn on_fault_end(&mut self, id: usize) {
        let Some(fault) = self.faults.active[id].take() else {
            return; // ended at the heal
        };
        self.trace(None, || format!("fault #{id} ends: {fault:?}"));
        match fault {
            ActiveFault::Crash { replica, empty } => {
                let replica_state = &mut self.replicas[replica];
                replica_state.crashed = false;
                if empty {
                    replica_state.records.clear();
                    replica_state.epoch = Epoch {
                        id: self.rng.random(),
                        complete: false,
                    };
                    self.mutations += 1;
                    let epoch = replica_state.epoch.id;
                    self.trace(None, || {
                        format!("r{replica} restarts empty in epoch {epoch:x}")
                    });
                }
            }
            ActiveFault::Partition { coord, replica } => {
                let link = self.link(coord, replica);
                self.partitions[link] -= 1;
            }
            ActiveFault::Slow { replica } => self.replicas[replica].slow -= 1,
            ActiveFault::Loss { replica, .. } => {
                // The loss left is the largest of the loss faults still on.
                let remaining = self
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
                self.replicas[replica].loss = remaining;
            }
            ActiveFault::Skew { coord, delta_ms } => self.coords[coord].offset_ms -= delta_ms,
        }
    }

    /// Ends every active fault now (the heal).
    pub(super) fn end_all_faults(&mut self) {
        for id in 0..self.faults.active.len() {
            self.on_fault_end(id);
        }
        assert_eq!(self.faults.active_count(), 0, "everything healed");
        assert!(self.partitions.iter().all(|&p| p == 0), "no partition left");
    }
}
