//! Background work and the end of a run: each coordinator's tick (health
//! probes, rate-limited hint replay), anti-entropy passes (run by
//! coordinator 0, the lease holder), the heal, the quiesce phase that waits
//! for convergence within a bound, and the audit reads.
//!
//! Anti-entropy reads and writes the replicas' maps directly, a page of keys
//! per step, each step costing `page_cost_us` of virtual time; it sees a
//! replica only while that replica is up and linked to coordinator 0.

use std::rc::Rc;

use quorum_sessions::core::anti_entropy::AntiEntropyPass;
use quorum_sessions::replica::{apply_merge, Epoch, MergeMode};
use quorum_sessions::Record;

use super::{
    AntiEntropyRun, Event, Phase, Purpose, RequestBody, World, AUDIT_CONCURRENCY, QUIESCE_CHECK_US,
};
use crate::checker::diverged_keys;
use crate::workload::SessionKey;

impl World {
    /// A coordinator's periodic work.
    pub(super) fn on_tick(&mut self, coord: usize) {
        if self.phase == Phase::Done {
            return;
        }
        let now_ms = self.wall_ms(coord);
        let due = self.coords[coord].health.due_probes(now_ms);
        for replica in due {
            self.coords[coord].health.on_probe_sent(replica, now_ms);
            self.send(
                coord,
                replica,
                Purpose::Probe,
                Rc::from(""),
                RequestBody::Ping,
            );
        }
        if self.config.switches.hints {
            for replica in 0..self.replicas.len() {
                let hints = &mut self.coords[coord].hints;
                if hints.needs_anti_entropy(replica) {
                    self.anti_entropy_due = true;
                }
                if self.coords[coord].health.is_down(replica)
                    || self.coords[coord].hints.is_empty(replica)
                {
                    continue;
                }
                let batch = self.coords[coord].hints.take_batch(replica, now_ms);
                for hint in batch {
                    let key: Rc<str> = Rc::from(hint.key);
                    let delta = Rc::new(hint.delta);
                    let body = RequestBody::Merge {
                        delta: delta.clone(),
                        mode: MergeMode::Upsert,
                    };
                    let purpose = Purpose::Hint {
                        delta,
                        enqueued_at_ms: hint.enqueued_at_ms,
                    };
                    self.send(coord, replica, purpose, key, body);
                }
            }
        }
        if coord == 0 {
            self.maybe_start_anti_entropy();
        }
        self.schedule(self.config.tick_ms * 1000, Event::Tick { coord });
    }

    pub(super) fn on_anti_entropy_timer(&mut self) {
        if self.phase == Phase::Faults {
            self.anti_entropy_due = true;
            self.schedule(
                self.config.anti_entropy.interval_ms * 1000,
                Event::AntiEntropyTimer,
            );
        }
    }

    /// Anti-entropy sees a replica while it is up and linked to coordinator 0.
    fn anti_entropy_sees(&self, replica: usize) -> Option<Epoch> {
        let reachable =
            !self.replicas[replica].crashed && self.partitions[self.link(0, replica)] == 0;
        reachable.then_some(self.replicas[replica].epoch)
    }

    fn maybe_start_anti_entropy(&mut self) {
        if !self.config.switches.anti_entropy
            || self.anti_entropy.is_some()
            || !self.anti_entropy_due
        {
            return;
        }
        let epochs: Vec<Option<Epoch>> = (0..self.replicas.len())
            .map(|replica| self.anti_entropy_sees(replica))
            .collect();
        if epochs.iter().flatten().count() < 2 {
            return; // nothing to compare yet; stays due
        }
        self.anti_entropy_due = false;
        let flags = (0..self.coords.len())
            .flat_map(|c| (0..self.replicas.len()).map(move |r| (c, r)))
            .filter(|&(c, r)| self.coords[c].hints.needs_anti_entropy(r))
            .collect();
        let pass = AntiEntropyPass::new(&epochs, self.config.write_quorum());
        self.stats.anti_entropy_passes += 1;
        self.trace(None, || {
            format!("anti-entropy pass starts over {:?}", pass.participants())
        });
        self.anti_entropy = Some(AntiEntropyRun { pass, flags });
        self.schedule(
            self.config.anti_entropy.page_cost_us,
            Event::AntiEntropyStep,
        );
    }

    /// One page of the running pass.
    pub(super) fn on_anti_entropy_step(&mut self) {
        let Some(mut run) = self.anti_entropy.take() else {
            return;
        };
        if matches!(self.phase, Phase::Audit | Phase::Done) {
            return; // converged: the pass is abandoned
        }
        for replica in 0..self.replicas.len() {
            if run.pass.is_participant(replica) {
                let seen = self.anti_entropy_sees(replica);
                run.pass.on_replica(replica, seen);
            }
        }
        let Some((scanned, cursor)) = run.pass.next_scan().map(|(r, c)| (r, c.to_owned())) else {
            self.finish_anti_entropy(run);
            return;
        };
        let page_keys = self.config.anti_entropy.page_keys;
        let records = &self.replicas[scanned].records;
        let after =
            (cursor != "0").then(|| SessionKey::parse(&cursor).expect("cursors are session keys"));
        let page: Vec<SessionKey> = records.keys_after(after).take(page_keys).collect();
        let next_cursor = (page.len() == page_keys)
            .then(|| page.last().map(SessionKey::to_string))
            .flatten();
        let participants = run.pass.participants();
        let replica_ms = self.replica_ms();
        let margin = self.config.ttl_margin_ms;
        let now_ms = self.wall_ms(0);
        for &key in &page {
            let compared_earlier = participants.iter().any(|&p| {
                run.pass.scanned_earlier(p)
                    && self.replicas[p].live(key, replica_ms, margin).is_some()
            });
            if compared_earlier {
                continue;
            }
            let repair = {
                let copies: Vec<(usize, Option<&Record>)> = participants
                    .iter()
                    .map(|&p| (p, self.replicas[p].live(key, replica_ms, margin)))
                    .collect();
                run.pass.compare_key(&copies, now_ms)
            };
            let Some(repair) = repair else { continue };
            for &target in &repair.targets {
                let replica = &mut self.replicas[target];
                replica.expire(key, replica_ms, margin);
                let (_, merged) = apply_merge(
                    replica.records.get(key),
                    &repair.merged,
                    MergeMode::Upsert,
                    now_ms,
                );
                if let Some(merged) = merged {
                    replica.records.insert(key, merged);
                    self.mutations += 1;
                }
            }
            if self.trace.is_some() {
                let key = key.to_string();
                self.trace(Some(&key), || {
                    format!("anti-entropy repairs {key} on {:?}", repair.targets)
                });
            }
        }
        run.pass.on_page(scanned, next_cursor);
        self.anti_entropy = Some(run);
        self.schedule(
            self.config.anti_entropy.page_cost_us,
            Event::AntiEntropyStep,
        );
    }

    fn finish_anti_entropy(&mut self, run: AntiEntropyRun) {
        let outcome = run.pass.finish();
        for &(replica, epoch_id) in &outcome.mark_complete {
            // `mark_epoch_complete`: only if the replica is still in that epoch.
            if self.replicas[replica].epoch.id == epoch_id
                && self.anti_entropy_sees(replica).is_some()
            {
                self.replicas[replica].epoch.complete = true;
                self.coords[0].epochs.mark_complete(replica, epoch_id);
                self.stats.epochs_refilled += 1;
                self.trace(None, || {
                    format!("r{replica} refilled: epoch {epoch_id:x} marked complete")
                });
            }
        }
        for (coord, replica) in run.flags {
            if outcome.covered.contains(&replica) {
                self.coords[coord].hints.clear_anti_entropy(replica);
            }
        }
        self.stats.anti_entropy_keys_repaired += outcome.stats.keys_repaired;
        self.stats.anti_entropy_records_sent += outcome.stats.records_sent;
        self.trace(None, || {
            format!(
                "anti-entropy pass done: {} keys compared, {} repaired, {} complete sources of {} needed",
                outcome.stats.keys_compared,
                outcome.stats.keys_repaired,
                outcome.complete_sources,
                outcome.sources_needed
            )
        });
        let incomplete = self.replicas.iter().any(|r| !r.epoch.complete);
        if self.phase == Phase::Quiesce && (outcome.stats.keys_repaired > 0 || incomplete) {
            self.anti_entropy_due = true;
        }
    }

    /// Every fault ends; the workload has stopped issuing operations.
    pub(super) fn on_heal(&mut self) {
        self.phase = Phase::Quiesce;
        self.heal_at = Some(self.now);
        self.end_all_faults();
        self.anti_entropy_due = true;
        self.trace(None, || {
            "heal: every fault ends, the workload stops".to_owned()
        });
        self.schedule(QUIESCE_CHECK_US, Event::QuiesceCheck);
    }

    /// The latest clock any coordinator may read: copies expired by it are
    /// treated as absent when comparing replicas.
    fn expired_before_ms(&self) -> u64 {
        let faults = &self.config.faults;
        self.replica_ms() + faults.skew_base_max_ms + faults.skew_jump_max_ms
    }

    fn converged(&mut self) -> bool {
        if !self.ops.is_empty() || self.coords.iter().any(|c| c.hints.total_len() > 0) {
            return false;
        }
        let refilling = self.replicas.iter().any(|r| !r.epoch.complete);
        if self.config.switches.anti_entropy && (self.anti_entropy.is_some() || refilling) {
            return false; // a pass still running may still repair
        }
        if self.diverged_at_mutations == Some(self.mutations) {
            return false; // nothing changed since the last full comparison
        }
        let maps: Vec<_> = self.replicas.iter().map(|r| &r.records).collect();
        let diverged = diverged_keys(
            &maps,
            self.replica_ms(),
            self.config.ttl_margin_ms,
            self.expired_before_ms(),
        );
        if diverged.is_empty() {
            return true;
        }
        self.diverged_at_mutations = Some(self.mutations);
        false
    }

    pub(super) fn on_quiesce_check(&mut self) {
        if self.phase != Phase::Quiesce {
            return;
        }
        let heal_at = self.heal_at.expect("quiesce follows the heal");
        if self.converged() {
            self.converged_at = Some(self.now);
            let after = (self.now - heal_at) / 1000;
            self.trace(None, || format!("converged {after} ms after the heal"));
            self.start_audit();
        } else if self.now - heal_at >= self.config.quiesce_bound_ms * 1000 {
            self.trace(None, || "not converged within the bound".to_owned());
            self.start_audit();
        } else {
            // Everything is quiet but the replicas still differ (a hint
            // replayed after the last pass, say): run another pass.
            let quiet = self.ops.is_empty() && self.coords.iter().all(|c| c.hints.total_len() == 0);
            if quiet && self.anti_entropy.is_none() {
                self.anti_entropy_due = true;
            }
            self.schedule(QUIESCE_CHECK_US, Event::QuiesceCheck);
        }
    }

    fn start_audit(&mut self) {
        if !self.config.audit_reads {
            self.finish_run();
            return;
        }
        self.phase = Phase::Audit;
        self.maybe_continue_audit();
    }

    /// Keeps up to `AUDIT_CONCURRENCY` audit reads going, one per created
    /// session; ends the run after the last one.
    pub(super) fn maybe_continue_audit(&mut self) {
        if self.phase != Phase::Audit || self.in_audit_loop {
            return;
        }
        self.in_audit_loop = true;
        let sessions = self.workload.sessions.len();
        while self.audit_in_flight < AUDIT_CONCURRENCY && self.audit_next < sessions {
            let session = self.audit_next;
            self.audit_next += 1;
            if self.workload.sessions[session].created {
                let coord = session % self.coords.len();
                self.issue_read(coord, session as u32, true);
            }
        }
        self.in_audit_loop = false;
        if self.audit_in_flight == 0 && self.audit_next >= sessions {
            self.finish_run();
        }
    }

    fn finish_run(&mut self) {
        let maps: Vec<_> = self.replicas.iter().map(|r| &r.records).collect();
        let replica_ms = self.replica_ms();
        let expired_before = self.expired_before_ms();
        self.checker
            .final_check(&maps, replica_ms, self.config.ttl_margin_ms, expired_before);
        self.phase = Phase::Done;
    }
}
