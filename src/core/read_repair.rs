//! Blocking read-repair: how many replicas are known to hold the record a
//! read returns, which replica to repair next, and when the read may answer
//! (a value seen on fewer than W replicas is written back to W before it is
//! returned, so reads are monotonic: `docs/epochs.md`, claim 13).
//!
//! Rules:
//! - a replica **holds** the read's merged record when its answer equalled
//!   it, or when a repair merge of it was applied (or met a tombstone, which
//!   dominates it: delete wins). Answers of write-only replicas count, as
//!   their acknowledgements count toward W on the write path;
//! - the asked replicas whose answer differed (**stale**) are repaired at
//!   once, all of them (as in background mode); so is a replica whose answer
//!   arrives after the read concluded (**answering**: a tombstone concludes
//!   a read on its own, a hedged read leaves one in flight) and differs; one
//!   whose late answer equals the record holds it;
//! - with R + W > N the goal is W holders: while the holders, the repairs
//!   running and the answers awaited are fewer than W, one more replica is
//!   repaired: the **others** (replicas not asked, in read order, then those
//!   that failed during the read), each at most once; and when a repair is
//!   slow to answer (the driver's hedge timer), one more is repaired at once;
//! - when the others cannot make up the goal, the replicas the read left
//!   out as **Down** are repaired the same way, last: Down is only the
//!   coordinator's view (probes back off), and a replica that is back
//!   would otherwise miss a value the read returns. When the hedge timer
//!   fires with only their repairs running, every Down replica not tried
//!   yet is repaired at once, and at the next firing the read answers
//!   short without them: two hedge delays at most (a replica really down
//!   must not make every read pay the request timeout, nor hide one that
//!   is back); their repairs then finish in the background;
//! - with R + W ≤ N no number of holders makes a later read see the record
//!   (it may ask only replicas that were not written), so the goal is the
//!   stale replicas only, as before blocking counted: no other replica is
//!   written and no late answer awaited;
//! - the read answers once the goal is met ([`RepairOutcome::Held`]), or once
//!   every repair sent settled, every answer awaited came and none is left
//!   to send, or only repairs of Down replicas run and none is left to
//!   send when the hedge timer fires, or the driver's deadline passed ([`RepairOutcome::Short`]).
//!   The repairs still running then finish in the background.

use std::collections::VecDeque;

use super::{take_replica, ReplicaIndex};

/// How a blocking read-repair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The goal is met: `holders` replicas are known to hold the record.
    Held {
        /// Replicas known to hold it.
        holders: usize,
    },
    /// The goal was not met: every repair settled with none left to send,
    /// or the deadline passed.
    Short {
        /// Replicas known to hold it.
        holders: usize,
        /// The goal.
        needed: usize,
    },
}

/// What the driver does next: send these repairs, then wait or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairStep {
    /// Replicas to send the merged record to now.
    pub send: Vec<ReplicaIndex>,
    /// Set once the read may answer (the repairs still running go on in the
    /// background); `None`: wait for a repair's result or a late answer.
    pub done: Option<RepairOutcome>,
}

/// Where the replicas stand when a read concluded, as a blocking repair
/// sees them (see the module docs for the names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadCopies {
    /// Answers equal to the merged record.
    pub holders: usize,
    /// Asked replicas whose answer differed.
    pub stale: Vec<ReplicaIndex>,
    /// Asked replicas whose answer is still to come.
    pub answering: Vec<ReplicaIndex>,
    /// Replicas that may be repaired if needed, in this order.
    pub others: Vec<ReplicaIndex>,
    /// Replicas the read left out as Down: repaired after the others when
    /// they cannot make up the goal, and waited for two hedge delays at
    /// most (see [`RepairPlan::on_hedge`]).
    pub down: Vec<ReplicaIndex>,
}

/// The state of one blocking read-repair. See the module docs for the rules.
///
/// ```
/// use quorum_sessions::core::read_repair::{ReadCopies, RepairOutcome, RepairPlan};
/// // N = 3, W = 2, R = 2: replica 0 held the value, replica 1 answered
/// // something older, replica 2 was not asked.
/// let copies = ReadCopies { holders: 1, stale: vec![1], others: vec![2], ..ReadCopies::default() };
/// let mut plan = RepairPlan::after_read((3, 2, 2), copies).unwrap();
/// assert_eq!(plan.start().send, vec![1]);
/// let step = plan.on_failed(1); // the repair of replica 1 failed
/// assert_eq!((step.send, step.done), (vec![2], None));
/// let step = plan.on_repaired(2);
/// assert_eq!(step.done, Some(RepairOutcome::Held { holders: 2 }));
/// ```
#[derive(Clone, Debug)]
pub struct RepairPlan {
    needed: usize,
    holders: usize,
    stale: Vec<ReplicaIndex>,
    answering: Vec<ReplicaIndex>,
    others: VecDeque<ReplicaIndex>,
    down: VecDeque<ReplicaIndex>,
    in_flight: Vec<ReplicaIndex>,
    /// The replicas of `in_flight` taken from `down`.
    down_in_flight: Vec<ReplicaIndex>,
    outcome: Option<RepairOutcome>,
}

impl RepairPlan {
    /// The repair after a read with quorums `(N, W, R)` that left the
    /// replicas as `copies` says. `None` when there is nothing to do:
    /// nothing stale and the goal already met.
    pub fn after_read(
        (replica_count, write_quorum, read_quorum): (usize, usize, usize),
        copies: ReadCopies,
    ) -> Option<RepairPlan> {
        let ReadCopies {
            holders,
            stale,
            answering,
            others,
            down,
        } = copies;
        let monotonic = read_quorum + write_quorum > replica_count;
        let (needed, answering, others, down) = if monotonic {
            let known = |index: &ReplicaIndex| stale.contains(index) || answering.contains(index);
            let others: VecDeque<ReplicaIndex> = others.into_iter().filter(|i| !known(i)).collect();
            let down = down
                .into_iter()
                .filter(|i| !known(i) && !others.contains(i))
                .collect();
            (write_quorum, answering, others, down)
        } else {
            (
                holders + stale.len(),
                Vec::new(),
                VecDeque::new(),
                VecDeque::new(),
            )
        };
        if stale.is_empty() && holders >= needed {
            return None;
        }
        Some(RepairPlan {
            needed,
            holders,
            stale,
            answering,
            others,
            down,
            in_flight: Vec::new(),
            down_in_flight: Vec::new(),
            outcome: None,
        })
    }

    /// The first repairs: every stale replica, and others while the
    /// holders, the repairs running and the answers awaited are short of
    /// the goal.
    pub fn start(&mut self) -> RepairStep {
        let mut send = std::mem::take(&mut self.stale);
        self.in_flight.extend_from_slice(&send);
        self.step(&mut send)
    }

    /// The repair of `index` was applied (or met a tombstone).
    pub fn on_repaired(&mut self, index: ReplicaIndex) -> RepairStep {
        if self.settle(index) {
            self.holders += 1;
        }
        self.step(&mut Vec::new())
    }

    /// The repair of `index` failed or timed out.
    pub fn on_failed(&mut self, index: ReplicaIndex) -> RepairStep {
        self.settle(index);
        self.step(&mut Vec::new())
    }

    /// The late read answer of `index` came: `Some(true)` it equals the
    /// record, `Some(false)` it differs (the replica is repaired now),
    /// `None` the read failed. Answers not awaited change nothing.
    pub fn on_answer(&mut self, index: ReplicaIndex, holds: Option<bool>) -> RepairStep {
        let mut send = Vec::new();
        if self.outcome.is_none() && take_replica(&mut self.answering, index) {
            match holds {
                Some(true) => self.holders += 1,
                Some(false) => {
                    self.in_flight.push(index);
                    send.push(index);
                }
                None => {}
            }
        }
        self.step(&mut send)
    }

    /// The hedge timer fired (a repair is slow to answer): one more other
    /// replica is repaired, if the goal is not met and one is left. When
    /// only repairs of Down replicas run (and no answer is awaited), every
    /// Down replica not tried yet is repaired at once (one that is back
    /// must not wait behind one that hangs), and at the next hedge the read
    /// answers short of the goal without them: Down replicas cost a read
    /// two hedge delays at most.
    pub fn on_hedge(&mut self) -> RepairStep {
        let mut send = Vec::new();
        if self.outcome.is_none() {
            let only_down = !self.down_in_flight.is_empty()
                && self.down_in_flight.len() == self.in_flight.len()
                && self.answering.is_empty();
            if let Some(next) = self.others.pop_front() {
                self.in_flight.push(next);
                send.push(next);
            } else if only_down && !self.down.is_empty() {
                for next in self.down.drain(..) {
                    self.in_flight.push(next);
                    self.down_in_flight.push(next);
                    send.push(next);
                }
            } else if only_down {
                self.outcome = Some(RepairOutcome::Short {
                    holders: self.holders,
                    needed: self.needed,
                });
            }
        }
        self.step(&mut send)
    }

    /// The driver's deadline passed: the read answers with what is known.
    pub fn on_deadline(&mut self) -> RepairOutcome {
        *self.outcome.get_or_insert(RepairOutcome::Short {
            holders: self.holders,
            needed: self.needed,
        })
    }

    /// Replicas known to hold the record.
    pub fn holders(&self) -> usize {
        self.holders
    }

    /// True while late read answers are awaited: the driver feeds them to
    /// [`on_answer`](Self::on_answer) (otherwise it repairs them in the
    /// background when they differ, as in background mode).
    pub fn awaits_answers(&self) -> bool {
        !self.answering.is_empty()
    }

    /// False for a result after the outcome (it changes nothing).
    fn settle(&mut self, index: ReplicaIndex) -> bool {
        if self.outcome.is_some() {
            return false;
        }
        let repairing = take_replica(&mut self.in_flight, index);
        assert!(
            repairing,
            "repair result from replica {index}, which is not being repaired"
        );
        take_replica(&mut self.down_in_flight, index);
        true
    }

    fn step(&mut self, send: &mut Vec<ReplicaIndex>) -> RepairStep {
        if self.outcome.is_none() {
            while self.holders + self.in_flight.len() + self.answering.len() < self.needed {
                let next = match self.others.pop_front() {
                    Some(next) => next,
                    None => match self.down.pop_front() {
                        Some(next) => {
                            self.down_in_flight.push(next);
                            next
                        }
                        None => break,
                    },
                };
                self.in_flight.push(next);
                send.push(next);
            }
            if self.holders >= self.needed {
                self.outcome = Some(RepairOutcome::Held {
                    holders: self.holders,
                });
            } else if self.in_flight.is_empty() && self.answering.is_empty() {
                self.outcome = Some(RepairOutcome::Short {
                    holders: self.holders,
                    needed: self.needed,
                });
            }
        }
        RepairStep {
            send: std::mem::take(send),
            done: self.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Event {
        Repaired(ReplicaIndex),
        Failed(ReplicaIndex),
        Answer(ReplicaIndex, Option<bool>),
        Hedge,
        Deadline,
    }
    use Event::{Answer, Deadline, Failed, Hedge, Repaired};

    fn step(send: &[ReplicaIndex], done: Option<RepairOutcome>) -> RepairStep {
        RepairStep {
            send: send.to_vec(),
            done,
        }
    }

    fn held(holders: usize) -> Option<RepairOutcome> {
        Some(RepairOutcome::Held { holders })
    }

    fn short(holders: usize, needed: usize) -> Option<RepairOutcome> {
        Some(RepairOutcome::Short { holders, needed })
    }

    /// Holders, stale, answering, others.
    fn copies(
        holders: usize,
        stale: &[ReplicaIndex],
        answering: &[ReplicaIndex],
        others: &[ReplicaIndex],
    ) -> ReadCopies {
        ReadCopies {
            holders,
            stale: stale.to_vec(),
            answering: answering.to_vec(),
            others: others.to_vec(),
            down: Vec::new(),
        }
    }

    fn with_down(copies: ReadCopies, down: &[ReplicaIndex]) -> ReadCopies {
        ReadCopies {
            down: down.to_vec(),
            ..copies
        }
    }

    #[test]
    fn repair_plan_table() {
        // (name, (N, W, R), copies, first step, then (event, expected step))
        type Case = (
            &'static str,
            (usize, usize, usize),
            ReadCopies,
            RepairStep,
            Vec<(Event, RepairStep)>,
        );
        let cases: Vec<Case> = vec![
            (
                "one stale replica repaired: W reached",
                (3, 2, 2),
                copies(1, &[1], &[], &[2]),
                step(&[1], None),
                vec![(Repaired(1), step(&[], held(2)))],
            ),
            (
                "the stale repair fails: the replica not asked is next",
                (3, 2, 2),
                copies(1, &[1], &[], &[2]),
                step(&[1], None),
                vec![
                    (Failed(1), step(&[2], None)),
                    (Repaired(2), step(&[], held(2))),
                ],
            ),
            (
                "every repair fails: short, answered anyway",
                (3, 2, 2),
                copies(1, &[1], &[], &[2]),
                step(&[1], None),
                vec![
                    (Failed(1), step(&[2], None)),
                    (Failed(2), step(&[], short(1, 2))),
                ],
            ),
            (
                "the others cannot make up W: a Down replica is repaired",
                (4, 3, 2),
                with_down(copies(2, &[], &[], &[]), &[3]),
                step(&[3], None),
                vec![(Repaired(3), step(&[], held(3)))],
            ),
            (
                "only Down repairs run at a hedge: the rest of them at once, then short",
                (4, 3, 2),
                with_down(copies(2, &[], &[], &[]), &[2, 3]),
                step(&[2], None),
                vec![(Hedge, step(&[3], None)), (Hedge, step(&[], short(2, 3)))],
            ),
            (
                "a Down replica that is back is not held up by one that hangs",
                (4, 3, 2),
                with_down(copies(2, &[], &[], &[]), &[2, 3]),
                step(&[2], None),
                vec![(Hedge, step(&[3], None)), (Repaired(3), step(&[], held(3)))],
            ),
            (
                "the only Down replica hangs: short at the next hedge",
                (4, 3, 2),
                with_down(copies(2, &[], &[], &[]), &[3]),
                step(&[3], None),
                vec![(Hedge, step(&[], short(2, 3)))],
            ),
            (
                "the others come before the Down replicas",
                (4, 3, 2),
                with_down(copies(2, &[], &[], &[1]), &[3]),
                step(&[1], None),
                vec![
                    (Failed(1), step(&[3], None)),
                    (Failed(3), step(&[], short(2, 3))),
                ],
            ),
            (
                "a Down replica is not waited for beyond the hedge, but another repair is",
                (5, 4, 2),
                with_down(copies(2, &[], &[], &[2]), &[3]),
                step(&[2, 3], None),
                vec![
                    (Hedge, step(&[], None)),
                    (Repaired(2), step(&[], None)),
                    (Hedge, step(&[], short(3, 4))),
                ],
            ),
            (
                "stale answers are repaired before any Down replica",
                (3, 2, 2),
                with_down(copies(1, &[1], &[], &[]), &[2]),
                step(&[1], None),
                vec![(Repaired(1), step(&[], held(2)))],
            ),
            (
                "both answers differ from their join: both repaired",
                (3, 2, 2),
                copies(0, &[0, 1], &[], &[2]),
                step(&[0, 1], None),
                vec![
                    (Repaired(1), step(&[], None)),
                    (Repaired(0), step(&[], held(2))),
                ],
            ),
            (
                "one of two stale repairs fails: the third replica is next",
                (3, 2, 2),
                copies(0, &[0, 1], &[], &[2]),
                step(&[0, 1], None),
                vec![
                    (Failed(0), step(&[2], None)),
                    (Repaired(2), step(&[], None)),
                    (Repaired(1), step(&[], held(2))),
                ],
            ),
            (
                "W held already: the stale replica is sent, the read answers",
                (3, 2, 3),
                copies(2, &[2], &[], &[]),
                step(&[2], held(2)),
                vec![(Repaired(2), step(&[], held(2)))],
            ),
            (
                "R < W: the answers agree, other replicas are written to W",
                (3, 3, 1),
                copies(1, &[], &[], &[1, 2]),
                step(&[1, 2], None),
                vec![
                    (Repaired(2), step(&[], None)),
                    (Repaired(1), step(&[], held(3))),
                ],
            ),
            (
                "no replica left to try: short at once",
                (3, 2, 2),
                copies(1, &[], &[], &[]),
                step(&[], short(1, 2)),
                vec![],
            ),
            (
                "an other listed as stale or answering is not sent twice",
                (3, 2, 2),
                copies(0, &[1], &[2], &[1, 2, 0]),
                step(&[1], None),
                vec![
                    (Failed(1), step(&[0], None)),
                    (Answer(2, Some(true)), step(&[], None)),
                    (Repaired(0), step(&[], held(2))),
                ],
            ),
            (
                "a tombstone concluded the read: the late answer holds it too",
                (3, 2, 2),
                copies(1, &[], &[1], &[2]),
                step(&[], None),
                vec![(Answer(1, Some(true)), step(&[], held(2)))],
            ),
            (
                "the late answer differs: it is repaired",
                (3, 2, 2),
                copies(1, &[], &[1], &[2]),
                step(&[], None),
                vec![
                    (Answer(1, Some(false)), step(&[1], None)),
                    (Repaired(1), step(&[], held(2))),
                ],
            ),
            (
                "the late read fails: the replica not asked is next",
                (3, 2, 2),
                copies(1, &[], &[1], &[2]),
                step(&[], None),
                vec![
                    (Answer(1, None), step(&[2], None)),
                    (Repaired(2), step(&[], held(2))),
                ],
            ),
            (
                "a slow late answer: the hedge repairs the next replica",
                (3, 2, 2),
                copies(1, &[], &[1], &[2]),
                step(&[], None),
                vec![
                    (Hedge, step(&[2], None)),
                    (Repaired(2), step(&[], held(2))),
                    (Answer(1, Some(true)), step(&[], held(2))),
                ],
            ),
            (
                "a slow repair: the hedge sends the next replica, the first to hold it ends the wait",
                (3, 2, 2),
                copies(1, &[1], &[], &[2, 0]),
                step(&[1], None),
                vec![
                    (Hedge, step(&[2], None)),
                    (Repaired(2), step(&[], held(2))),
                    (Failed(1), step(&[], held(2))),
                ],
            ),
            (
                "hedging with no replica left sends nothing",
                (3, 2, 2),
                copies(1, &[1], &[], &[]),
                step(&[1], None),
                vec![(Hedge, step(&[], None)), (Failed(1), step(&[], short(1, 2)))],
            ),
            (
                "the deadline: short with what is known, later results ignored",
                (3, 2, 2),
                copies(1, &[1], &[], &[2]),
                step(&[1], None),
                vec![
                    (Deadline, step(&[], short(1, 2))),
                    (Repaired(1), step(&[], short(1, 2))),
                ],
            ),
            (
                "R + W <= N: only the stale replicas, waited for",
                (3, 1, 1),
                copies(0, &[0], &[1], &[1, 2]),
                step(&[0], None),
                vec![(Failed(0), step(&[], short(0, 1)))],
            ),
            (
                "R + W <= N, the stale repair applied",
                (3, 2, 1),
                copies(0, &[0], &[], &[1, 2]),
                step(&[0], None),
                vec![(Repaired(0), step(&[], held(1)))],
            ),
        ];
        for (name, quorums, copies, first, events) in cases {
            let mut plan =
                RepairPlan::after_read(quorums, copies).unwrap_or_else(|| panic!("{name}: a plan"));
            assert_eq!(plan.start(), first, "{name}: start");
            for (i, (event, expected)) in events.into_iter().enumerate() {
                let got = match event {
                    Repaired(index) => plan.on_repaired(index),
                    Failed(index) => plan.on_failed(index),
                    Answer(index, holds) => plan.on_answer(index, holds),
                    Hedge => plan.on_hedge(),
                    Deadline => step(&[], Some(plan.on_deadline())),
                };
                assert_eq!(got, expected, "{name}: event {i}");
            }
        }
    }

    #[test]
    fn nothing_to_do_without_stale_replicas_once_w_hold() {
        let plan = |quorums, holders, others: &[ReplicaIndex]| {
            RepairPlan::after_read(quorums, copies(holders, &[], &[], others))
        };
        assert!(plan((3, 2, 2), 2, &[2]).is_none());
        assert!(plan((5, 3, 3), 3, &[3, 4]).is_none());
        // R + W <= N: nothing stale is nothing to do, however few hold it.
        assert!(plan((3, 2, 1), 1, &[1, 2]).is_none());
        // R < W with R + W > N: agreeing answers are not enough.
        assert!(plan((3, 3, 1), 1, &[1, 2]).is_some());
    }
}
