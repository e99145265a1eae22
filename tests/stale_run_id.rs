//! A script that carries the run id of another Redis process changes nothing.
//!
//! After a Redis restart, fred may write a request it queued before the
//! connection dropped onto the new connection: the script then carries the
//! run id of the process that is gone (see `process.rs` and the module docs
//! of `replica::redis`). Such a call must not make an epoch nor write a
//! record (the Rust side refuses its reply, but a write would stay, and
//! every such replay would start one more epoch: a healthy replica kept
//! write-only, unreadable, until refilled again). The scripts are called
//! here directly through the replica's fred client, with raw arguments and
//! a run id no process has, and the epoch keys and the record are compared
//! before and after.

mod support;

use fred::prelude::*;
use quorum_sessions::codec;
use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::{MergeMode, Replica};
use quorum_sessions::stamp::encode_ms;
use quorum_sessions::testing::{live_record, stamp_at, wall_clock_ms};
use quorum_sessions::FieldEntry;

const MERGE_LUA: &str = concat!(
    include_str!("../src/replica/redis/common.lua"),
    include_str!("../src/replica/redis/merge.lua")
);
const EPOCH_LUA: &str = concat!(
    include_str!("../src/replica/redis/common.lua"),
    include_str!("../src/replica/redis/epoch.lua")
);
/// A run id of the right form that no Redis process has.
const STALE_RUN_ID: &str = "00000000000000000000deadbeef000000000000";

/// What the scripts may change: the epoch, its run id, and the record keys.
#[derive(Debug, PartialEq)]
struct Snapshot {
    epoch: Option<String>,
    run: Option<String>,
    records: Vec<(String, Value, i64)>,
}

async fn snapshot(replica: &RedisReplica, keys: &[&str]) -> Snapshot {
    let client = replica.client();
    let epoch = client.get("qs:epoch").await.expect("GET epoch");
    let run = client.get("qs:epoch:run").await.expect("GET run");
    let mut records = Vec::new();
    for key in keys {
        let redis_key = replica.redis_key(key);
        let hash: Value = client.hgetall(&redis_key).await.expect("HGETALL");
        let ttl: i64 = client.pttl(&redis_key).await.expect("PTTL");
        // The TTL only to the second: it counts down between the snapshots.
        records.push(((*key).to_owned(), hash, ttl.max(-2) / 10_000));
    }
    Snapshot {
        epoch,
        run,
        records,
    }
}

/// `EVAL merge.lua` as `RedisReplica::merge` sends it, with `run_id`.
async fn merge_with_run_id(
    replica: &RedisReplica,
    key: &str,
    delta: &quorum_sessions::Record,
    now: u64,
    run_id: &str,
) -> Result<Value, Error> {
    let keys = vec![
        replica.redis_key(key),
        "qs:epoch".into(),
        "qs:epoch:run".into(),
    ];
    // One record: its count, the call's candidate, margin and run id, then
    // the record's mode, now and item count.
    let pairs = codec::encode_pairs(delta);
    let mut args: Vec<Value> = vec![
        "1".into(),
        "0123456789abcdef".into(),
        "60000".into(),
        run_id.into(),
        "u".into(),
        encode_ms(now).into(),
        (2 * pairs.len()).to_string().into(),
    ];
    for (name, value) in pairs {
        args.push(Value::Bytes(name.into()));
        args.push(Value::Bytes(value.into()));
    }
    replica.client().eval(MERGE_LUA, keys, args).await
}

/// `EVAL epoch.lua` (`get` or `complete`) with `run_id`.
async fn epoch_with_run_id(
    replica: &RedisReplica,
    op: &str,
    id: &str,
    run_id: &str,
) -> Result<Value, Error> {
    let keys = vec!["qs:epoch".to_owned(), "qs:epoch:run".to_owned()];
    let args: Vec<Value> = vec![op.into(), id.into(), run_id.into()];
    replica.client().eval(EPOCH_LUA, keys, args).await
}

/// A call with a stale run id left the epoch keys and the records as they
/// were (`before`), and was answered the STALERUN error reply.
async fn assert_unchanged_and_stale(
    what: &str,
    replica: &RedisReplica,
    keys: &[&str],
    before: &Snapshot,
    reply: Result<Value, Error>,
) {
    assert_eq!(
        &snapshot(replica, keys).await,
        before,
        "{what}: a call with a stale run id changed the epoch or a record (reply {reply:?})"
    );
    match reply {
        Err(error) => assert!(
            error.details().starts_with("STALERUN"),
            "{what}: expected a STALERUN error reply, got {error:?}"
        ),
        Ok(value) => panic!("{what}: a stale run id was answered {value:?}"),
    }
}

#[tokio::test]
async fn a_script_with_another_process_run_id_changes_nothing() {
    let nodes = support::RedisNodes::start(1).await;
    let replica = nodes.node(0).replica().await;
    let now = wall_clock_ms();
    let mut record = live_record(now);
    record
        .fields
        .insert("a".into(), FieldEntry::value(stamp_at(now, 10, 0, 1), "x"));
    replica
        .merge("t:{kept}", &record, MergeMode::Upsert, now)
        .await
        .expect("merge");
    let epoch = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(epoch.id).await.expect("mark"));

    // A later write to a record that exists, in a complete epoch made by
    // the running process.
    let mut later = live_record(now);
    later
        .fields
        .insert("a".into(), FieldEntry::value(stamp_at(now, 1, 0, 2), "y"));
    let keys = ["t:{kept}", "t:{new}"];
    let before = snapshot(&replica, &keys).await;
    assert!(before.epoch.as_deref().is_some_and(|e| e.ends_with(":c")));
    let reply = merge_with_run_id(&replica, "t:{kept}", &later, now, STALE_RUN_ID).await;
    assert_unchanged_and_stale("merge on a live epoch", &replica, &keys, &before, reply).await;
    let reply = merge_with_run_id(&replica, "t:{new}", &later, now, STALE_RUN_ID).await;
    assert_unchanged_and_stale("merge creating a record", &replica, &keys, &before, reply).await;
    let reply = epoch_with_run_id(&replica, "get", "0123456789abcdef", STALE_RUN_ID).await;
    assert_unchanged_and_stale("epoch get on a live epoch", &replica, &keys, &before, reply).await;

    // No epoch at all (as after a restart empty: the record keys are kept
    // here to see that nothing is written to them either).
    replica
        .client()
        .del::<i64, _>(vec!["qs:epoch", "qs:epoch:run"])
        .await
        .expect("DEL");
    let before = snapshot(&replica, &keys).await;
    assert_eq!(
        (before.epoch.as_deref(), before.run.as_deref()),
        (None, None)
    );
    let reply = merge_with_run_id(&replica, "t:{new}", &later, now, STALE_RUN_ID).await;
    assert_unchanged_and_stale("merge with no epoch", &replica, &keys, &before, reply).await;
    let reply = epoch_with_run_id(&replica, "get", "0123456789abcdef", STALE_RUN_ID).await;
    assert_unchanged_and_stale("epoch get with no epoch", &replica, &keys, &before, reply).await;

    // An epoch made by the running process, incomplete: `complete` with a
    // stale run id leaves it incomplete.
    let fresh = replica.ping().await.expect("ping makes a new epoch");
    assert!(!fresh.complete);
    let before = snapshot(&replica, &keys).await;
    let reply = epoch_with_run_id(
        &replica,
        "complete",
        &format!("{:016x}", fresh.id),
        STALE_RUN_ID,
    )
    .await;
    assert_unchanged_and_stale("epoch complete", &replica, &keys, &before, reply).await;

    // The replica itself still works on that epoch, and its reads see it.
    replica
        .merge("t:{new}", &later, MergeMode::Upsert, now)
        .await
        .expect("merge with the right run id");
    let read = replica.read("t:{new}").await.expect("read");
    assert_eq!(read.epoch, fresh);
    assert!(read.record.is_some());
}
