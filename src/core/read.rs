//! Read plan: which replica to ask next, and when a read is conclusive.
//!
//! Rules (the argument for each: `docs/epochs.md`, claims 3 and 4):
//! - ask R replicas, readable ones first; on an error or timeout, or when a
//!   hedge timer fires, ask the next one;
//! - a read completes with R answers from *readable* replicas (complete
//!   epoch), hits included; the answers are merged. A write-only replica
//!   (restarted empty, not yet refilled) may be asked when too few readable
//!   ones answer, and what it holds is merged in, but its answer does not
//!   count toward R: it may lack writes acknowledged before it lost its data,
//!   so it is not one of the W that R + W > N relies on;
//! - one tombstone is final on its own (delete wins), and so is a lifetime cap
//!   in the past (caps only shrink); an expiry in the past is final once R
//!   answers are merged (another replica may hold a later touch);
//! - "not found" is final only after N − W + 1 misses from readable replicas
//!   (complete epoch); a partial record is neither a hit nor a miss; without
//!   enough answers the read is `Unavailable`, never "not found".

use super::health::Health;
use super::read_repair::{ReadCopies, RepairPlan};
use super::{take_replica, ReplicaIndex};
use crate::config::ReadOrder;
use crate::record::Record;

/// A replica the plan may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCandidate {
    /// The replica.
    pub index: ReplicaIndex,
    /// Its epoch is complete: its misses count.
    pub readable: bool,
}

/// Orders the replicas for one key: readable Up replicas first, then readable
/// Suspect ones, then write-only ones; Down replicas are left out. Within each
/// group the order is the configured one, rotated per key when
/// [`ReadOrder::PerKey`] so that R=1 reads spread over the replicas.
///
/// `states[i]` is replica i's `(health, readable)`.
pub fn read_order(key: &str, states: &[(Health, bool)], mode: ReadOrder) -> Vec<ReadCandidate> {
    let n = states.len();
    let start = match mode {
        ReadOrder::PerKey if n > 0 => (key_hash(key) % n as u64) as usize,
        _ => 0,
    };
    let rotated = (0..n).map(|offset| (start + offset) % n);
    let rank = |index: usize| match states[index] {
        (Health::Down, _) => None,
        (Health::Up, true) => Some(0),
        (Health::Suspect, true) => Some(1),
        (_, false) => Some(2),
    };
    let mut ranked: Vec<(u8, ReadCandidate)> = rotated
        .filter_map(|index| {
            let group = rank(index)?;
            Some((
                group,
                ReadCandidate {
                    index,
                    readable: states[index].1,
                },
            ))
        })
        .collect();
    ranked.sort_by_key(|(group, _)| *group); // stable: keeps the rotation
    ranked.into_iter().map(|(_, candidate)| candidate).collect()
}

/// FNV-1a: a stable hash (the same in every process and Rust release), so a
/// key's read order is the same on every app server.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a read found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absence {
    /// A tombstone was seen.
    Deleted,
    /// The record is past its expiry or lifetime cap.
    Expired,
    /// N − W + 1 readable replicas do not hold it.
    Absent,
}

/// A conclusive (or not) read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// The merged record.
    Found(Record),
    /// Nothing to return, and provably so.
    NotFound(Absence),
    /// Too few answers to conclude.
    Unavailable {
        /// Answers received.
        answered: usize,
        /// Answers a conclusion needed.
        needed: usize,
    },
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadDecision {
    /// Send a read to these replicas.
    Ask(Vec<ReplicaIndex>),
    /// Wait for replies (or the hedge timer).
    Wait,
    /// The read is over.
    Done(ReadResult),
}

/// The state of one read. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    candidates: Vec<ReadCandidate>,
    next_position: usize,
    in_flight: Vec<ReplicaIndex>,
    answers: Vec<(ReplicaIndex, Option<Record>)>,
    /// The join of every record answered so far, kept as answers arrive (the
    /// same fold as merging them all again, without re-cloning them).
    merged: Merged,
    failed: Vec<ReplicaIndex>,
    read_quorum: usize,
    misses_needed: usize,
    counted_misses: usize,
    /// Answers from readable replicas: the ones that count toward R.
    counted_answers: usize,
    now_ms: u64,
    /// The conclusion, once reached. A found record is `merged` itself
    /// (nothing is merged after the conclusion), so it is not kept twice.
    result: Option<Conclusion>,
}

/// The join of the records answered so far. While only one record has been
/// answered, the join is that answer itself: it is not copied (a read with
/// R = 1 copies the record once, into its result). So it stays while every
/// later record equals it and the merge would leave it as it is (the usual
/// read, where the replicas agree).
#[derive(Clone, Debug)]
enum Merged {
    /// No record answered yet.
    Nothing,
    /// The record of `answers[i]`.
    Answer(usize),
    /// The join of two or more records.
    Join(Record),
}

/// A [`ReadResult`] without the record (which is the plan's `merged`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conclusion {
    Found,
    NotFound(Absence),
    Unavailable { answered: usize, needed: usize },
}

impl ReadPlan {
    /// A read over `candidates` (from [`read_order`]) needing `read_quorum`
    /// answers, or `misses_needed` (N − W + 1) counted misses for "not found".
    ///
    /// # Panics
    ///
    /// If `read_quorum` or `misses_needed` is zero.
    pub fn new(
        candidates: Vec<ReadCandidate>,
        read_quorum: usize,
        misses_needed: usize,
        now_ms: u64,
    ) -> ReadPlan {
        assert!(read_quorum >= 1, "R must be at least 1");
        assert!(misses_needed >= 1, "N - W + 1 is at least 1");
        ReadPlan {
            candidates,
            next_position: 0,
            in_flight: Vec::new(),
            answers: Vec::new(),
            merged: Merged::Nothing,
            failed: Vec::new(),
            read_quorum,
            misses_needed,
            counted_misses: 0,
            counted_answers: 0,
            now_ms,
            result: None,
        }
    }

    /// The first asks.
    pub fn start(&mut self) -> ReadDecision {
        self.evaluate()
    }

    /// A replica answered. `readable`: its reply's epoch is complete (and
    /// not one the coordinator saw replaced), so the answer counts toward R
    /// and an absent record counts toward "not found". An answer from a
    /// write-only replica is merged in but counts toward neither.
    pub fn on_answer(
        &mut self,
        index: ReplicaIndex,
        record: Option<Record>,
        readable: bool,
    ) -> ReadDecision {
        if !self.take_in_flight(index) {
            return self.current();
        }
        if readable {
            self.counted_answers += 1;
            if record.is_none() {
                self.counted_misses += 1;
            }
        }
        if let Some(record) = &record {
            match &mut self.merged {
                Merged::Nothing => self.merged = Merged::Answer(self.answers.len()),
                Merged::Answer(first) => {
                    let first = self.answers[*first]
                        .1
                        .as_ref()
                        .expect("the first record answered");
                    // Merging a record into an equal one changes nothing but
                    // what `normalize` drops: if that is nothing too, the
                    // join is still the first answer.
                    if !record.same_data(first) || !first.is_normalized(self.now_ms) {
                        let mut join = first.clone();
                        join.merge_from(record, self.now_ms);
                        self.merged = Merged::Join(join);
                    }
                }
                Merged::Join(join) => join.merge_from(record, self.now_ms),
            }
        }
        self.answers.push((index, record));
        self.evaluate()
    }

    /// A replica failed or timed out: ask the next one.
    pub fn on_failure(&mut self, index: ReplicaIndex) -> ReadDecision {
        if !self.take_in_flight(index) {
            return self.current();
        }
        self.failed.push(index);
        self.evaluate()
    }

    /// The hedge timer fired: ask one more replica, if any is left.
    pub fn on_hedge(&mut self) -> ReadDecision {
        if self.result.is_some() {
            return self.current();
        }
        match self.ask_next() {
            Some(index) => ReadDecision::Ask(vec![index]),
            None => ReadDecision::Wait,
        }
    }

    /// The merge of every answer so far (`None` when every answer was a miss).
    pub fn merged(&self) -> Option<Record> {
        self.merged_ref().cloned()
    }

    fn merged_ref(&self) -> Option<&Record> {
        match &self.merged {
            Merged::Nothing => None,
            Merged::Answer(first) => self.answers[*first].1.as_ref(),
            Merged::Join(join) => Some(join),
        }
    }

    /// Replicas that answered something other than `merged`: they get it
    /// written back (read-repair). Empty unless the read found a record or a
    /// tombstone.
    pub fn repair_targets(&self) -> Vec<ReplicaIndex> {
        let Some(merged) = self.repairable() else {
            return Vec::new();
        };
        // While the join is the first record answered, every record answered
        // equals it (see `Merged`): only the misses differ.
        let every_record_equal = matches!(self.merged, Merged::Answer(_));
        self.answers
            .iter()
            .filter(|(_, answer)| match answer {
                Some(_) if every_record_equal => false,
                // A copy in an older stored format with the same data is
                // not stale (see `Record::same_data`).
                Some(answer) => !answer.same_data(merged),
                None => true,
            })
            .map(|(index, _)| *index)
            .collect()
    }

    /// The blocking read-repair of this read on `replica_count` replicas
    /// with write quorum `write_quorum` ([`RepairPlan::after_read`]): the
    /// answers equal to the merged record hold it, the
    /// [`repair_targets`](Self::repair_targets) (and, when there are any,
    /// `also_stale`) are stale, the replicas still in flight are answering,
    /// and the others are those not asked (in read order), then those that
    /// failed; the replicas the read left out as Down (in index order) come
    /// last, each waited for at most until the repair's hedge timer (see
    /// [`RepairPlan`]). `None` when there is nothing to repair: the read
    /// found neither a record nor a tombstone, or nothing is stale and
    /// enough replicas hold it.
    ///
    /// A Down replica is only this coordinator's view: it may have been
    /// reachable again for a while (probes back off up to
    /// `probe_interval_max`). The read skips it, but a repair that cannot
    /// reach W without it tries it rather than answer short of W at once:
    /// otherwise a value held by fewer than W replicas (a failed write that
    /// reached the replicas this coordinator sees Up) is returned and then
    /// missed by a later read on the replicas it sees Down (simulator seed
    /// 8, N=4 W=3 R=2).
    pub fn repair_plan(
        &self,
        replica_count: usize,
        write_quorum: usize,
        also_stale: &[ReplicaIndex],
    ) -> Option<RepairPlan> {
        self.repairable()?;
        let mut stale = self.repair_targets();
        let holders = self.answers.len() - stale.len();
        if !stale.is_empty() {
            stale.extend_from_slice(also_stale); // they failed: none answered
        }
        let not_asked = self.candidates[self.next_position..].iter();
        let others = not_asked
            .map(|candidate| candidate.index)
            .chain(self.failed.iter().copied())
            .collect();
        let down = (0..replica_count)
            .filter(|index| !self.candidates.iter().any(|c| c.index == *index))
            .collect();
        let copies = ReadCopies {
            holders,
            stale,
            answering: self.in_flight.clone(),
            others,
            down,
        };
        RepairPlan::after_read((replica_count, write_quorum, self.read_quorum), copies)
    }

    /// The merged record, when the read's result is one to repair with: a
    /// record found or a tombstone.
    pub fn repairable(&self) -> Option<&Record> {
        let repairs_wanted = matches!(
            self.result,
            Some(Conclusion::Found) | Some(Conclusion::NotFound(Absence::Deleted))
        );
        self.merged_ref().filter(|_| repairs_wanted)
    }

    /// Replicas that failed during this read.
    pub fn failed(&self) -> &[ReplicaIndex] {
        &self.failed
    }

    /// Replicas that answered, in arrival order.
    pub fn answered(&self) -> Vec<ReplicaIndex> {
        self.answers.iter().map(|(index, _)| *index).collect()
    }

    fn current(&self) -> ReadDecision {
        match self.result {
            Some(conclusion) => ReadDecision::Done(self.result_of(conclusion)),
            None => ReadDecision::Wait,
        }
    }

    fn result_of(&self, conclusion: Conclusion) -> ReadResult {
        match conclusion {
            Conclusion::Found => {
                let merged = self.merged().expect("found means merged");
                ReadResult::Found(merged)
            }
            Conclusion::NotFound(absence) => ReadResult::NotFound(absence),
            Conclusion::Unavailable { answered, needed } => {
                ReadResult::Unavailable { answered, needed }
            }
        }
    }

    fn take_in_flight(&mut self, index: ReplicaIndex) -> bool {
        if self.result.is_some() {
            return false;
        }
        let asked = take_replica(&mut self.in_flight, index);
        assert!(asked, "reply from replica {index}, which was not asked");
        true
    }

    fn ask_next(&mut self) -> Option<ReplicaIndex> {
        let candidate = *self.candidates.get(self.next_position)?;
        self.next_position += 1;
        self.in_flight.push(candidate.index);
        Some(candidate.index)
    }

    fn conclusion(&self) -> Option<Conclusion> {
        let answers = || self.answers.iter().filter_map(|(_, r)| r.as_ref());
        if answers().any(Record::is_tombstone) {
            return Some(Conclusion::NotFound(Absence::Deleted));
        }
        let merged = self.merged_ref();
        if merged.is_some_and(|m| m.cap_ms <= self.now_ms) {
            return Some(Conclusion::NotFound(Absence::Expired));
        }
        if self.counted_answers < self.read_quorum {
            return None;
        }
        match merged {
            // The merge of R answers holds the expiry of every acknowledged
            // touch (R + W > N), partial copies included: past it, the
            // record is expired whether or not a full copy was seen.
            Some(m) if m.is_expired(self.now_ms) => Some(Conclusion::NotFound(Absence::Expired)),
            Some(m) if !m.partial => Some(Conclusion::Found),
            _ if self.counted_misses >= self.misses_needed => {
                Some(Conclusion::NotFound(Absence::Absent))
            }
            _ => None,
        }
    }

    fn evaluate(&mut self) -> ReadDecision {
        if let Some(conclusion) = self.conclusion() {
            self.result = Some(conclusion);
            return ReadDecision::Done(self.result_of(conclusion));
        }
        let wanted = self.read_quorum.saturating_sub(self.counted_answers).max(1);
        let mut asks = Vec::new();
        while self.in_flight.len() < wanted {
            match self.ask_next() {
                Some(index) => asks.push(index),
                None => break,
            }
        }
        if self.in_flight.is_empty() {
            let conclusion = Conclusion::Unavailable {
                answered: self.answers.len(),
                needed: self.read_quorum.max(self.misses_needed),
            };
            self.result = Some(conclusion);
            return ReadDecision::Done(self.result_of(conclusion));
        }
        if asks.is_empty() {
            ReadDecision::Wait
        } else {
            ReadDecision::Ask(asks)
        }
    }
}

#[cfg(test)]
mod tests;
