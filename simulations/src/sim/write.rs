//! The write path (DESIGN §4): stamp with the coordinator's HLC, fan out to
//! every replica not known Down, tally with the core's `WriteTally`, answer
//! the client at W acknowledgements, let the others finish, and leave a hint
//! for every replica that failed or was skipped.

use std::rc::Rc;

use quorum_sessions::core::quorum::{WriteOutcome, WriteReply, WriteTally};
use quorum_sessions::replica::{MergeMode, MergeStatus};
use quorum_sessions::{FieldEntry, Record};

use super::{Op, Phase, Purpose, RequestBody, World, WriteOp};
use crate::checker::{WriteInfo, WriteKind, WriteResult};
use crate::workload::{ClientOp, FieldSet, SessionIndex, CREATE_FIELDS, FIELD_NAMES};

impl World {
    /// Starts one client operation on coordinator `coord`.
    pub(super) fn issue_client_op(&mut self, coord: usize, op: ClientOp) {
        match op {
            ClientOp::Create => {
                let now_ms = self.wall_ms(coord);
                let session = self.workload.register(&mut self.rng, now_ms);
                let info = self.workload.session(session);
                let (key, cap) = (info.key.clone(), info.cap_ms);
                self.checker.register_session(session, &key, cap);
                self.issue_write(
                    coord,
                    session,
                    WriteKind::Create,
                    FieldSet::of(&CREATE_FIELDS),
                );
            }
            ClientOp::Read(session) => self.issue_read(coord, session, false),
            ClientOp::Update(session, fields) => {
                self.issue_write(coord, session, WriteKind::Update, fields)
            }
            ClientOp::Touch(session) => {
                self.issue_write(coord, session, WriteKind::Touch, FieldSet::default())
            }
            ClientOp::RemoveField(session, field) => {
                self.issue_write(
                    coord,
                    session,
                    WriteKind::RemoveField,
                    FieldSet::of(&[field]),
                );
            }
            ClientOp::Delete(session) => {
                self.workload.on_delete_issued(&mut self.rng, session);
                self.issue_write(coord, session, WriteKind::Delete, FieldSet::default());
            }
        }
    }

    /// Builds the delta a write carries. Every mutation carries the expiry and
    /// the cap, so no copy is ever left without an expiry.
    fn build_delta(
        &mut self,
        coord: usize,
        session: SessionIndex,
        kind: WriteKind,
        fields: FieldSet,
    ) -> (WriteInfo, Record) {
        let now_ms = self.wall_ms(coord);
        let stamp = self.coords[coord].hlc.tick(now_ms);
        let info = self.workload.session(session);
        let cap = info.cap_ms;
        let expiry = if kind == WriteKind::Delete {
            cap
        } else {
            now_ms + info.ttl_ms
        };
        let mut delta = Record::new(expiry, cap);
        match kind {
            WriteKind::Create => delta.origin = Some(stamp),
            WriteKind::Delete => delta.tombstone = Some(stamp),
            _ => delta.partial = true,
        }
        for field in fields.iter() {
            let entry = if kind == WriteKind::RemoveField {
                FieldEntry::removed(stamp)
            } else {
                // Unique values: the n-th value written is n's bytes.
                self.next_value += 1;
                FieldEntry::value(stamp, self.next_value.to_be_bytes().to_vec())
            };
            delta
                .fields
                .insert(FIELD_NAMES[field as usize].to_owned(), entry);
        }
        let write = WriteInfo {
            session,
            kind,
            stamp,
            fields,
            expiry_ms: expiry,
        };
        (write, delta)
    }

    fn issue_write(
        &mut self,
        coord: usize,
        session: SessionIndex,
        kind: WriteKind,
        fields: FieldSet,
    ) {
        let (info, delta) = self.build_delta(coord, session, kind, fields);
        self.checker.write_invoked(&info);
        let key = self.workload.session(session).key.clone();
        let removal = kind == WriteKind::Delete && !self.config.switches.tombstones;
        let delta = (!removal).then(|| Rc::new(delta));
        let mode = if kind == WriteKind::Create {
            MergeMode::Create
        } else {
            MergeMode::Upsert
        };
        let n = self.replicas.len();
        let op = self.ops.insert(Op::Write(WriteOp {
            coord,
            session,
            key: key.clone(),
            delta: delta.clone(),
            info,
            tally: WriteTally::new(self.config.write_quorum(), n),
            answered: false,
            acked: false,
            outstanding: 0,
            invoked_at: self.now,
        }));
        self.trace(Some(&key), || {
            format!("c{coord} {kind:?} {key} fields {fields:?}")
        });
        for replica in 0..n {
            if self.coords[coord].health.is_down(replica) {
                // Known down: skipped at once, no timeout paid; a hint instead.
                self.trace(Some(&key), || format!("c{coord} skips r{replica} (down)"));
                self.on_write_reply(op, replica, None);
                continue;
            }
            let body = match &delta {
                Some(delta) => RequestBody::Merge {
                    delta: delta.clone(),
                    mode,
                },
                None => RequestBody::Remove,
            };
            self.with_write(op, |write| write.outstanding += 1);
            self.send(coord, replica, Purpose::Write(op), key.clone(), body);
        }
        self.release_if_done(op);
    }

    fn with_write<T>(&mut self, op: super::OpId, f: impl FnOnce(&mut WriteOp) -> T) -> T {
        match self.ops.get_mut(op) {
            Some(Op::Write(write)) => f(write),
            _ => panic!("write {op:?} is gone"),
        }
    }

    /// A replica answered the write (`Some(status)`), or it failed, timed
    /// out or was skipped (`None`).
    pub(super) fn on_write_reply(
        &mut self,
        op: super::OpId,
        replica: usize,
        status: Option<MergeStatus>,
    ) {
        let hints_on = self.config.switches.hints;
        let Some(Op::Write(write)) = self.ops.get_mut(op) else {
            panic!("a reply for a write that is gone");
        };
        let reply = match status {
            Some(MergeStatus::Applied) => WriteReply::Applied,
            Some(MergeStatus::Gone) => WriteReply::Gone,
            Some(MergeStatus::Exists) => WriteReply::Exists,
            None => WriteReply::Failed,
        };
        let outcome = write.tally.record(replica, reply);
        // A failed or skipped replica gets a hint; so does one that refused a
        // create the quorum already acknowledged as ours (a field update got
        // there first and left a partial record without origin).
        let late_create = reply == WriteReply::Exists && write.acked;
        let hint = (reply == WriteReply::Failed || late_create)
            .then(|| write.delta.clone())
            .flatten()
            .filter(|_| hints_on);
        let key = write.key.clone();
        let coord = write.coord;
        if late_create {
            self.stats.late_create_refusals += 1;
        }
        if let Some(delta) = hint {
            let now_ms = self.wall_ms(coord);
            self.coords[coord].hints.push(replica, &key, &delta, now_ms);
            self.stats.hints_queued += 1;
        }
        let answered = self.with_write(op, |write| write.answered);
        if !answered && outcome != WriteOutcome::Pending {
            self.answer_write(op, outcome);
        }
    }

    /// Records one request of the write as settled and frees the write when
    /// every request has settled.
    pub(super) fn settle_write_request(&mut self, op: super::OpId) {
        self.with_write(op, |write| {
            assert!(write.outstanding > 0, "settled more requests than sent");
            write.outstanding -= 1;
        });
        self.release_if_done(op);
    }

    /// The client gets its answer.
    fn answer_write(&mut self, op: super::OpId, outcome: WriteOutcome) {
        let now = self.now;
        let Some(Op::Write(write)) = self.ops.get_mut(op) else {
            unreachable!("answering a live write");
        };
        write.answered = true;
        let result = match outcome {
            WriteOutcome::Reached => WriteResult::Acked,
            WriteOutcome::Gone => WriteResult::Gone,
            WriteOutcome::Collision => WriteResult::Collision,
            WriteOutcome::Failed => WriteResult::Failed,
            WriteOutcome::Pending => unreachable!("answered only when decided"),
        };
        write.acked = result == WriteResult::Acked;
        let latency_us = now - write.invoked_at;
        let (session, kind, key, coord) = (
            write.session,
            write.info.kind,
            write.key.clone(),
            write.coord,
        );
        self.checker.write_completed(&write.info, result);
        self.stats
            .record_write(result, latency_us, self.phase == Phase::Faults);
        if kind == WriteKind::Create && result == WriteResult::Acked {
            self.workload.on_created(session);
        }
        self.trace(Some(&key), || {
            format!("c{coord} {kind:?} {key} answered {result:?} after {latency_us} us")
        });
    }
}
