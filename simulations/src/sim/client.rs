//! Client operations: a request handler on one app server calls the
//! production [`Coordinator`]'s `write` and `read`, and the checker is told
//! what the client saw — when the call began and ended (true time), the
//! stamp an acknowledged write carries, the record a read returned.
//!
//! [`Coordinator`]: quorum_sessions::Coordinator

use std::rc::Rc;

use quorum_sessions::core::read::{Absence, ReadResult};
use quorum_sessions::{Error, Mutation, Stamp};

use super::{Phase, World};
use crate::checker::{WriteInfo, WriteKind, WriteResult};
use crate::trace::{compact_record, short_duration, short_latency, short_stamp, EventKind};
use crate::workload::{ClientOp, FieldSet, SessionIndex, CREATE_FIELDS, FIELD_NAMES};

/// Runs one client operation on app server `coord` and records it.
pub(super) async fn issue(world: Rc<World>, coord: usize, op: ClientOp, audit: bool) {
    match op {
        ClientOp::Create => {
            let session = {
                let now_ms = world.wall_ms(coord);
                let mut driver = world.driver();
                let driver = &mut *driver;
                let session = driver.workload.register(&mut driver.rng, now_ms);
                let info = driver.workload.session(session);
                let (key, cap) = (info.key.clone(), info.cap_ms);
                driver.checker.register_session(session, &key, cap);
                session
            };
            write(
                &world,
                coord,
                session,
                WriteKind::Create,
                FieldSet::of(&CREATE_FIELDS),
            )
            .await;
        }
        ClientOp::Read(session) => read(world.clone(), coord, session, audit).await,
        ClientOp::Update(session, fields) => {
            write(&world, coord, session, WriteKind::Update, fields).await;
        }
        ClientOp::Touch(session) => {
            write(
                &world,
                coord,
                session,
                WriteKind::Touch,
                FieldSet::default(),
            )
            .await;
        }
        ClientOp::RemoveField(session, field) => {
            let fields = FieldSet::of(&[field]);
            write(&world, coord, session, WriteKind::RemoveField, fields).await;
        }
        ClientOp::Delete(session) => {
            {
                let mut driver = world.driver();
                let driver = &mut *driver;
                driver.workload.on_delete_issued(&mut driver.rng, session);
            }
            write(
                &world,
                coord,
                session,
                WriteKind::Delete,
                FieldSet::default(),
            )
            .await;
        }
    }
    if !audit {
        world.driver().in_flight -= 1;
    }
}

/// Builds the mutation a write sends. Every mutation carries the expiry and
/// the cap, so no copy is ever left without an expiry; every value written
/// is unique (the n-th value is n's bytes).
fn mutation(
    world: &World,
    coord: usize,
    session: SessionIndex,
    kind: WriteKind,
    fields: FieldSet,
) -> (WriteInfo, Mutation) {
    let now_ms = world.wall_ms(coord);
    let mut driver = world.driver();
    let info = driver.workload.session(session);
    let (cap, expiry) = (info.cap_ms, now_ms + info.ttl_ms);
    let mut mutation = match kind {
        WriteKind::Create => Mutation::create(expiry, cap),
        WriteKind::Delete => Mutation::delete(cap),
        _ => Mutation::update(expiry, cap),
    };
    for field in fields.iter() {
        let name = FIELD_NAMES[field as usize];
        mutation = if kind == WriteKind::RemoveField {
            mutation.remove(name)
        } else {
            driver.next_value += 1;
            mutation.set(name, driver.next_value.to_be_bytes().to_vec())
        };
    }
    let info = WriteInfo {
        session,
        kind,
        stamp: Stamp::ZERO,
        fields,
        expiry_ms: if kind == WriteKind::Delete {
            cap
        } else {
            expiry
        },
    };
    (info, mutation)
}

async fn write(
    world: &Rc<World>,
    coord: usize,
    session: SessionIndex,
    kind: WriteKind,
    fields: FieldSet,
) {
    let (mut info, mutation) = mutation(world, coord, session, kind, fields);
    let key = world.driver().workload.session(session).key.clone();
    let token = world.driver().checker.write_invoked(&info);
    let invoked_at = world.now_us();
    // Built only when a trace is recorded (the common run pays nothing).
    let asked = if world.tracing() {
        let clock_ms = world.wall_ms(coord);
        describe_write(coord, kind, &key, fields, info.expiry_ms, clock_ms)
    } else {
        String::new()
    };
    world.trace_event(Some(&key), EventKind::Invoked, || asked.clone());
    let cap_ms = world.driver().workload.session(session).cap_ms;
    let result = if world.wall_ms(coord) >= cap_ms {
        // Past its lifetime cap the session is over: the coordinator would
        // refuse the mutation as invalid, and an app does not send it.
        WriteResult::Failed
    } else {
        // Boxed: the client task stays small to spawn.
        let coordinator = world.coordinator(coord);
        let write = Box::pin(coordinator.write(&key, mutation));
        match write.await {
            Ok(ack) => {
                info.stamp = ack.stamp;
                WriteResult::Acked
            }
            Err(Error::Gone) => WriteResult::Gone,
            Err(Error::Collision) => WriteResult::Collision,
            // A rolled app server that stopped under a late request: the
            // write may or may not have landed (membership scenario only).
            Err(Error::QuorumNotReached { .. } | Error::ShuttingDown) => WriteResult::Failed,
            Err(other) => panic!("the simulator's writes are valid: {other}"),
        }
    };
    let latency_us = world.now_us() - invoked_at;
    let mut driver = world.driver();
    let counted = driver.phase == Phase::Faults;
    let before = driver.checker.violations();
    driver.checker.write_completed(&info, &token, result);
    let violation = driver.checker.violations().grown_since(&before);
    driver.stats.record_write(result, latency_us, counted);
    if kind == WriteKind::Create && result == WriteResult::Acked {
        driver.workload.on_created(session);
    }
    drop(driver);
    let answered = EventKind::Answered {
        failed: result == WriteResult::Failed,
        latency_us,
        violation,
    };
    world.trace_event(Some(&key), answered, || {
        let outcome = match result {
            WriteResult::Acked => format!("acked @{}", short_stamp(info.stamp)),
            WriteResult::Gone => "gone (deleted)".to_owned(),
            WriteResult::Collision => "collision (exists)".to_owned(),
            WriteResult::Failed => "failed".to_owned(),
        };
        format!("{asked} -> {outcome} after {}", short_latency(latency_us))
    });
}

/// What a write asks, for the trace: `c3 update s:{0000042} {theme}`, a
/// touch with its expiry relative to the writer's clock `clock_ms`.
fn describe_write(
    coord: usize,
    kind: WriteKind,
    key: &str,
    fields: FieldSet,
    expiry_ms: u64,
    clock_ms: u64,
) -> String {
    let verb = match kind {
        WriteKind::Create => "create",
        WriteKind::Update => "update",
        WriteKind::Touch => "touch",
        WriteKind::RemoveField => "remove-field",
        WriteKind::Delete => "delete",
    };
    let mut text = format!("c{coord} {verb} {key}");
    if fields != FieldSet::default() {
        let names: Vec<&str> = fields.iter().map(|f| FIELD_NAMES[f as usize]).collect();
        text.push_str(&format!(" {{{}}}", names.join(",")));
    }
    if kind == WriteKind::Touch {
        let expiry = expiry_ms as i64 - clock_ms as i64;
        text.push_str(&format!(" exp={}", short_duration(expiry)));
    }
    text
}

/// Reads `session` on app server `coord`; `audit` reads are judged but not
/// counted in the fault phase's figures.
pub(super) async fn read(world: Rc<World>, coord: usize, session: SessionIndex, audit: bool) {
    let key = world.driver().workload.session(session).key.clone();
    let clock_ms = world.wall_ms(coord);
    let invoked_at = world.now_us();
    let token = world
        .driver()
        .checker
        .read_invoked(session, invoked_at, clock_ms);
    // Boxed: the client task stays small to spawn.
    let coordinator = world.coordinator(coord);
    let outcome = Box::pin(coordinator.read(&key)).await;
    let result = match outcome {
        Ok(Some(record)) => ReadResult::Found(record),
        // The public API does not say why a record is absent.
        Ok(None) => ReadResult::NotFound(Absence::Absent),
        Err(Error::Unavailable {
            needed, answered, ..
        }) => ReadResult::Unavailable { answered, needed },
        // A rolled app server that stopped under a late request answers
        // nothing (membership scenario only).
        Err(Error::ShuttingDown) => ReadResult::Unavailable {
            answered: 0,
            needed: world.config.read_quorum(),
        },
        Err(other) => panic!("the simulator's reads are valid: {other}"),
    };
    let latency_us = world.now_us() - invoked_at;
    let mut driver = world.driver();
    let counted = driver.phase == Phase::Faults && !audit;
    let before = driver.checker.violations();
    driver.checker.read_completed(&token, &result);
    let violation = driver.checker.violations().grown_since(&before);
    driver.stats.record_read(&result, latency_us, counted);
    drop(driver);
    let answered = EventKind::Answered {
        failed: matches!(result, ReadResult::Unavailable { .. }),
        latency_us,
        violation,
    };
    world.trace_event(Some(&key), answered, || {
        let what = match &result {
            ReadResult::Found(record) => format!("found {}", compact_record(record, clock_ms)),
            ReadResult::NotFound(_) => "not found".to_owned(),
            ReadResult::Unavailable { answered, needed } => {
                format!("unavailable ({answered} answers, {needed} needed)")
            }
        };
        let audit = if audit { " (audit)" } else { "" };
        format!(
            "c{coord} read {key}{audit} -> {what} after {}",
            short_latency(latency_us)
        )
    });
}
