//! Rolling upgrades on real Redis (issue 15 part 6, `docs/upgrades.md`):
//! records in stored format 1, written raw exactly as builds before the
//! summaries wrote them, are read and merged by this build; with
//! `StoredFormat::V1` every hash this build writes (merges and refills)
//! stays what such a build reads; with `V2` a merge upgrades a record to
//! format 2 and a later format-1 writer keeps it format 2 with its
//! summaries right; a record of a newer format is refused and untouched.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use quorum_sessions::codec;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig, DEFAULT_KEY_PREFIX};
use quorum_sessions::replica::{apply_merge, MergeMode, MergeStatus, Replica};
use quorum_sessions::testing::wall_clock_ms;
use quorum_sessions::{
    ClusterConfig, Coordinator, FieldEntry, Mutation, Record, ReplicaError, SessionStore, Stamp,
    StoredFormat, WriteOptions,
};

const HOUR_MS: u64 = 3_600_000;
/// The hash fields of stored format 1 besides `f:<name>`: what a build
/// before the summaries accepts (anything else it reads as corrupt).
const V1_META: [&str; 7] = ["m:v", "m:e", "m:c", "m:t", "m:o", "m:p", "m:ep"];

/// A record as the previous build held it: two fields, an origin, an hour
/// to live.
fn previous_record(now: u64) -> Record {
    let mut record = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    record.format = 1;
    record.origin = Some(Stamp::new(now - 2_000, 0, 7));
    record.fields.insert(
        "cart".into(),
        FieldEntry::value(Stamp::new(now - 2_000, 0, 7), "apples"),
    );
    record.fields.insert(
        "theme".into(),
        FieldEntry::value(Stamp::new(now - 1_000, 3, 7), "dark"),
    );
    record
}

/// Writes `record` under `key` as the previous build's merge left it: the
/// codec's pairs with `m:v` = 1, no summary, the epoch of that build's
/// last write in `m:ep`, and its TTL.
async fn write_as_previous_build(client: &Client, key: &str, record: &Record) {
    let mut pairs: Vec<(String, String)> = codec::encode_pairs(record)
        .into_iter()
        .map(|(name, value)| {
            let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("ASCII test values");
            (text(name), text(value))
        })
        .collect();
    assert_eq!(pairs[0], ("m:v".to_owned(), "1".to_owned()));
    pairs.push(("m:ep".into(), "0123456789abcdef".into()));
    let redis_key = format!("{DEFAULT_KEY_PREFIX}{key}");
    let () = client.hset(&redis_key, pairs).await.expect("HSET");
    let at = (record.effective_expiry_ms() + 60_000) as i64;
    let _: bool = client
        .pexpire_at(&redis_key, at, None)
        .await
        .expect("PEXPIREAT");
}

/// The stored hash of `key`, raw.
async fn raw(client: &Client, key: &str) -> HashMap<String, Vec<u8>> {
    client
        .hgetall(format!("{DEFAULT_KEY_PREFIX}{key}"))
        .await
        .expect("HGETALL")
}

/// The check a build before the summaries makes of a hash: only format-1
/// names, `m:v` = 1. (`m:h`/`m:u` were "unknown hash field" there.)
fn previous_build_reads(hash: &HashMap<String, Vec<u8>>) -> bool {
    hash.get("m:v").map(Vec::as_slice) == Some(b"1")
        && hash
            .keys()
            .all(|name| name.starts_with("f:") || V1_META.contains(&name.as_str()))
}

fn config(node: &support::RedisNode, format: StoredFormat) -> RedisReplicaConfig {
    let mut config = node.replica_config();
    config.request_timeout = std::time::Duration::from_secs(5); // a loaded box
    config.stored_format = format;
    config
}

/// (a) and (b): records the previous build wrote on three replicas are
/// read through a coordinator of this build (built with
/// `stored_format(V1)`) with their values and stamps, an update merges into
/// them, and every hash written (the merge's, a new record's, then an
/// anti-entropy refill's of a flushed replica) is one the previous build
/// reads: `m:v` = 1, no summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_build_s_records_are_read_and_merged_and_stay_readable_to_it() {
    let nodes = support::RedisNodes::start(3).await;
    let now = wall_clock_ms();
    let old = previous_record(now);
    let key = "s:{old-1}";
    let mut cluster = ClusterConfig::default();
    cluster.anti_entropy.on_rejoin = false; // the pass below is run by hand
    let mut builder = SessionStore::builder()
        .cluster_config(cluster)
        .stored_format(StoredFormat::V1);
    for node in nodes.nodes() {
        // Another format set per replica is overridden by the builder's.
        builder = builder.redis_replica(config(node, StoredFormat::V2));
    }
    // Connected first: its bootstrap proves the new cluster empty (as the
    // previous build's did), then the previous build's records appear.
    let coordinator: Coordinator = builder.connect_coordinator().await.expect("connect");
    let mut clients = Vec::new();
    for node in nodes.nodes() {
        let replica = RedisReplica::connect(config(node, StoredFormat::V2))
            .await
            .expect("connect");
        write_as_previous_build(replica.client(), key, &old).await;
        clients.push(replica);
    }

    let read = coordinator
        .read(key)
        .await
        .expect("read")
        .expect("a record");
    assert_eq!(read.fields, old.fields, "values and stamps as written");
    assert_eq!(read.origin, old.origin);
    assert_eq!(read.format, 1);

    // Acknowledged by every replica: none is still being written below.
    let update = Mutation::update(now + HOUR_MS, now + 2 * HOUR_MS).set("theme", "light");
    coordinator
        .write_with(key, update, WriteOptions::all())
        .await
        .expect("update");
    // A session created by this build in V1 is format 1 too.
    let created = "s:{new-1}";
    let create = Mutation::create(now + HOUR_MS, now + 2 * HOUR_MS).set("cart", "plums");
    coordinator
        .write_with(created, create, WriteOptions::all())
        .await
        .expect("create");
    let read = coordinator
        .read(key)
        .await
        .expect("read")
        .expect("a record");
    assert_eq!(read.get("cart"), Some(&b"apples"[..]), "kept");
    assert_eq!(read.get("theme"), Some(&b"light"[..]), "updated");
    assert!(read.fields["theme"].stamp > old.fields["theme"].stamp);
    assert_eq!(read.fields["cart"], old.fields["cart"]);
    assert_eq!(read.format, 1);

    // Emptied: the anti-entropy pass refills it (`RESTORE` of the record).
    clients[2]
        .client()
        .flushall::<()>(false)
        .await
        .expect("FLUSHALL");
    let report = coordinator.anti_entropy().await.expect("a pass ran");
    assert!(
        report
            .sent_to
            .iter()
            .any(|(name, _)| name == clients[2].name()),
        "the flushed replica was refilled: {report:?}"
    );
    for replica in &clients {
        for key in [key, created] {
            let hash = raw(replica.client(), key).await;
            assert!(
                previous_build_reads(&hash),
                "{}: {:?}",
                replica.name(),
                hash.keys()
            );
        }
        let mine = replica.read(key).await.expect("read").record.expect("held");
        assert!(mine.same_data(&read), "{}", replica.name());
    }
}

/// (c) With `V2` a merge into a format-1 record writes format 2 and the
/// summaries; a later format-1 writer keeps it format 2 and keeps `m:h` and
/// `m:u` right; and the next merge, which takes the fast path (no
/// `HGETALL`), gives exactly the Rust merge's record. A format-1 record
/// holding summaries (the unreleased interim build) merged by a format-1
/// writer loses them (they would go stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_2_upgrades_a_record_and_a_format_1_writer_keeps_it() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let v2 = RedisReplica::connect(config(node, StoredFormat::V2))
        .await
        .expect("connect");
    let v1 = RedisReplica::connect(config(node, StoredFormat::V1))
        .await
        .expect("connect");
    let now = wall_clock_ms();
    let key = "s:{upgrade}";
    let mut model = previous_record(now);
    write_as_previous_build(v2.client(), key, &model).await;

    // (delta, replica that writes it, its format); each wins a field.
    let mut steps: Vec<(Record, &RedisReplica, u8)> = Vec::new();
    let mut upgrade = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    upgrade.fields.insert(
        "theme".into(),
        FieldEntry::value(Stamp::new(now, 0, 1), "light"),
    );
    steps.push((upgrade, &v2, 2));
    let mut older_writer = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    older_writer.fields.insert(
        "cart".into(),
        FieldEntry::value(Stamp::new(now + 1, 0, 2), "pears"),
    );
    older_writer.fields.insert(
        "banner".into(),
        FieldEntry::value(Stamp::new(now + 1, 0, 2), "hi").with_until(now + HOUR_MS),
    );
    steps.push((older_writer, &v1, 1));
    let mut fast = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    fast.fields.insert(
        "theme".into(),
        FieldEntry::value(Stamp::new(now + 2, 0, 1), "blue"),
    );
    // An until on the record takes the whole-hash path: a field-only update
    // after it is dropped, then the last one takes the fast path.
    let mut drop_banner = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    drop_banner.fields.insert(
        "banner".into(),
        FieldEntry::removed(Stamp::new(now + 2, 0, 2)),
    );
    steps.push((drop_banner, &v1, 1));
    steps.push((fast, &v1, 1));

    let last = steps.len() - 1;
    for (index, (mut delta, replica, format)) in steps.into_iter().enumerate() {
        delta.format = format;
        let (status, merged) = apply_merge(Some(&model), &delta, MergeMode::Upsert, now);
        assert_eq!(status, MergeStatus::Applied);
        model = merged.expect("merged");
        let hgetall_before = hgetall_calls(replica.client()).await;
        let reply = replica
            .merge(key, &delta, MergeMode::Upsert, now)
            .await
            .expect("merge");
        assert_eq!(reply.status, MergeStatus::Applied, "step {index}");
        if index == last {
            assert_eq!(
                hgetall_calls(replica.client()).await,
                hgetall_before,
                "the last merge took the fast path"
            );
        }
        let read = v2.read(key).await.expect("read").record.expect("held");
        assert_eq!(read, model, "step {index}: the Rust merge's record");
        assert_eq!(read.format, 2, "step {index}: format 2 from the first");
        let hash = raw(v2.client(), key).await;
        let largest = model
            .fields
            .values()
            .map(|e| e.stamp)
            .max()
            .expect("fields");
        assert_eq!(
            hash.get("m:h").map(Vec::as_slice),
            Some(largest.encode().as_bytes()),
            "step {index}: m:h"
        );
        let untils = model.fields.values().any(|e| e.until_ms.is_some());
        assert_eq!(hash.contains_key("m:u"), untils, "step {index}: m:u");
    }

    // The interim build's record: format 1 with summaries.
    let interim = "s:{interim}";
    let record = previous_record(now);
    write_as_previous_build(v1.client(), interim, &record).await;
    let summary = Stamp::new(now - 1_000, 3, 7).encode();
    let () = v1
        .client()
        .hset(format!("{DEFAULT_KEY_PREFIX}{interim}"), ("m:h", summary))
        .await
        .expect("HSET");
    let mut delta = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    delta.fields.insert(
        "cart".into(),
        FieldEntry::value(Stamp::new(now, 0, 3), "figs"),
    );
    v1.merge(interim, &delta, MergeMode::Upsert, now)
        .await
        .expect("merge");
    let hash = raw(v1.client(), interim).await;
    assert!(previous_build_reads(&hash), "{:?}", hash.keys());
    let read = v1.read(interim).await.expect("read").record.expect("held");
    assert_eq!(read.get("cart"), Some(&b"figs"[..]));
}

/// `HGETALL` calls so far (scripts' included), from `INFO commandstats`.
async fn hgetall_calls(client: &Client) -> u64 {
    let stats: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_hgetall:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// (d) A record claiming format 3 (a newer build's) is refused by reads and
/// merges with the "newer build" error, through the fast path (it holds a
/// summary) and the whole-hash path (it does not), and left byte for byte
/// as it was; a coordinator read reports it and does not repair it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_refused_and_left_untouched() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = Arc::new(
        RedisReplica::connect(config(node, StoredFormat::V2))
            .await
            .expect("connect"),
    );
    // Connected first: its bootstrap proves the new cluster empty.
    let replicas: Vec<Arc<dyn Replica>> = vec![replica.clone()];
    let one = ClusterConfig {
        write_quorum: 1,
        read_quorum: 1,
        ..ClusterConfig::default()
    };
    let coordinator = Coordinator::connect(one, replicas)
        .await
        .expect("coordinator");
    let now = wall_clock_ms();
    let mut newer = previous_record(now);
    newer.format = 3;
    let summary = Stamp::new(now - 1_000, 3, 7).encode();
    let mut delta = Record::new(now + HOUR_MS, now + 2 * HOUR_MS);
    delta
        .fields
        .insert("cart".into(), FieldEntry::value(Stamp::new(now, 0, 1), "x"));
    let expected = "written by a newer build (format 3); this build reads 1..=2";
    for (key, with_summary) in [("s:{newer-fast}", true), ("s:{newer-whole}", false)] {
        let redis_key = format!("{DEFAULT_KEY_PREFIX}{key}");
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = codec::encode_pairs(&newer);
        assert_eq!(pairs[0].1, b"3");
        let mut pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        if with_summary {
            pairs.push(("m:h".into(), summary.clone()));
        }
        let () = replica
            .client()
            .hset(&redis_key, pairs)
            .await
            .expect("HSET");
        let dump = node.command(&["DUMP", &redis_key]).await;

        let read = replica.read(key).await;
        match &read {
            Err(error @ ReplicaError::Corrupt { detail }) => {
                assert!(
                    error.is_newer_format() && detail.contains(expected),
                    "{detail}"
                )
            }
            other => panic!("{key}: read gave {other:?}"),
        }
        let merged = replica.merge(key, &delta, MergeMode::Upsert, now).await;
        match &merged {
            Err(error @ ReplicaError::Corrupt { detail }) => {
                assert!(
                    error.is_newer_format() && detail.contains(expected),
                    "{detail}"
                )
            }
            other => panic!("{key}: merge gave {other:?}"),
        }
        assert_eq!(node.command(&["DUMP", &redis_key]).await, dump, "{key}");
    }

    // Through the coordinator: the read fails (its one replica cannot read
    // the record) and the record stays as the newer build wrote it.
    let redis_key = format!("{DEFAULT_KEY_PREFIX}s:{{newer-whole}}");
    let dump = node.command(&["DUMP", &redis_key]).await;
    assert!(coordinator.read("s:{newer-whole}").await.is_err());
    assert_eq!(node.command(&["DUMP", &redis_key]).await, dump);
}
