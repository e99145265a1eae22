//! Table tests of the read plan: each case feeds events and asserts the exact
//! decisions.

use super::*;
use crate::record::FieldEntry;
use crate::stamp::Stamp;

const NOW: u64 = 1_000;

fn hit() -> Option<Record> {
    let mut record = Record::new(NOW + 500, NOW + 5_000);
    record
        .fields
        .insert("a".into(), FieldEntry::value(Stamp::new(10, 0, 1), "x"));
    Some(record)
}

fn newer_hit() -> Option<Record> {
    let mut record = hit().unwrap();
    record
        .fields
        .insert("b".into(), FieldEntry::value(Stamp::new(20, 0, 1), "y"));
    Some(record)
}

fn tombstone() -> Option<Record> {
    let mut record = Record::new(NOW + 5_000, NOW + 5_000);
    record.tombstone = Some(Stamp::new(30, 0, 2));
    Some(record)
}

fn partial() -> Option<Record> {
    let mut record = newer_hit().unwrap();
    record.partial = true;
    Some(record)
}

fn expired() -> Option<Record> {
    let mut record = hit().unwrap();
    record.expiry_ms = NOW - 1;
    Some(record)
}

fn expired_partial() -> Option<Record> {
    let mut record = expired().unwrap();
    record.partial = true;
    Some(record)
}

fn candidates(readable: &[bool]) -> Vec<ReadCandidate> {
    readable
        .iter()
        .enumerate()
        .map(|(index, &readable)| ReadCandidate { index, readable })
        .collect()
}

enum Event {
    Answer(usize, Option<Record>, bool),
    Fail(usize),
    Hedge,
}
use Event::*;

fn run(plan: &mut ReadPlan, events: Vec<Event>) -> Vec<ReadDecision> {
    events
        .into_iter()
        .map(|event| match event {
            Answer(i, record, counts) => plan.on_answer(i, record, counts),
            Fail(i) => plan.on_failure(i),
            Hedge => plan.on_hedge(),
        })
        .collect()
}

fn done(result: ReadResult) -> ReadDecision {
    ReadDecision::Done(result)
}

#[test]
fn read_plan_table() {
    use ReadDecision::{Ask, Wait};
    let found = |r: Option<Record>| done(ReadResult::Found(r.unwrap()));
    let merged_hits = Record::merge(&hit().unwrap(), &newer_hit().unwrap(), NOW);
    // (name, R, N-W+1, readable per replica, first decision, events, decisions)
    type Case = (
        &'static str,
        usize,
        usize,
        Vec<bool>,
        ReadDecision,
        Vec<Event>,
        Vec<ReadDecision>,
    );
    let cases: Vec<Case> = vec![
        (
            "R=2: two hits merge",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Answer(0, hit(), true), Answer(1, newer_hit(), true)],
            vec![Wait, done(ReadResult::Found(merged_hits.clone()))],
        ),
        (
            "R=2: a hit and a miss is found",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Answer(0, None, true), Answer(1, hit(), true)],
            vec![Wait, found(hit())],
        ),
        (
            "R=1: falls through on error",
            1,
            2,
            vec![true; 3],
            Ask(vec![0]),
            vec![Fail(0), Answer(1, hit(), true)],
            vec![Ask(vec![1]), found(hit())],
        ),
        (
            "R=1: one miss is not proof, two are",
            1,
            2,
            vec![true; 3],
            Ask(vec![0]),
            vec![Answer(0, None, true), Answer(1, None, true)],
            vec![Ask(vec![1]), done(ReadResult::NotFound(Absence::Absent))],
        ),
        (
            "misses from incomplete epochs do not count",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![
                Answer(0, None, false),
                Answer(1, None, true),
                Answer(2, None, false),
            ],
            vec![
                Ask(vec![2]),
                Wait,
                done(ReadResult::Unavailable {
                    answered: 3,
                    needed: 2,
                }),
            ],
        ),
        (
            // The simulator's seed 73: r2 restarted empty, r0 unreachable;
            // r1 alone misses a write acknowledged on r0 and r2's old epoch.
            "a write-only replica's answer does not complete R",
            2,
            2,
            vec![true, false],
            Ask(vec![0, 1]),
            vec![Answer(1, None, false), Answer(0, hit(), true)],
            vec![
                Wait,
                done(ReadResult::Unavailable {
                    answered: 2,
                    needed: 2,
                }),
            ],
        ),
        (
            "a write-only replica's hit is merged in, a readable one completes R",
            2,
            2,
            vec![true, false, true],
            Ask(vec![0, 1]),
            vec![
                Answer(1, newer_hit(), false),
                Answer(0, hit(), true),
                Answer(2, hit(), true),
            ],
            vec![
                Ask(vec![2]),
                Wait,
                done(ReadResult::Found(merged_hits.clone())),
            ],
        ),
        (
            "two failures: unavailable, never not-found",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Fail(0), Answer(1, None, true), Fail(2)],
            vec![
                Ask(vec![2]),
                Wait,
                done(ReadResult::Unavailable {
                    answered: 1,
                    needed: 2,
                }),
            ],
        ),
        (
            "a tombstone is final on its own",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Answer(0, tombstone(), true)],
            vec![done(ReadResult::NotFound(Absence::Deleted))],
        ),
        (
            "a tombstone beats a hit",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Answer(0, hit(), true), Answer(1, tombstone(), true)],
            vec![Wait, done(ReadResult::NotFound(Absence::Deleted))],
        ),
        (
            "a partial record is neither hit nor miss",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![
                Answer(0, partial(), true),
                Answer(1, None, true),
                Answer(2, hit(), true),
            ],
            vec![
                Wait,
                Ask(vec![2]),
                done(ReadResult::Found(merged_hits.clone())),
            ],
        ),
        (
            "an expiry in the past waits for R answers",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![Answer(0, expired(), true), Answer(1, hit(), true)],
            vec![Wait, found(hit())],
        ),
        (
            "an expired merge is not found",
            1,
            2,
            vec![true; 3],
            Ask(vec![0]),
            vec![Answer(0, expired(), true)],
            vec![done(ReadResult::NotFound(Absence::Expired))],
        ),
        (
            "an expired partial-only merge is not found, not unavailable",
            2,
            2,
            vec![true; 3],
            Ask(vec![0, 1]),
            vec![
                Answer(0, expired_partial(), true),
                Answer(1, expired_partial(), true),
            ],
            vec![Wait, done(ReadResult::NotFound(Absence::Expired))],
        ),
        (
            "hedge asks the next replica",
            1,
            2,
            vec![true; 3],
            Ask(vec![0]),
            vec![Hedge, Answer(1, hit(), true), Answer(0, hit(), true)],
            vec![Ask(vec![1]), found(hit()), found(hit())],
        ),
        (
            "hedge with nobody left waits",
            3,
            1,
            vec![true; 3],
            Ask(vec![0, 1, 2]),
            vec![Hedge],
            vec![Wait],
        ),
    ];
    for (name, r, misses, readable, first, events, expected) in cases {
        let mut plan = ReadPlan::new(candidates(&readable), r, misses, NOW);
        assert_eq!(plan.start(), first, "{name}: first decision");
        assert_eq!(run(&mut plan, events), expected, "{name}");
    }
}

#[test]
fn no_candidates_is_unavailable_at_once() {
    let mut plan = ReadPlan::new(Vec::new(), 1, 2, NOW);
    assert_eq!(
        plan.start(),
        ReadDecision::Done(ReadResult::Unavailable {
            answered: 0,
            needed: 2
        })
    );
}

#[test]
fn repair_targets_are_the_answers_that_differ() {
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 3, 2, NOW);
    plan.start();
    plan.on_answer(0, newer_hit(), true);
    plan.on_answer(1, hit(), true);
    plan.on_answer(2, None, true);
    assert_eq!(plan.repair_targets(), vec![1, 2]);

    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, hit(), true);
    plan.on_answer(1, tombstone(), true);
    assert_eq!(
        plan.repair_targets(),
        vec![0],
        "the stale replica gets the tombstone"
    );

    let mut plan = ReadPlan::new(candidates(&[true; 3]), 1, 2, NOW);
    plan.start();
    plan.on_answer(0, None, true);
    plan.on_answer(1, None, true);
    assert_eq!(
        plan.repair_targets(),
        Vec::<usize>::new(),
        "nothing to repair on absence"
    );
}

#[test]
fn equal_answers_join_to_the_answer_normalized() {
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, newer_hit(), true);
    let decision = plan.on_answer(1, newer_hit(), true);
    assert_eq!(decision, done(ReadResult::Found(newer_hit().unwrap())));
    assert_eq!(plan.merged(), newer_hit());
    assert_eq!(plan.repair_targets(), Vec::<usize>::new());

    // Equal answers holding a field past its `until`: the join drops it.
    let mut stale = newer_hit().unwrap();
    stale.fields.insert(
        "c".into(),
        FieldEntry::value(Stamp::new(30, 0, 1), "z").with_until(NOW - 1),
    );
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, Some(stale.clone()), true);
    let decision = plan.on_answer(1, Some(stale), true);
    assert_eq!(decision, done(ReadResult::Found(newer_hit().unwrap())));
    assert_eq!(plan.repair_targets(), vec![0, 1]);
}

#[test]
fn read_order_table() {
    use Health::*;
    let all_up = [(Up, true), (Up, true), (Up, true)];
    let order = |states: &[(Health, bool)], mode| -> Vec<usize> {
        read_order("s:{k}", states, mode)
            .iter()
            .map(|c| c.index)
            .collect()
    };
    assert_eq!(order(&all_up, ReadOrder::Configured), vec![0, 1, 2]);
    assert_eq!(
        order(
            &[(Down, true), (Up, true), (Up, true)],
            ReadOrder::Configured
        ),
        vec![1, 2]
    );
    assert_eq!(
        order(
            &[(Up, false), (Suspect, true), (Up, true)],
            ReadOrder::Configured
        ),
        vec![2, 1, 0]
    );
    // Per-key order is a rotation, and different keys start at different replicas.
    let starts: std::collections::BTreeSet<usize> = (0..30)
        .map(|k| read_order(&format!("s:{{{k}}}"), &all_up, ReadOrder::PerKey)[0].index)
        .collect();
    assert_eq!(starts.len(), 3, "R=1 load spreads over every replica");
}

/// What a read tells its blocking repair: holders, stale answers, answers
/// still in flight, and the others in order (not asked, then failed).
#[test]
fn repair_plan_counts_the_copies_the_read_saw() {
    use crate::core::read_repair::RepairOutcome;
    let held = |holders| Some(RepairOutcome::Held { holders });

    // One stale answer: repaired first; if that fails, the replica not asked.
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, newer_hit(), true);
    plan.on_answer(1, hit(), true);
    let mut repair = plan.repair_plan(3, 2, &[]).expect("a stale answer");
    assert_eq!(repair.start().send, vec![1]);
    assert_eq!(repair.on_failed(1).send, vec![2]);
    assert_eq!(repair.on_repaired(2).done, held(2));

    // A tombstone concludes on its own: the answer in flight is awaited.
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, tombstone(), true);
    let mut repair = plan.repair_plan(3, 2, &[]).expect("one holder of two");
    assert!(repair.awaits_answers());
    assert_eq!(repair.start().send, Vec::<usize>::new());
    assert_eq!(repair.on_answer(1, Some(true)).done, held(2));

    // A failed replica comes after the ones not asked.
    let mut plan = ReadPlan::new(candidates(&[true; 4]), 2, 2, NOW);
    plan.start();
    plan.on_failure(0);
    plan.on_answer(1, newer_hit(), true);
    plan.on_answer(2, hit(), true);
    let mut repair = plan.repair_plan(4, 3, &[]).expect("one holder of three");
    assert_eq!(repair.start().send, vec![2, 3]);
    assert_eq!(repair.on_failed(3).send, vec![0]);

    // Agreeing answers from W replicas: nothing to repair.
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, hit(), true);
    plan.on_answer(1, hit(), true);
    assert!(plan.repair_plan(3, 2, &[]).is_none());

    // Nothing found: nothing to repair.
    let mut plan = ReadPlan::new(candidates(&[true; 3]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, None, true);
    plan.on_answer(1, None, true);
    assert!(plan.repair_plan(3, 2, &[]).is_none());
}

/// A read that skipped Down replicas and cannot get its record to W
/// without them repairs them last, one at a time, instead of answering
/// short of W at once (simulator seed 8, N=4 W=3 R=2: a coordinator that
/// still saw two healed replicas as Down returned its own failed write,
/// held by the two it saw Up, and a later read of the other two missed it).
#[test]
fn a_repair_short_of_w_tries_the_replicas_the_read_skipped_as_down() {
    use crate::core::health::Health;
    use crate::core::read_repair::RepairOutcome;
    let states = [
        (Health::Down, true),
        (Health::Down, true),
        (Health::Up, true),
        (Health::Up, true),
    ];
    let order = read_order("k", &states, ReadOrder::Configured);
    assert_eq!(
        order.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let mut plan = ReadPlan::new(order, 2, 2, NOW);
    assert_eq!(plan.start(), ReadDecision::Ask(vec![2, 3]));
    plan.on_answer(2, newer_hit(), true);
    assert!(matches!(
        plan.on_answer(3, newer_hit(), true),
        ReadDecision::Done(ReadResult::Found(_))
    ));
    let mut repair = plan.repair_plan(4, 3, &[]).expect("two holders of three");
    let step = repair.start();
    assert_eq!((step.send, step.done), (vec![0], None), "not short at once");
    let step = repair.on_failed(0);
    assert_eq!((step.send, step.done), (vec![1], None));
    assert_eq!(
        repair.on_repaired(1).done,
        Some(RepairOutcome::Held { holders: 3 })
    );

    // Failed replicas still come before the ones left out as Down (every
    // candidate was asked here: the not-asked-first order is the table's
    // "the others come before the Down replicas" in core::read_repair).
    let states = [
        (Health::Down, true),
        (Health::Up, true),
        (Health::Up, true),
        (Health::Up, true),
    ];
    let mut plan = ReadPlan::new(read_order("k", &states, ReadOrder::Configured), 2, 2, NOW);
    plan.start();
    plan.on_failure(1);
    plan.on_answer(2, newer_hit(), true);
    plan.on_answer(3, newer_hit(), true);
    let mut repair = plan.repair_plan(4, 3, &[]).expect("two holders of three");
    assert_eq!(repair.start().send, vec![1]);
    assert_eq!(repair.on_failed(1).send, vec![0]);
    assert_eq!(
        repair.on_failed(0).done,
        Some(RepairOutcome::Short {
            holders: 2,
            needed: 3
        })
    );
}

/// A copy stored in format 1 with the same data as one in format 2 is not
/// stale (the format says how a copy is stored, not what it holds): no
/// read-repair for it, so a replica set to write format 1 is not asked
/// again on every read to rewrite a format-2 copy it keeps as format 1.
#[test]
fn a_copy_in_another_stored_format_is_not_stale() {
    let mut format_one = newer_hit().unwrap();
    format_one.format = 1;
    for order in [[0, 1], [1, 0]] {
        let mut plan = ReadPlan::new(candidates(&[true; 2]), 2, 2, NOW);
        plan.start();
        let answers = [newer_hit(), Some(format_one.clone())];
        for index in order {
            plan.on_answer(index, answers[index].clone(), true);
        }
        assert!(plan.repair_targets().is_empty(), "order {order:?}");
        assert!(plan.repair_plan(2, 2, &[]).is_none(), "order {order:?}");
    }
    // A stale copy in format 1 is still repaired.
    let mut stale_one = hit().unwrap();
    stale_one.format = 1;
    let mut plan = ReadPlan::new(candidates(&[true; 2]), 2, 2, NOW);
    plan.start();
    plan.on_answer(0, newer_hit(), true);
    plan.on_answer(1, Some(stale_one), true);
    assert_eq!(plan.repair_targets(), vec![1]);
}
