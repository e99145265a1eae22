//! The history checker. It reads only what clients saw — each operation's
//! invocation and completion (virtual true time), the stamps and values of
//! the writes they issued, the records reads returned, the reading
//! coordinator's clock — plus the replicas' final states, and counts:
//!
//! - **lost writes**: an acknowledged write whose effect is in no replica's
//!   final state. Fields are last-writer-wins, so an acknowledged write
//!   overwritten by one with a larger stamp is *not* lost: the final state
//!   must hold, per field the write touched, a stamp at least the write's (and
//!   an expiry at least a touch's). Sessions that were deleted, or that may
//!   have expired by the end, are not judged.
//! - **stale reads**: a read that *began* after a write to a field was
//!   acknowledged and returned an older stamp for that field, or no field, or
//!   "not found" / "expired" for a session whose create was acknowledged,
//!   that no delete was issued for, and whose acknowledged expiry is still
//!   ahead of the reading coordinator's clock. "Older" is the stamp order —
//!   the order the merge itself uses — so clock skew within the limit makes
//!   a later write lose to an earlier one but never makes a read stale.
//! - **non-monotonic reads**: a read that *began* after another read of the
//!   same session *completed* and returned, for a field, an older stamp than
//!   that read returned (stamp order again), or — unless a delete was issued
//!   for the session — no field, or "not found" while the reading
//!   coordinator's clock is still before the effective expiry the earlier
//!   read returned (so the session cannot have expired since). Unlike a
//!   stale read, the value need not have been acknowledged: a write that
//!   reached one replica and failed, once a read returned it, must not
//!   vanish from later reads (DESIGN §5, blocking read-repair). Judged only
//!   when read-repair is blocking: the library promises monotonic reads
//!   with nothing else (`ReadRepair::Background` and `Off` say so).
//! - **hidden writes**: an acknowledged write stamped below a write to the
//!   same field that was acknowledged before it began. Last-writer-wins
//!   keeps the larger stamp, so the later write is invisible for good
//!   unless something overwrites the field: acknowledgement order and stamp
//!   order must agree (clock skew alone breaks that unless the coordinator
//!   re-stamps above what its ackers held).
//! - **resurrections**: a read that began after a delete was acknowledged and
//!   returned the session as present.
//! - **expired sessions served**: a read returned the session while the
//!   reading coordinator's clock was past the session's cap or past the
//!   largest expiry any write ever issued (acknowledged or not) could have
//!   set.
//! - **diverged keys**: after heal and quiesce, keys whose live copies differ
//!   between replicas (a copy past its expiry counts as absent: Redis drops
//!   it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quorum_sessions::core::read::{Absence, ReadResult};
use quorum_sessions::{Record, Stamp};

use crate::workload::{FieldSet, SessionIndex, SessionKey, FIELD_NAMES};

const FIELD_COUNT: usize = FIELD_NAMES.len();
/// Violation examples kept for the report.
pub const EXAMPLES_MAX: usize = 12;

/// Violation counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Violations {
    /// Acknowledged writes missing from every final state.
    pub lost_writes: u64,
    /// Reads older than a write acknowledged before they began.
    pub stale_reads: u64,
    /// Reads older than what a read completed before they began returned.
    pub non_monotonic_reads: u64,
    /// Acknowledged writes stamped below a write acknowledged before they
    /// began (hidden by it for good).
    pub hidden_writes: u64,
    /// Deleted sessions read as present after the delete was acknowledged.
    pub resurrections: u64,
    /// Expired sessions returned to a client.
    pub expired_served: u64,
    /// Keys whose replicas still differ after heal and quiesce.
    pub diverged_keys: u64,
}

impl Violations {
    /// The name of the first count larger than in `earlier` (the trace marks
    /// the operation that made the checker count it).
    pub fn grown_since(&self, earlier: &Violations) -> Option<&'static str> {
        [
            (self.lost_writes, earlier.lost_writes, "lost write"),
            (self.stale_reads, earlier.stale_reads, "stale read"),
            (
                self.non_monotonic_reads,
                earlier.non_monotonic_reads,
                "non-monotonic read",
            ),
            (self.hidden_writes, earlier.hidden_writes, "hidden write"),
            (self.resurrections, earlier.resurrections, "resurrection"),
            (
                self.expired_served,
                earlier.expired_served,
                "expired served",
            ),
            (self.diverged_keys, earlier.diverged_keys, "diverged key"),
        ]
        .into_iter()
        .find(|(now, before, _)| now > before)
        .map(|(_, _, name)| name)
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.lost_writes
            + self.stale_reads
            + self.non_monotonic_reads
            + self.hidden_writes
            + self.resurrections
            + self.expired_served
            + self.diverged_keys
    }
}

/// What a write did to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A conditional create with the first fields.
    Create,
    /// Fields written.
    Update,
    /// Expiry extended.
    Touch,
    /// A field removed (field tombstone).
    RemoveField,
    /// Session deleted.
    Delete,
}

/// The key type of a replica's map of records, as the final check names a
/// session in it.
pub trait StoreKey: Ord + std::fmt::Display {
    /// The key of `session`, registered under the key string `key`.
    fn of_session(session: SessionIndex, key: &str) -> Self;
}

impl StoreKey for String {
    fn of_session(_: SessionIndex, key: &str) -> String {
        key.to_owned()
    }
}

impl StoreKey for SessionKey {
    fn of_session(session: SessionIndex, _: &str) -> SessionKey {
        SessionKey(session)
    }
}

/// A replica's final records, as the checker reads them.
pub trait RecordMap {
    /// How the map names a session.
    type Key: StoreKey + Clone;

    /// The copy under `key`.
    fn copy(&self, key: &Self::Key) -> Option<&Record>;

    /// Every copy, in key order.
    fn copies(&self) -> Box<dyn Iterator<Item = (Self::Key, &Record)> + '_>;
}

impl<K: StoreKey + Clone> RecordMap for BTreeMap<K, Record> {
    type Key = K;

    fn copy(&self, key: &K) -> Option<&Record> {
        self.get(key)
    }

    fn copies(&self) -> Box<dyn Iterator<Item = (K, &Record)> + '_> {
        Box::new(self.iter().map(|(key, record)| (key.clone(), record)))
    }
}

/// One write, as its client issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteInfo {
    /// The session.
    pub session: SessionIndex,
    /// What it does.
    pub kind: WriteKind,
    /// Its stamp (every field it writes carries it).
    pub stamp: Stamp,
    /// Fields it writes or removes.
    pub fields: FieldSet,
    /// The expiry it carries.
    pub expiry_ms: u64,
}

/// How a write ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// W replicas acknowledged.
    Acked,
    /// The session was deleted.
    Gone,
    /// A conditional create met another record.
    Collision,
    /// W could not be reached (the write may still surface).
    Failed,
}

#[derive(Clone, Debug)]
struct AckedWrite {
    kind: WriteKind,
    stamp: Stamp,
    fields: FieldSet,
    expiry_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct SessionHistory {
    key: String,
    cap_ms: u64,
    create_acked: bool,
    delete_issued: bool,
    delete_acked: bool,
    acked_field_max: [Option<Stamp>; FIELD_COUNT],
    acked_expiry_max: u64,
    issued_expiry_max: u64,
    acked_writes: Vec<AckedWrite>,
    /// Per field, the largest stamp a completed read returned.
    read_field_max: [Option<Stamp>; FIELD_COUNT],
    /// The largest effective expiry a completed read returned (0: no read
    /// found the session yet).
    read_expiry_max: u64,
}

/// What a read must show, fixed when it began.
#[derive(Clone, Debug)]
pub struct ReadToken {
    session: SessionIndex,
    began_us: u64,
    clock_ms: u64,
    create_acked: bool,
    delete_acked: bool,
    acked_field_max: [Option<Stamp>; FIELD_COUNT],
    acked_expiry_max: u64,
    read_field_max: [Option<Stamp>; FIELD_COUNT],
    read_expiry_max: u64,
}

/// What a write must be stamped above, fixed when it began: per field, the
/// largest stamp acknowledged before.
#[derive(Clone, Debug)]
pub struct WriteToken {
    floor: [Option<Stamp>; FIELD_COUNT],
}

/// The checker. Feed it every invocation and completion, then the final
/// replica states.
#[derive(Debug, Default)]
pub struct Checker {
    sessions: Vec<SessionHistory>,
    violations: Violations,
    examples: Vec<String>,
    reads_checked: u64,
    /// Keys the final check found wanting (diverged, lost writes): the first
    /// [`EXAMPLES_MAX`] of each.
    final_flagged: Vec<String>,
    /// Reads are not judged for monotonicity (read-repair is not blocking).
    monotonic_not_promised: bool,
}

impl Checker {
    /// An empty history.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Whether reads are judged for monotonicity.
    pub fn judges_monotonic_reads(&self) -> bool {
        !self.monotonic_not_promised
    }

    /// An empty history for a cluster whose read-repair is not blocking:
    /// monotonic reads are not promised there, so not judged.
    pub fn without_monotonic_reads() -> Checker {
        Checker {
            monotonic_not_promised: true,
            ..Checker::default()
        }
    }

    /// A session id was handed out (before its create is sent).
    pub fn register_session(&mut self, session: SessionIndex, key: &str, cap_ms: u64) {
        assert_eq!(
            session as usize,
            self.sessions.len(),
            "sessions register in order"
        );
        self.sessions.push(SessionHistory {
            key: key.to_owned(),
            cap_ms,
            ..SessionHistory::default()
        });
    }

    /// A write was sent.
    pub fn write_invoked(&mut self, write: &WriteInfo) -> WriteToken {
        let history = &mut self.sessions[write.session as usize];
        history.issued_expiry_max = history.issued_expiry_max.max(write.expiry_ms);
        if write.kind == WriteKind::Delete {
            history.delete_issued = true;
        }
        WriteToken {
            floor: history.acked_field_max,
        }
    }

    /// A write completed (its client got the answer); an acknowledged one
    /// carries the stamp it was acknowledged with.
    pub fn write_completed(&mut self, write: &WriteInfo, token: &WriteToken, result: WriteResult) {
        if result != WriteResult::Acked {
            return;
        }
        let history = &mut self.sessions[write.session as usize];
        let hidden_by = write.fields.iter().find_map(|f| {
            token.floor[f as usize]
                .filter(|&floor| floor > write.stamp)
                .map(|floor| (f, floor))
        });
        if let Some((field, floor)) = hidden_by {
            self.violations.hidden_writes += 1;
            let note = format!(
                "hidden write: {:?} of {} acknowledged at {} on field {}, below {} acknowledged before it began",
                write.kind, history.key, write.stamp, FIELD_NAMES[field as usize], floor
            );
            push_example(&mut self.examples, note);
        }
        match write.kind {
            WriteKind::Create => history.create_acked = true,
            WriteKind::Delete => history.delete_acked = true,
            _ => {}
        }
        if write.kind != WriteKind::Delete {
            history.acked_expiry_max = history.acked_expiry_max.max(write.expiry_ms);
            for field in write.fields.iter() {
                let slot = &mut history.acked_field_max[field as usize];
                *slot = (*slot).max(Some(write.stamp));
            }
        }
        history.acked_writes.push(AckedWrite {
            kind: write.kind,
            stamp: write.stamp,
            fields: write.fields,
            expiry_ms: write.expiry_ms,
        });
    }

    /// A read began at true time `began_us`, on a coordinator whose clock
    /// read `clock_ms`.
    pub fn read_invoked(&self, session: SessionIndex, began_us: u64, clock_ms: u64) -> ReadToken {
        let history = &self.sessions[session as usize];
        ReadToken {
            session,
            began_us,
            clock_ms,
            create_acked: history.create_acked,
            delete_acked: history.delete_acked,
            acked_field_max: history.acked_field_max,
            acked_expiry_max: history.acked_expiry_max,
            read_field_max: history.read_field_max,
            read_expiry_max: history.read_expiry_max,
        }
    }

    /// A read completed with `result`.
    pub fn read_completed(&mut self, token: &ReadToken, result: &ReadResult) {
        self.reads_checked += 1;
        self.judge_monotonic(token, result);
        let history = &self.sessions[token.session as usize];
        let alive_by_ack = token.create_acked
            && !history.delete_issued
            && token.acked_expiry_max.min(history.cap_ms) > token.clock_ms;
        let mut stale: Option<String> = None;
        match result {
            ReadResult::Found(record) => {
                if token.delete_acked {
                    self.violations.resurrections += 1;
                    let note = format!(
                        "resurrection: {} read as present at {} after its delete was acknowledged",
                        history.key,
                        micros(token.began_us)
                    );
                    push_example(&mut self.examples, note);
                    return;
                }
                let expiry_bound = history.issued_expiry_max.min(history.cap_ms);
                if token.clock_ms >= expiry_bound {
                    self.violations.expired_served += 1;
                    let note = format!(
                        "expired served: {} returned at clock {} ms, past every expiry it could have ({} ms)",
                        history.key, token.clock_ms, expiry_bound
                    );
                    push_example(&mut self.examples, note);
                }
                let stamps = field_stamps(record);
                for (field, required) in token.acked_field_max.iter().enumerate() {
                    let Some(required) = required else { continue };
                    let seen = stamps[field];
                    if seen < Some(*required) {
                        stale = Some(format!(
                            "field {} has {} but {} was acknowledged before the read",
                            FIELD_NAMES[field],
                            seen.map_or("nothing".to_owned(), |s| s.to_string()),
                            required
                        ));
                        break;
                    }
                }
            }
            ReadResult::NotFound(Absence::Deleted) => {
                if !history.delete_issued {
                    stale = Some("deleted, but no delete was ever issued".to_owned());
                }
            }
            ReadResult::NotFound(absence) => {
                if alive_by_ack {
                    stale = Some(format!(
                        "{absence:?}, but its create and an expiry of {} ms were acknowledged (clock {} ms)",
                        token.acked_expiry_max.min(history.cap_ms),
                        token.clock_ms
                    ));
                }
            }
            ReadResult::Unavailable { .. } => {}
        }
        if let Some(why) = stale {
            self.violations.stale_reads += 1;
            let note = format!(
                "stale read of {} begun at {}: {why}",
                history.key,
                micros(token.began_us)
            );
            push_example(&mut self.examples, note);
        }
    }

    /// The non-monotonic read rule (see the module docs), then what `result`
    /// shows later reads: its stamps and expiry become their floor.
    fn judge_monotonic(&mut self, token: &ReadToken, result: &ReadResult) {
        if self.monotonic_not_promised {
            return;
        }
        let history = &mut self.sessions[token.session as usize];
        let may_vanish = history.delete_issued;
        let regress: Option<String> = match result {
            ReadResult::Found(record) => {
                let stamps = field_stamps(record);
                token
                    .read_field_max
                    .iter()
                    .zip(stamps)
                    .enumerate()
                    .find_map(|(field, (floor, seen))| {
                        let floor = (*floor)?;
                        let older = match seen {
                            Some(seen) => seen < floor,
                            None => !may_vanish,
                        };
                        older.then(|| {
                            format!(
                                "field {} has {} but {} was returned by a read completed before",
                                FIELD_NAMES[field],
                                seen.map_or("nothing".to_owned(), |s| s.to_string()),
                                floor
                            )
                        })
                    })
            }
            ReadResult::NotFound(absence)
                if !may_vanish && token.clock_ms < token.read_expiry_max =>
            {
                Some(format!(
                    "{absence:?}, but a read completed before returned it with an effective expiry of {} ms (clock {} ms)",
                    token.read_expiry_max, token.clock_ms
                ))
            }
            ReadResult::NotFound(_) | ReadResult::Unavailable { .. } => None,
        };
        if let ReadResult::Found(record) = result {
            for (slot, seen) in history.read_field_max.iter_mut().zip(field_stamps(record)) {
                *slot = (*slot).max(seen);
            }
            history.read_expiry_max = history.read_expiry_max.max(record.effective_expiry_ms());
        }
        if let Some(why) = regress {
            self.violations.non_monotonic_reads += 1;
            let note = format!(
                "non-monotonic read of {} begun at {}: {why}",
                history.key,
                micros(token.began_us)
            );
            push_example(&mut self.examples, note);
        }
    }

    /// Judges the final states: lost writes and diverged keys. `replica_ms`
    /// is the replicas' clock (keys expire at effective expiry + `margin_ms`
    /// on it); `expired_before_ms` is the latest clock any coordinator may
    /// read: copies whose effective expiry is not after it count as absent.
    pub fn final_check<M: RecordMap>(
        &mut self,
        replicas: &[&M],
        replica_ms: u64,
        margin_ms: u64,
        expired_before_ms: u64,
    ) {
        let live =
            |record: &Record| record.effective_expiry_ms().saturating_add(margin_ms) > replica_ms;
        let diverged = diverged_keys(replicas, replica_ms, margin_ms, expired_before_ms);
        self.violations.diverged_keys += diverged.len() as u64;
        for key in diverged.iter().take(3) {
            self.example(format!("diverged after quiesce: {key}"));
        }
        self.final_flagged
            .extend(diverged.iter().take(EXAMPLES_MAX).cloned());
        let mut notes = Vec::new();
        let mut lost_keys = 0;
        for (session, history) in self.sessions.iter().enumerate() {
            if history.acked_writes.is_empty() || history.delete_issued {
                continue;
            }
            if history.acked_expiry_max.min(history.cap_ms) <= expired_before_ms {
                continue; // may have expired: absence proves nothing
            }
            let key = M::Key::of_session(session as SessionIndex, &history.key);
            let mut merged: Option<Record> = None;
            for replica in replicas {
                if let Some(copy) = replica.copy(&key).filter(|r| live(r)) {
                    match &mut merged {
                        Some(m) => m.merge_from(copy, replica_ms),
                        None => merged = Some(copy.clone()),
                    }
                }
            }
            for write in &history.acked_writes {
                if let Some(why) = lost_because(write, merged.as_ref()) {
                    self.violations.lost_writes += 1;
                    if lost_keys < EXAMPLES_MAX && !self.final_flagged.contains(&history.key) {
                        self.final_flagged.push(history.key.clone());
                        lost_keys += 1;
                    }
                    notes.push(format!(
                        "lost write: {:?} of {} at {}: {why}",
                        write.kind, history.key, write.stamp
                    ));
                }
            }
        }
        for note in notes {
            self.example(note);
        }
    }

    /// The counts so far.
    pub fn violations(&self) -> Violations {
        self.violations
    }

    /// The first violations, described.
    pub fn examples(&self) -> &[String] {
        &self.examples
    }

    /// Keys the final check found wanting (lost writes, diverged keys; the
    /// first few).
    pub fn final_flagged(&self) -> &[String] {
        &self.final_flagged
    }

    /// Reads judged.
    pub fn reads_checked(&self) -> u64 {
        self.reads_checked
    }

    fn example(&mut self, note: String) {
        push_example(&mut self.examples, note);
    }
}

/// Each known field's stamp in `record`, by index into [`FIELD_NAMES`]: one
/// walk over the record instead of one lookup per field.
fn field_stamps(record: &Record) -> [Option<Stamp>; FIELD_COUNT] {
    let mut stamps = [None; FIELD_COUNT];
    for (name, entry) in &record.fields {
        if let Some(index) = FIELD_NAMES.iter().position(|known| known == name) {
            stamps[index] = Some(entry.stamp);
        }
    }
    stamps
}

fn push_example(examples: &mut Vec<String>, note: String) {
    if examples.len() < EXAMPLES_MAX {
        examples.push(note);
    }
}

/// Why `write` is missing from `merged`, if it is.
fn lost_because(write: &AckedWrite, merged: Option<&Record>) -> Option<String> {
    let Some(merged) = merged else {
        return Some("no replica holds the session".to_owned());
    };
    if merged.is_tombstone() {
        return Some("tombstoned without a delete".to_owned());
    }
    for field in write.fields.iter() {
        let seen = merged
            .fields
            .get(FIELD_NAMES[field as usize])
            .map(|e| e.stamp);
        if seen < Some(write.stamp) {
            let mut why = format!("field {} holds ", FIELD_NAMES[field as usize]);
            match seen {
                Some(stamp) => write!(why, "{stamp}").expect("to a String"),
                None => why.push_str("nothing"),
            }
            return Some(why);
        }
    }
    if write.kind == WriteKind::Touch && merged.expiry_ms < write.expiry_ms {
        return Some(format!("expiry {} < {}", merged.expiry_ms, write.expiry_ms));
    }
    None
}

/// Keys whose live, unexpired copies differ between replicas (a missing copy
/// differs from a present one). Walks the sorted maps side by side.
pub fn diverged_keys<M: RecordMap>(
    replicas: &[&M],
    replica_ms: u64,
    margin_ms: u64,
    expired_before_ms: u64,
) -> Vec<String> {
    diverged(replicas, replica_ms, margin_ms, expired_before_ms)
        .map(|key| key.to_string())
        .collect()
}

/// True when some key's live copies differ ([`diverged_keys`], stopping at
/// the first).
pub fn any_diverged<M: RecordMap>(
    replicas: &[&M],
    replica_ms: u64,
    margin_ms: u64,
    expired_before_ms: u64,
) -> bool {
    diverged(replicas, replica_ms, margin_ms, expired_before_ms)
        .next()
        .is_some()
}

fn diverged<'a, M: RecordMap>(
    replicas: &'a [&'a M],
    replica_ms: u64,
    margin_ms: u64,
    expired_before_ms: u64,
) -> impl Iterator<Item = M::Key> + 'a {
    let mut iterators: Vec<_> = replicas.iter().map(|r| r.copies().peekable()).collect();
    std::iter::from_fn(move || loop {
        let key = iterators
            .iter_mut()
            .filter_map(|it| it.peek().map(|(k, _)| k))
            .min()
            .cloned()?;
        let mut first: Option<Option<&Record>> = None;
        let mut differ = false;
        for iterator in &mut iterators {
            let copy = match iterator.peek() {
                Some((k, _)) if *k == key => iterator.next().map(|(_, r)| r),
                _ => None,
            };
            let copy = copy.filter(|r| {
                r.effective_expiry_ms().saturating_add(margin_ms) > replica_ms
                    && r.effective_expiry_ms() > expired_before_ms
            });
            match first {
                None => first = Some(copy),
                Some(seen) => differ |= seen != copy,
            }
        }
        if differ {
            return Some(key);
        }
    })
}

fn micros(us: u64) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorum_sessions::FieldEntry;

    const CAP: u64 = 1_000_000;

    fn stamp(physical: u64) -> Stamp {
        Stamp::new(physical, 0, 1)
    }

    fn write(kind: WriteKind, physical: u64, fields: &[u8]) -> WriteInfo {
        WriteInfo {
            session: 0,
            kind,
            stamp: stamp(physical),
            fields: FieldSet::of(fields),
            expiry_ms: 500_000,
        }
    }

    fn record(fields: &[(u8, u64)]) -> Record {
        let mut record = Record::new(500_000, CAP);
        for &(field, physical) in fields {
            record.fields.insert(
                FIELD_NAMES[field as usize].into(),
                FieldEntry::value(stamp(physical), "v"),
            );
        }
        record
    }

    /// A checker with session 0 created (acked) at stamp 10 with fields 0, 1.
    fn created() -> Checker {
        created_with(Checker::new())
    }

    fn created_with(mut checker: Checker) -> Checker {
        checker.register_session(0, "s:0", CAP);
        let create = write(WriteKind::Create, 10, &[0, 1]);
        let token = checker.write_invoked(&create);
        checker.write_completed(&create, &token, WriteResult::Acked);
        checker
    }

    #[test]
    fn read_table() {
        let found = |fields: &[(u8, u64)]| ReadResult::Found(record(fields));
        // (name, writes after the create (kind, stamp, fields, result), read
        //  began before the writes completed?, read result, clock, expected)
        type Case = (
            &'static str,
            Vec<(WriteKind, u64, Vec<u8>, WriteResult)>,
            bool,
            ReadResult,
            u64,
            Violations,
        );
        let stale = Violations {
            stale_reads: 1,
            ..Violations::default()
        };
        let ok = Violations::default();
        let cases: Vec<Case> = vec![
            (
                "fresh read",
                vec![],
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                ok,
            ),
            (
                "acked update missing",
                vec![(WriteKind::Update, 20, vec![2], WriteResult::Acked)],
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                stale,
            ),
            (
                "acked update, older stamp returned",
                vec![
                    (WriteKind::Update, 15, vec![2], WriteResult::Acked),
                    (WriteKind::Update, 20, vec![2], WriteResult::Acked),
                ],
                false,
                found(&[(0, 10), (1, 10), (2, 15)]),
                0,
                stale,
            ),
            (
                "overwritten by a larger stamp is fine",
                vec![(WriteKind::Update, 20, vec![2], WriteResult::Acked)],
                false,
                found(&[(0, 10), (1, 10), (2, 30)]),
                0,
                ok,
            ),
            (
                "concurrent write need not be seen",
                vec![(WriteKind::Update, 20, vec![2], WriteResult::Acked)],
                true,
                found(&[(0, 10), (1, 10)]),
                0,
                ok,
            ),
            (
                "failed write need not be seen",
                vec![(WriteKind::Update, 20, vec![2], WriteResult::Failed)],
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                ok,
            ),
            (
                "not found after an acked create",
                vec![],
                false,
                ReadResult::NotFound(Absence::Absent),
                0,
                stale,
            ),
            (
                "expired after an acked create is fine once the clock passed",
                vec![],
                false,
                ReadResult::NotFound(Absence::Expired),
                600_000,
                ok,
            ),
            (
                "resurrection",
                vec![(WriteKind::Delete, 20, vec![], WriteResult::Acked)],
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                Violations {
                    resurrections: 1,
                    ..Violations::default()
                },
            ),
            (
                "deleted after an acked delete",
                vec![(WriteKind::Delete, 20, vec![], WriteResult::Acked)],
                false,
                ReadResult::NotFound(Absence::Deleted),
                0,
                ok,
            ),
            (
                "deleted without any delete",
                vec![],
                false,
                ReadResult::NotFound(Absence::Deleted),
                0,
                stale,
            ),
            (
                "expired served",
                vec![],
                false,
                found(&[(0, 10), (1, 10)]),
                500_000,
                Violations {
                    expired_served: 1,
                    ..Violations::default()
                },
            ),
            (
                "unavailable is never a violation",
                vec![(WriteKind::Update, 20, vec![2], WriteResult::Acked)],
                false,
                ReadResult::Unavailable {
                    answered: 0,
                    needed: 2,
                },
                0,
                ok,
            ),
        ];
        for (name, writes, concurrent, result, clock, expected) in cases {
            let mut checker = created();
            let infos: Vec<(WriteInfo, WriteResult)> = writes
                .into_iter()
                .map(|(kind, physical, fields, result)| (write(kind, physical, &fields), result))
                .collect();
            let tokens: Vec<WriteToken> = infos
                .iter()
                .map(|(info, _)| checker.write_invoked(info))
                .collect();
            let early = checker.read_invoked(0, 1, clock);
            for ((info, result), token) in infos.iter().zip(&tokens) {
                checker.write_completed(info, token, *result);
            }
            let late = checker.read_invoked(0, 2, clock);
            let token = if concurrent { early } else { late };
            checker.read_completed(&token, &result);
            assert_eq!(checker.violations(), expected, "{name}");
        }
    }

    /// A read that began after another read completed must not return less
    /// than it did (values of unacknowledged writes included).
    #[test]
    fn monotonic_table() {
        let found = |fields: &[(u8, u64)]| ReadResult::Found(record(fields));
        let absent = ReadResult::NotFound(Absence::Absent);
        // (name, first read's result, second began before the first
        //  completed?, a delete issued?, second read's result, its clock,
        //  expected non-monotonic reads)
        type Case = (&'static str, ReadResult, bool, bool, ReadResult, u64, u64);
        let seen = found(&[(0, 10), (1, 10), (2, 20)]);
        let cases: Vec<Case> = vec![
            (
                "the same again",
                seen.clone(),
                false,
                false,
                seen.clone(),
                0,
                0,
            ),
            (
                "a newer stamp",
                seen.clone(),
                false,
                false,
                found(&[(0, 10), (1, 10), (2, 30)]),
                0,
                0,
            ),
            (
                "an older stamp",
                seen.clone(),
                false,
                false,
                found(&[(0, 10), (1, 10), (2, 15)]),
                0,
                1,
            ),
            (
                "a field vanished",
                seen.clone(),
                false,
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                1,
            ),
            (
                "a field vanished after a delete was issued",
                seen.clone(),
                false,
                true,
                found(&[(0, 10), (1, 10)]),
                0,
                0,
            ),
            (
                "an older stamp after a delete was issued",
                seen.clone(),
                false,
                true,
                found(&[(0, 10), (1, 10), (2, 15)]),
                0,
                1,
            ),
            (
                "concurrent reads may disagree",
                seen.clone(),
                true,
                false,
                found(&[(0, 10), (1, 10)]),
                0,
                0,
            ),
            (
                "not found after found",
                seen.clone(),
                false,
                false,
                absent.clone(),
                0,
                1,
            ),
            (
                "expired after found, before the expiry returned",
                seen.clone(),
                false,
                false,
                ReadResult::NotFound(Absence::Expired),
                499_999,
                1,
            ),
            (
                "not found once the clock passed the expiry returned",
                seen.clone(),
                false,
                false,
                absent.clone(),
                500_000,
                0,
            ),
            (
                "not found after a delete was issued",
                seen.clone(),
                false,
                true,
                absent.clone(),
                0,
                0,
            ),
            (
                "deleted after found",
                seen.clone(),
                false,
                true,
                ReadResult::NotFound(Absence::Deleted),
                0,
                0,
            ),
            (
                "unavailable is never a violation",
                seen.clone(),
                false,
                false,
                ReadResult::Unavailable {
                    answered: 1,
                    needed: 2,
                },
                0,
                0,
            ),
            (
                "an unavailable read sets no floor",
                ReadResult::Unavailable {
                    answered: 1,
                    needed: 2,
                },
                false,
                false,
                absent.clone(),
                0,
                0,
            ),
            (
                "a not-found read sets no floor",
                absent.clone(),
                false,
                false,
                found(&[(0, 10)]),
                0,
                0,
            ),
        ];
        for (name, first, concurrent, deleted, second, clock, expected) in cases {
            let mut checker = created();
            if deleted {
                checker.write_invoked(&write(WriteKind::Delete, 30, &[]));
            }
            let first_token = checker.read_invoked(0, 1, 0);
            let early = checker.read_invoked(0, 2, clock);
            checker.read_completed(&first_token, &first);
            let late = checker.read_invoked(0, 3, clock);
            let token = if concurrent { early } else { late };
            checker.read_completed(&token, &second);
            let violations = checker.violations();
            assert_eq!(violations.non_monotonic_reads, expected, "{name}");
        }
    }

    /// Without blocking read-repair no read is judged non-monotonic (the
    /// library does not promise it), and the other rules still apply.
    #[test]
    fn monotonic_reads_are_judged_only_when_promised() {
        let older = ReadResult::Found(record(&[(0, 10), (1, 10), (2, 15)]));
        let newer = ReadResult::Found(record(&[(0, 10), (1, 10), (2, 20)]));
        for (mut checker, expected) in [
            (created(), 1),
            (created_with(Checker::without_monotonic_reads()), 0),
        ] {
            let first = checker.read_invoked(0, 1, 0);
            checker.read_completed(&first, &newer);
            let second = checker.read_invoked(0, 2, 0);
            checker.read_completed(&second, &older);
            assert_eq!(checker.violations().non_monotonic_reads, expected);
            let third = checker.read_invoked(0, 3, 0);
            checker.read_completed(&third, &ReadResult::NotFound(Absence::Absent));
            assert_eq!(
                checker.violations().stale_reads,
                1,
                "a stale read still counts"
            );
        }
    }

    #[test]
    fn final_check_table() {
        // (name, writes after the create, final copies per replica, lost, diverged)
        type Case = (
            &'static str,
            Vec<(WriteKind, u64, Vec<u8>)>,
            Vec<Option<Record>>,
            u64,
            u64,
        );
        let full = record(&[(0, 10), (1, 10), (2, 20)]);
        let cases: Vec<Case> = vec![
            (
                "every write present, replicas agree",
                vec![(WriteKind::Update, 20, vec![2])],
                vec![Some(full.clone()), Some(full.clone())],
                0,
                0,
            ),
            (
                "a write missing everywhere is lost",
                vec![
                    (WriteKind::Update, 20, vec![2]),
                    (WriteKind::Update, 30, vec![3]),
                ],
                vec![Some(full.clone()), Some(full.clone())],
                1,
                0,
            ),
            (
                "present on one replica only: not lost, but diverged",
                vec![(WriteKind::Update, 20, vec![2])],
                vec![Some(full.clone()), Some(record(&[(0, 10), (1, 10)]))],
                0,
                1,
            ),
            (
                "the whole session gone: create and update lost",
                vec![(WriteKind::Update, 20, vec![2])],
                vec![None, None],
                2,
                0,
            ),
            (
                "a copy past its expiry counts as absent",
                vec![(WriteKind::Update, 20, vec![2])],
                vec![Some(full.clone()), Some(full.clone())],
                0,
                0,
            ),
        ];
        for (name, writes, copies, lost, diverged) in cases {
            let mut checker = created();
            for (kind, physical, fields) in writes {
                let info = write(kind, physical, &fields);
                let token = checker.write_invoked(&info);
                checker.write_completed(&info, &token, WriteResult::Acked);
            }
            let maps: Vec<BTreeMap<String, Record>> = copies
                .into_iter()
                .map(|copy| copy.into_iter().map(|r| ("s:0".to_owned(), r)).collect())
                .collect();
            let borrowed: Vec<&BTreeMap<String, Record>> = maps.iter().collect();
            checker.final_check(&borrowed, 100_000, 10_000, 100_000);
            let violations = checker.violations();
            assert_eq!(violations.lost_writes, lost, "{name}: lost");
            assert_eq!(violations.diverged_keys, diverged, "{name}: diverged");
        }
    }

    /// A write acknowledged below a write acknowledged before it began is
    /// hidden; below a concurrent one (acknowledged after it began) it is
    /// not: last-writer-wins may order concurrent writes either way.
    #[test]
    fn writes_acknowledged_below_an_earlier_acknowledged_write_are_hidden() {
        // (name, stamp of the first write, of the second, second began after
        // the first was acknowledged, same field, expected hidden writes)
        let cases = [
            ("in order", 20, 30, true, true, 0),
            ("inverted after the ack", 30, 20, true, true, 1),
            ("inverted but concurrent", 30, 20, false, true, 0),
            ("inverted on another field", 30, 20, true, false, 0),
        ];
        for (name, first, second, after, same_field, expected) in cases {
            let mut checker = created();
            let a = write(WriteKind::Update, first, &[2]);
            let b = write(
                WriteKind::Update,
                second,
                if same_field { &[2] } else { &[3] },
            );
            let token_a = checker.write_invoked(&a);
            let token_b = if after {
                checker.write_completed(&a, &token_a, WriteResult::Acked);
                checker.write_invoked(&b)
            } else {
                let token_b = checker.write_invoked(&b);
                checker.write_completed(&a, &token_a, WriteResult::Acked);
                token_b
            };
            checker.write_completed(&b, &token_b, WriteResult::Acked);
            assert_eq!(checker.violations().hidden_writes, expected, "{name}");
        }
    }

    #[test]
    fn expired_copies_do_not_diverge() {
        let mut expired = record(&[(0, 1)]);
        expired.expiry_ms = 50_000;
        let a: BTreeMap<String, Record> = [("k".to_owned(), expired)].into();
        let b = BTreeMap::new();
        // Not dropped yet (50 000 + margin > 55 000) but expired by the clock.
        assert!(diverged_keys(&[&a, &b], 55_000, 10_000, 55_000).is_empty());
        assert_eq!(diverged_keys(&[&a, &b], 55_000, 10_000, 40_000), vec!["k"]);
    }

    /// The trace names the violation an operation made the checker count:
    /// the first count that grew, none when none did.
    #[test]
    fn the_violation_that_grew_is_named() {
        let before = Violations::default();
        assert_eq!(before.grown_since(&before), None);
        let after = Violations {
            non_monotonic_reads: 1,
            ..before
        };
        assert_eq!(after.grown_since(&before), Some("non-monotonic read"));
        assert_eq!(before.grown_since(&after), None, "only growth counts");
    }
}
