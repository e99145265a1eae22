//! Proves that every replica implementation follows the `Replica` contract:
//! the conformance suite (`quorum_sessions::testing`) runs against
//! `InMemoryReplica`, a healthy `FaultyReplica<InMemoryReplica>`, and a
//! `RedisReplica` on a real Redis container (the Lua merge). It also proves
//! the Redis-specific promises: foreign data is reported `Corrupt` and left
//! untouched, a Redis restarted empty or from a snapshot gets a new epoch
//! (and keeps the snapshot's data), an evicting Redis is
//! refused, a wrong password and a `rediss://` URL without TLS fail clearly,
//! and a replica connects while its node is down. Merge calls carry several
//! records only when merges wait: one foreign record among good ones in one
//! call is `Corrupt` and untouched while the others are merged, and
//! sequential merges go one per call, without added latency.

mod support;

use std::time::Duration;

use quorum_sessions::replica::faulty::FaultyReplica;
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::redis::{
    EvictionCheck, RedisConnectError, RedisReplica, RedisReplicaConfig,
};
use quorum_sessions::replica::{MergeMode, Replica};
use quorum_sessions::testing::{live_record, run_conformance, stamp_at, wall_clock_ms};
use quorum_sessions::{FieldEntry, ReplicaError};

#[tokio::test]
async fn in_memory_replica_conforms() {
    run_conformance(&InMemoryReplica::new("memory")).await;
}

#[tokio::test]
async fn healthy_faulty_replica_conforms() {
    let (replica, _handle) = FaultyReplica::new(InMemoryReplica::new("faulty"), 1);
    run_conformance(&replica).await;
}

#[tokio::test]
async fn redis_replica_conforms_and_guards_its_data() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = node.replica().await;
    run_conformance(&replica).await;

    foreign_data_is_corrupt_and_untouched(node, &replica).await;
    a_flush_behind_the_replicas_back_makes_no_miss_authoritative(node, &replica).await;
    only_a_record_written_in_the_confirmed_epoch_skips_the_epoch_check(node, &replica).await;
    restart_empty_gives_a_new_epoch(node, &replica).await;
    restart_from_a_snapshot_gives_a_new_epoch(node, &replica).await;
    evicting_redis_is_refused_or_warned(node).await;
    wrong_password_is_a_clear_error(node).await;
}

async fn foreign_data_is_corrupt_and_untouched(node: &support::RedisNode, replica: &RedisReplica) {
    let now = wall_clock_ms();
    let mut delta = live_record(now);
    delta
        .fields
        .insert("a".into(), FieldEntry::value(stamp_at(now, 1, 0, 1), "x"));
    // The expiry and cap of a valid record (the format version apart).
    let times = ["m:e", "000000000001", "m:c", "000000000001"];
    let summary = "00000000000000000000000000000001";
    let cases: [(&str, Vec<&str>); 9] = [
        ("t:{string}", vec!["SET", "qs:t:{string}", "hello"]),
        (
            "t:{unknown}",
            vec!["HSET", "qs:t:{unknown}", "name", "alice"],
        ),
        (
            "t:{short}",
            [
                &["HSET", "qs:t:{short}", "m:v", "1"][..],
                &times,
                &["f:a", "x"],
            ]
            .concat(),
        ),
        // Format 2 is read since issue 15 part 6; format 3 is a newer
        // build's (tests/upgrade.rs checks its message).
        (
            "t:{format}",
            [&["HSET", "qs:t:{format}", "m:v", "3"][..], &times].concat(),
        ),
        (
            "t:{epoch}",
            [
                &["HSET", "qs:t:{epoch}", "m:v", "1"][..],
                &times,
                &["m:ep", "not-an-epoch-id!"],
            ]
            .concat(),
        ),
        (
            "t:{eponly}",
            vec!["HSET", "qs:t:{eponly}", "m:ep", "0123456789abcdef"],
        ),
        // With a summary the merge reads only the fields the delta names:
        // what it reads is still checked.
        (
            "t:{fastbad}",
            [
                &["HSET", "qs:t:{fastbad}", "m:v", "1", "m:h", summary][..],
                &times,
                &["f:a", "not an entry"],
            ]
            .concat(),
        ),
        (
            "t:{badsummary}",
            [
                &["HSET", "qs:t:{badsummary}", "m:v", "1", "m:h", "zz"][..],
                &times,
            ]
            .concat(),
        ),
        (
            "t:{nometa}",
            vec![
                "HSET",
                "qs:t:{nometa}",
                "f:a",
                "0000000000000000000000000000000000v",
            ],
        ),
    ];
    for (key, write) in cases {
        node.command(&write).await;
        let redis_key = format!("qs:{key}");
        let dump_before = node.command(&["DUMP", &redis_key]).await;
        let merged = replica.merge(key, &delta, MergeMode::Upsert, now).await;
        assert!(
            matches!(merged, Err(ReplicaError::Corrupt { .. })),
            "{key}: merge gave {merged:?}"
        );
        let read = replica.read(key).await;
        assert!(
            matches!(read, Err(ReplicaError::Corrupt { .. })),
            "{key}: read gave {read:?}"
        );
        assert_eq!(
            node.command(&["DUMP", &redis_key]).await,
            dump_before,
            "{key}: foreign data changed"
        );
    }
    // A foreign value in the epoch key is corrupt too, and left alone.
    node.command(&["SET", "qs:epoch", "not-an-epoch"]).await;
    assert!(matches!(
        replica.ping().await,
        Err(ReplicaError::Corrupt { .. })
    ));
    assert_eq!(node.command(&["GET", "qs:epoch"]).await, "$12");
    node.command(&["DEL", "qs:epoch"]).await;
}

/// Reads skip the epoch `MGET` before their `HGETALL` once the epoch is
/// confirmed complete on the connection; a `FLUSHALL` keeps the connection
/// (no reconnection to notice), so this proves that a read is still checked
/// against the epoch key: after the flush, neither a record that was there
/// nor one that never was reads as an authoritative "not found" (complete
/// epoch); a record written whole after the flush (a create) is not read in
/// the old, complete epoch; and the next merge reports a new, incomplete
/// epoch.
async fn a_flush_behind_the_replicas_back_makes_no_miss_authoritative(
    node: &support::RedisNode,
    replica: &RedisReplica,
) {
    let now = wall_clock_ms();
    replica
        .merge("t:{flushed}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
    let epoch = replica.ping().await.expect("ping");
    replica.mark_epoch_complete(epoch.id).await.expect("mark");
    let complete = replica.ping().await.expect("ping");
    assert!(complete.complete, "marked complete");
    // Confirmed: these reads take the one-command path.
    for _ in 0..3 {
        let found = replica.read("t:{flushed}").await.expect("read");
        assert!(found.record.is_some());
        assert_eq!(found.epoch, complete);
        let miss = replica.read("t:{never}").await.expect("read");
        assert_eq!(miss.record, None);
        assert_eq!(miss.epoch, complete, "a confirmed miss is authoritative");
    }
    node.command(&["FLUSHALL"]).await;
    // Another app server creates a record on the flushed node: this replica
    // heard nothing of it (its confirmation still names the old epoch).
    let other = node.replica().await;
    other
        .merge("t:{created}", &live_record(now), MergeMode::Create, now)
        .await
        .expect("create after the flush");
    let created = replica.read("t:{created}").await.expect("read");
    assert!(created.record.is_some());
    assert!(
        !created.epoch.complete && created.epoch.id != complete.id,
        "a record written after the flush is not read in the old epoch: {:?}",
        created.epoch
    );
    for key in ["t:{flushed}", "t:{never}"] {
        let read = replica.read(key).await.expect("read after the flush");
        assert_eq!(read.record, None, "{key}");
        assert!(
            !read.epoch.complete && read.epoch.id != complete.id,
            "{key}: a miss after a flush must not count: {:?}",
            read.epoch
        );
    }
    let merged = replica
        .merge("t:{flushed}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge after the flush");
    assert_ne!(merged.epoch.id, complete.id, "the flush made a new epoch");
    assert!(!merged.epoch.complete);
    let found = replica.read("t:{flushed}").await.expect("read");
    assert!(!found.epoch.complete, "the new epoch is not confirmed");
}

/// A confirmed read skips the epoch `MGET` only for a record whose `m:ep`
/// names the confirmed epoch (written by a merge in it). Proved by losing
/// the epoch key alone, the one loss that keeps records: a record written
/// in the epoch still reads in it (documented: what it returns is what the
/// replica holds), while one without `m:ep` (as a refill's `RESTORE` makes
/// them) and one naming another epoch are checked against the epoch key,
/// and so report the new, incomplete epoch.
async fn only_a_record_written_in_the_confirmed_epoch_skips_the_epoch_check(
    node: &support::RedisNode,
    replica: &RedisReplica,
) {
    let now = wall_clock_ms();
    for key in ["t:{ep-own}", "t:{ep-none}", "t:{ep-other}"] {
        replica
            .merge(key, &live_record(now), MergeMode::Upsert, now)
            .await
            .expect("merge");
    }
    node.command(&["HDEL", "qs:t:{ep-none}", "m:ep"]).await;
    node.command(&["HSET", "qs:t:{ep-other}", "m:ep", "0123456789abcdef"])
        .await;
    let epoch = replica.ping().await.expect("ping");
    replica.mark_epoch_complete(epoch.id).await.expect("mark");
    let complete = replica.ping().await.expect("ping");
    for key in ["t:{ep-own}", "t:{ep-none}", "t:{ep-other}"] {
        let read = replica.read(key).await.expect("read");
        assert!(read.record.is_some(), "{key}");
        assert_eq!(read.epoch, complete, "{key}: read in the confirmed epoch");
    }
    // Confirmed again just before, so that the read below comes well within
    // RECONFIRM_AFTER of a confirmation even on a slow machine.
    assert_eq!(replica.ping().await.expect("ping"), complete);
    node.command(&["DEL", "qs:epoch"]).await;
    let own = replica.read("t:{ep-own}").await.expect("read");
    assert!(own.record.is_some());
    assert_eq!(
        own.epoch, complete,
        "written in the confirmed epoch: no MGET"
    );
    for key in ["t:{ep-none}", "t:{ep-other}"] {
        let read = replica.read(key).await.expect("read");
        assert!(read.record.is_some(), "{key}");
        assert!(
            !read.epoch.complete && read.epoch.id != complete.id,
            "{key}: checked against the epoch key: {:?}",
            read.epoch
        );
    }
}

async fn restart_empty_gives_a_new_epoch(node: &support::RedisNode, replica: &RedisReplica) {
    let now = wall_clock_ms();
    replica
        .merge("t:{kept}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
    let before = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(before.id).await.expect("mark"));
    node.restart_empty().await;
    let after = poll_until_ok(|| replica.ping()).await;
    assert_ne!(
        after.id, before.id,
        "a Redis restarted empty has a new epoch"
    );
    assert!(!after.complete, "the new epoch is incomplete");
    let read = replica.read("t:{kept}").await.expect("read");
    assert_eq!(read.record, None);
    assert_eq!(read.epoch, after);
}

async fn restart_from_a_snapshot_gives_a_new_epoch(
    node: &support::RedisNode,
    replica: &RedisReplica,
) {
    let now = wall_clock_ms();
    let before = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(before.id).await.expect("mark"));
    replica
        .merge("t:{saved}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
    node.save().await;
    replica
        .merge("t:{after-save}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
    node.stop().await;
    node.start().await;
    let after = poll_until_ok(|| replica.ping()).await;
    assert_ne!(
        after.id, before.id,
        "a Redis restored from a snapshot has a new epoch"
    );
    assert!(!after.complete, "the new epoch is incomplete");
    assert!(
        !replica.mark_epoch_complete(before.id).await.expect("mark"),
        "the old epoch is gone"
    );
    let saved = replica.read("t:{saved}").await.expect("read");
    assert!(saved.record.is_some(), "the snapshot's data is back");
    assert_eq!(saved.epoch, after);
    assert_eq!(
        replica.read("t:{after-save}").await.expect("read").record,
        None
    );
    node.restart_empty().await; // the dump is gone with the old container
    assert_eq!(node.dbsize().await, 0);
}

/// Retries while fred reconnects after a restart.
async fn poll_until_ok<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ReplicaError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() < deadline && error.is_health_failure() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("replica did not come back: {error}"),
        }
    }
}

async fn evicting_redis_is_refused_or_warned(node: &support::RedisNode) {
    assert_eq!(
        node.command(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])
            .await,
        "+OK"
    );
    let refused = RedisReplica::connect(node.replica_config()).await;
    assert!(
        matches!(&refused, Err(RedisConnectError::Eviction { policy, .. }) if policy == "volatile-lru"),
        "an evicting Redis is refused: {refused:?}"
    );
    let mut config = node.replica_config();
    config.eviction_check = EvictionCheck::Warn;
    let warned = RedisReplica::connect(config)
        .await
        .expect("warn mode connects");
    warned.ping().await.expect("warn mode serves");
    assert_eq!(
        node.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await,
        "+OK"
    );
}

async fn wrong_password_is_a_clear_error(node: &support::RedisNode) {
    assert_eq!(
        node.command(&["ACL", "SETUSER", "app", "on", ">right", "~qs:*", "+@all"])
            .await,
        "+OK"
    );
    let mut config = node.replica_config();
    config.username = Some("app".into());
    config.password = Some("wrong".into());
    let started = std::time::Instant::now();
    let result = RedisReplica::connect(config).await;
    match result {
        Err(error @ RedisConnectError::Auth { .. }) => {
            assert!(
                error.to_string().contains("redis-0"),
                "the error names the replica: {error}"
            );
        }
        other => panic!("a wrong password must fail clearly, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the auth error came at once"
    );
    let mut config = node.replica_config();
    config.username = Some("app".into());
    config.password = Some("right".into());
    let replica = RedisReplica::connect(config).await.expect("right password");
    replica.ping().await.expect("ACL user can run the scripts");
    // A user without CONFIG: the policy cannot be checked, a warning only.
    let acl = [
        "ACL", "SETUSER", "noconfig", "on", ">pw", "~qs:*", "+@all", "-config",
    ];
    assert_eq!(node.command(&acl).await, "+OK");
    let mut config = node.replica_config();
    config.username = Some("noconfig".into());
    config.password = Some("pw".into());
    let replica = RedisReplica::connect(config)
        .await
        .expect("no CONFIG permission");
    replica.ping().await.expect("serves without CONFIG");
}

/// The merges that wait while a call is in flight leave together as one
/// call; each record is answered on its own: foreign data (a string, a
/// corrupt hash read on the fast path, a hash of unknown fields) is
/// `Corrupt` and left untouched, while the good records of the same call
/// are merged. One call in flight (current-thread runtime: the spawned
/// sender runs only once every merge below is queued), so the call after
/// the first carries all of them.
#[tokio::test]
async fn one_foreign_record_in_a_merge_call_leaves_the_others_merged() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let mut config = node.replica_config();
    config.merge_calls_in_flight = 1;
    let replica = RedisReplica::connect(config).await.expect("connect");
    let now = wall_clock_ms();
    let summary = "00000000000000000000000000000001";
    node.command(&["SET", "qs:b:{string}", "hello"]).await;
    let fastbad = [
        "HSET",
        "qs:b:{fastbad}",
        "m:v",
        "1",
        "m:h",
        summary,
        "m:e",
        "000000000001",
        "m:c",
        "000000000001",
        "f:a",
        "not an entry",
    ];
    node.command(&fastbad).await;
    node.command(&["HSET", "qs:b:{unknown}", "name", "alice"])
        .await;
    let bad = ["b:{string}", "b:{fastbad}", "b:{unknown}"];
    let mut dumps = Vec::new();
    for key in bad {
        dumps.push(node.command(&["DUMP", &format!("qs:{key}")]).await);
    }
    let mut delta = live_record(now);
    delta
        .fields
        .insert("a".into(), FieldEntry::value(stamp_at(now, 1, 0, 1), "x"));
    let keys = [
        "b:{good-1}",
        bad[0],
        "b:{good-2}",
        bad[1],
        "b:{good-3}",
        bad[2],
        "b:{good-4}",
    ];
    let before = replica.merge_call_stats();
    let first = replica.merge("b:{first}", &delta, MergeMode::Upsert, now);
    let rest = keys
        .iter()
        .map(|key| replica.merge(key, &delta, MergeMode::Upsert, now));
    let (first, replies) = futures::future::join(first, futures::future::join_all(rest)).await;
    first.expect("the first merge");
    let stats = replica.merge_call_stats();
    assert_eq!(stats.calls - before.calls, 2, "{stats:?}");
    assert_eq!(stats.multi_record_calls - before.multi_record_calls, 1);
    assert_eq!(stats.largest_call, keys.len() as u64, "one call: {stats:?}");
    for (key, reply) in keys.iter().zip(&replies) {
        if bad.contains(key) {
            assert!(
                matches!(reply, Err(ReplicaError::Corrupt { .. })),
                "{key}: {reply:?}"
            );
        } else {
            let reply = reply.as_ref().expect("a good record is merged");
            assert_eq!(reply.status, quorum_sessions::replica::MergeStatus::Applied);
            let read = replica.read(key).await.expect("read");
            assert_eq!(read.record.as_ref(), Some(&delta), "{key}");
        }
    }
    for (key, dump) in bad.iter().zip(dumps) {
        assert_eq!(
            node.command(&["DUMP", &format!("qs:{key}")]).await,
            dump,
            "{key}: foreign data changed"
        );
    }
}

/// At low load nothing waits: each sequential merge is its own call of one
/// record, dispatched at once by its caller (counted: `sent_at_once`). The
/// time against merges that skip the queue (`merge_batch_max_keys = 1`),
/// in alternating rounds, is printed, not asserted.
#[tokio::test]
async fn sequential_merges_go_one_per_call_without_waiting() {
    const ROUNDS: usize = 4;
    const MERGES_PER_ROUND: usize = 50;
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let batched = node.replica().await;
    let mut config = node.replica_config();
    config.merge_batch_max_keys = 1;
    let direct = RedisReplica::connect(config).await.expect("connect");
    let now = wall_clock_ms();
    let mut elapsed = [Duration::ZERO; 2];
    for round in 0..ROUNDS {
        for (side, replica) in [&direct, &batched].into_iter().enumerate() {
            let started = std::time::Instant::now();
            for index in 0..MERGES_PER_ROUND {
                let mut delta = live_record(now);
                let stamp = stamp_at(now, 1, (round * MERGES_PER_ROUND + index) as u32, 1);
                delta
                    .fields
                    .insert("n".into(), FieldEntry::value(stamp, index.to_string()));
                let key = format!("l:{{{side}-{}}}", index % 7);
                replica
                    .merge(&key, &delta, MergeMode::Upsert, now)
                    .await
                    .expect("merge");
            }
            elapsed[side] += started.elapsed();
        }
    }
    let merges = (ROUNDS * MERGES_PER_ROUND) as u64;
    let stats = batched.merge_call_stats();
    assert_eq!(stats.calls, merges, "{stats:?}");
    assert_eq!(stats.records, merges, "{stats:?}");
    assert_eq!(stats.multi_record_calls, 0, "{stats:?}");
    // Each lone merge found a call slot free and its own call left at
    // once, from its caller: nothing waited for a call in flight.
    assert_eq!(stats.sent_at_once, merges, "{stats:?}");
    assert_eq!(direct.merge_call_stats().calls, merges);
    // A figure, not a check (the machine is shared): what the queue costs
    // a lone merge.
    let [direct_time, batched_time] = elapsed;
    eprintln!("{merges} sequential merges: direct {direct_time:?}, queued {batched_time:?}");
}

#[tokio::test]
async fn a_rediss_url_needs_the_tls_feature() {
    // Without `tls` the connect is refused before any plain-text connection;
    // with it, the replica is made (the node on port 1 is simply down).
    let mut config = RedisReplicaConfig::from_url("tls-check", "rediss://127.0.0.1:1");
    config.connect_timeout = Duration::from_millis(200);
    let result = RedisReplica::connect(config).await;
    if cfg!(feature = "tls") {
        assert!(result.is_ok(), "{result:?}");
    } else {
        assert!(
            matches!(result, Err(RedisConnectError::TlsNotEnabled { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn replica_connects_while_its_node_is_down_and_serves_once_it_is_up() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    node.stop().await;
    let started = std::time::Instant::now();
    let replica = node.replica().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connect does not hang on a down node"
    );
    let down = replica.ping().await;
    assert!(
        matches!(&down, Err(e) if e.is_health_failure()),
        "a down node is a health failure: {down:?}"
    );
    node.start().await;
    let epoch = poll_until_ok(|| replica.ping()).await;
    assert!(!epoch.complete);
}
