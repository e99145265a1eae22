//! The read path (DESIGN §5): order the replicas with the core's
//! `read_order` (health, then readability, rotated per key), let a
//! `ReadPlan` decide whom to ask, feed it every answer, failure and hedge
//! timer, then read-repair the `repair_targets` — blocking by default: the
//! client waits until the merged record is on W replicas (or every repair
//! settled).

use std::rc::Rc;

use quorum_sessions::config::ReadRepair;
use quorum_sessions::core::health::Health;
use quorum_sessions::core::read::{read_order, Absence, ReadDecision, ReadPlan, ReadResult};
use quorum_sessions::replica::{Epoch, MergeMode};
use quorum_sessions::Record;

use super::{Op, OpId, Phase, Purpose, ReadOp, ReadState, RequestBody, World};
use crate::workload::SessionIndex;

impl World {
    /// Starts a read of `session` on coordinator `coord` (`audit`: a final
    /// read after quiesce, not counted in availability or latency).
    pub(super) fn issue_read(&mut self, coord: usize, session: SessionIndex, audit: bool) {
        let now_ms = self.wall_ms(coord);
        // Expiry enforcement off: the plan gets no clock, so it never judges
        // an expiry (the coordinator trusts the replicas' TTLs).
        let plan_now = if self.config.switches.enforce_expiry {
            now_ms
        } else {
            0
        };
        let n = self.replicas.len();
        let epochs_on = self.config.switches.epochs;
        let coordinator = &self.coords[coord];
        // On the stack: N is at most 64 (checked by the configuration).
        let mut states = [(Health::Up, false); 64];
        for (i, state) in states.iter_mut().enumerate().take(n) {
            let readable = !epochs_on || coordinator.epochs.is_readable(i);
            *state = (coordinator.health.health(i), readable);
        }
        let states = &states[..n];
        let key = self.workload.session(session).key.clone();
        let candidates = read_order(&key, states, self.config.cluster.read_order);
        let mut plan = ReadPlan::new(
            candidates,
            self.config.read_quorum(),
            self.config.cluster.misses_for_absence(n),
            plan_now,
        );
        let token = self.checker.read_invoked(session, self.now, now_ms);
        let decision = plan.start();
        let op = self.ops.insert(Op::Read(Box::new(ReadOp {
            coord,
            key: key.clone(),
            plan,
            token,
            state: ReadState::Planning,
            outstanding: 0,
            invoked_at: self.now,
            audit,
        })));
        if audit {
            self.audit_in_flight += 1;
        }
        self.trace(Some(&key), || format!("c{coord} read {key}: {decision:?}"));
        self.apply_read_decision(op, decision);
        self.release_if_done(op);
    }

    fn with_read<T>(&mut self, op: OpId, f: impl FnOnce(&mut ReadOp) -> T) -> T {
        match self.ops.get_mut(op) {
            Some(Op::Read(read)) => f(read),
            _ => panic!("read {op:?} is gone"),
        }
    }

    fn apply_read_decision(&mut self, op: OpId, decision: ReadDecision) {
        match decision {
            ReadDecision::Ask(replicas) => {
                let (coord, key) = self.with_read(op, |read| {
                    read.outstanding += replicas.len();
                    (read.coord, read.key.clone())
                });
                for replica in replicas {
                    self.send(
                        coord,
                        replica,
                        Purpose::Read(op),
                        key.clone(),
                        RequestBody::Read,
                    );
                }
                if let Some(delay) = self.hedge_delay_us {
                    self.schedule_hedge(delay, op);
                }
            }
            ReadDecision::Wait => {}
            ReadDecision::Done(result) => self.conclude_read(op, result),
        }
    }

    /// A replica answered the read.
    pub(super) fn on_read_answer(
        &mut self,
        op: OpId,
        replica: usize,
        record: Option<Record>,
        epoch: Epoch,
    ) {
        let epochs_on = self.config.switches.epochs;
        let coord = self.with_read(op, |read| {
            read.outstanding -= 1;
            read.coord
        });
        // The reply's epoch must be complete, and not one this coordinator
        // saw replaced, for a miss to count.
        let counts =
            !epochs_on || (epoch.complete && self.coords[coord].epochs.is_readable(replica));
        let decision = self.with_read(op, |read| {
            matches!(read.state, ReadState::Planning)
                .then(|| read.plan.on_answer(replica, record, counts))
        });
        if let Some(decision) = decision {
            let key = self.with_read(op, |read| read.key.clone());
            self.trace(Some(&key), || {
                format!("c{coord} read {key}: r{replica} answered, {decision:?}")
            });
            self.apply_read_decision(op, decision);
        }
        self.release_if_done(op);
    }

    /// A read request failed or timed out.
    pub(super) fn on_read_failure(&mut self, op: OpId, replica: usize) {
        let decision = self.with_read(op, |read| {
            read.outstanding -= 1;
            matches!(read.state, ReadState::Planning).then(|| read.plan.on_failure(replica))
        });
        if let Some(decision) = decision {
            self.apply_read_decision(op, decision);
        }
        self.release_if_done(op);
    }

    /// The hedge timer of a read fired.
    pub(super) fn on_hedge(&mut self, op: OpId) {
        let Some(Op::Read(read)) = self.ops.get_mut(op) else {
            return; // the read is over
        };
        if !matches!(read.state, ReadState::Planning) {
            return;
        }
        let decision = read.plan.on_hedge();
        if matches!(decision, ReadDecision::Ask(_)) {
            self.stats.hedges += 1;
        }
        self.apply_read_decision(op, decision);
    }

    /// The plan concluded: read-repair, then answer (now, or once the
    /// blocking repair has put the merged record on W replicas).
    fn conclude_read(&mut self, op: OpId, result: ReadResult) {
        let mode = self.config.cluster.read_repair;
        let repairs = matches!(
            result,
            ReadResult::Found(_) | ReadResult::NotFound(Absence::Deleted)
        ) && mode != ReadRepair::Off;
        let (coord, key, targets, merged, answered) = self.with_read(op, |read| {
            let targets = if repairs {
                read.plan.repair_targets()
            } else {
                Vec::new()
            };
            let merged = match (&result, targets.is_empty()) {
                (_, true) => None,
                (ReadResult::Found(record), false) => Some(record.clone()),
                (_, false) => read.plan.merged(),
            };
            (
                read.coord,
                read.key.clone(),
                targets,
                merged,
                read.plan.answered().len(),
            )
        });
        let Some(merged) = merged else {
            self.answer_read(op, result);
            return;
        };
        let merged = Rc::new(merged);
        let blocking = mode == ReadRepair::Blocking;
        self.stats.read_repairs += targets.len() as u64;
        self.trace(Some(&key), || {
            format!("c{coord} read-repairs {key} on {targets:?}")
        });
        for &replica in &targets {
            let body = RequestBody::Merge {
                delta: merged.clone(),
                mode: MergeMode::Upsert,
            };
            if blocking {
                self.with_read(op, |read| read.outstanding += 1);
            }
            let purpose = Purpose::Repair(blocking.then_some(op));
            self.send(coord, replica, purpose, key.clone(), body);
        }
        let holding = answered - targets.len();
        if blocking && holding < self.config.write_quorum() {
            let pending = targets.len();
            self.with_read(op, |read| {
                read.state = ReadState::Repairing {
                    result,
                    holding,
                    pending,
                }
            });
        } else {
            self.answer_read(op, result);
        }
    }

    /// A blocking read-repair request settled (`applied`: the replica merged).
    pub(super) fn on_repair_reply(&mut self, op: OpId, applied: bool) {
        let write_quorum = self.config.write_quorum();
        let ready = self.with_read(op, |read| {
            read.outstanding -= 1;
            let ReadState::Repairing {
                holding, pending, ..
            } = &mut read.state
            else {
                return None;
            };
            *pending -= 1;
            if applied {
                *holding += 1;
            }
            if *holding < write_quorum && *pending > 0 {
                return None;
            }
            let ReadState::Repairing { result, .. } =
                std::mem::replace(&mut read.state, ReadState::Answered)
            else {
                unreachable!("matched above");
            };
            Some(result)
        });
        if let Some(result) = ready {
            self.answer_read(op, result);
        }
        self.release_if_done(op);
    }

    /// The client gets its answer; the checker judges it.
    fn answer_read(&mut self, op: OpId, result: ReadResult) {
        let now = self.now;
        let counted = self.phase == Phase::Faults;
        let (coord, key, latency_us, audit) = self.with_read(op, |read| {
            read.state = ReadState::Answered;
            (
                read.coord,
                read.key.clone(),
                now - read.invoked_at,
                read.audit,
            )
        });
        let token = self.with_read(op, |read| read.token.clone());
        self.checker.read_completed(&token, &result);
        self.stats
            .record_read(&result, latency_us, counted && !audit);
        self.trace(Some(&key), || {
            let shown = match &result {
                ReadResult::Found(record) => format!("found {}", describe(record)),
                other => format!("{other:?}"),
            };
            format!("c{coord} read {key} answered {shown} after {latency_us} us")
        });
    }
}

/// A compact, readable form of a record for traces.
pub(super) fn describe(record: &Record) -> String {
    let mut out = String::from("{");
    for (name, entry) in &record.fields {
        let value = match &entry.value {
            Some(bytes) if bytes.len() == 8 => {
                format!(
                    "#{}",
                    u64::from_be_bytes(bytes[..].try_into().expect("8 bytes"))
                )
            }
            Some(bytes) => format!("{bytes:?}"),
            None => "removed".to_owned(),
        };
        out.push_str(&format!(
            "{name}={value}@{}.{}.{:x} ",
            entry.stamp.physical_ms % 1_000_000,
            entry.stamp.logical,
            entry.stamp.writer % 0x1000
        ));
    }
    if record.partial {
        out.push_str("partial ");
    }
    out.push_str(&format!(
        "exp={}}}",
        record.effective_expiry_ms() % 1_000_000
    ));
    out
}
