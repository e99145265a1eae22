//! Cluster mode on real Redis Clusters (issue 16, part 2): `RedisReplica`
//! with `ServerConfig::Clustered` on local 3-primary clusters
//! (`support/cluster.rs`: `redis-server` processes, no Docker). Proves that
//! the conformance suite passes, that the Lua merge agrees with the Rust
//! `apply_merge` on random histories spread over every primary, and that a
//! coordinator whose three replicas are each a cluster writes, reads,
//! refills a cluster flushed on every primary and survives a `wipe`; that
//! an evicting primary is refused, a manual failover loses nothing, and the
//! epoch's primary restarted empty gives a new epoch. Two tests, ignored,
//! record the known limits: a single shard flushed goes unseen by the
//! epoch (issue 16, part 1), and one primary down stops the whole replica
//! (fred 10 reconnects a clustered client as a whole).

#[path = "support/cluster.rs"]
mod cluster_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::RedisCluster;
use fred::interfaces::ClusterInterface;
use fred::prelude::ServerConfig;
use quorum_sessions::replica::redis::{RedisConnectError, RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::{apply_merge, MergeMode, MergeStatus, Replica};
use quorum_sessions::stamp::{PHYSICAL_MAX, WRITER_MAX};
use quorum_sessions::testing::{live_record, run_conformance, stamp_at, wall_clock_ms};
use quorum_sessions::{
    ClusterConfig, Coordinator, FieldEntry, Mutation, Record, Stamp, StoredFormat,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Request deadline of the cluster replicas and the coordinator: generous,
/// two cores run several clusters (and a debug build) at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the coordinator test keeps starting anti-entropy passes, or
/// waiting for its hints to drain.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);
const HOUR_MS: u64 = 3_600_000;

/// A replica on `cluster`, seeded with one node (fred learns the others
/// from `CLUSTER SLOTS`).
/// Writes field `a` = `x`, stamped `logical` at `now`, into each of `keys`.
async fn seed<'a>(
    replica: &RedisReplica,
    keys: impl IntoIterator<Item = &'a String>,
    now: u64,
    logical: u64,
) {
    for key in keys {
        let mut delta = live_record(now);
        delta.fields.insert(
            "a".into(),
            FieldEntry::value(stamp_at(now, logical, 0, 1), "x"),
        );
        replica
            .merge(key, &delta, MergeMode::Upsert, now)
            .await
            .expect("merge");
    }
}

/// The node among `ports` that holds the replica's epoch key.
fn epoch_holder(ports: Vec<u16>, replica: &RedisReplica) -> u16 {
    ports
        .into_iter()
        .find(|port| {
            cluster_support::cli(*port, &["EXISTS", replica.epoch_key()]).as_deref() == Some("1")
        })
        .expect("a node holds the epoch key")
}

async fn cluster_replica(name: &str, cluster: &RedisCluster, format: StoredFormat) -> RedisReplica {
    cluster_replica_with(name, cluster, format, false).await
}

async fn cluster_replica_with(
    name: &str,
    cluster: &RedisCluster,
    format: StoredFormat,
    adopt_unwitnessed: bool,
) -> RedisReplica {
    let server = ServerConfig::new_clustered(vec![("127.0.0.1", cluster.seed_port())]);
    let mut config = RedisReplicaConfig::from_server(name, server);
    config.adopt_unwitnessed_cluster = adopt_unwitnessed;
    config.request_timeout = REQUEST_TIMEOUT;
    config.connect_timeout = Duration::from_secs(5);
    config.stored_format = format;
    RedisReplica::connect(config)
        .await
        .expect("connect a cluster RedisReplica")
}

/// Starts `count` clusters at once (each start blocks on `redis-cli`).
async fn start_clusters(count: usize) -> Vec<RedisCluster> {
    let starts = (0..count).map(|_| tokio::task::spawn_blocking(|| RedisCluster::start(3)));
    futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|started| started.expect("cluster start"))
        .collect()
}

/// The conformance suite passes on a `RedisReplica` in Cluster mode: merges,
/// reads, epochs, the lease, a scan across every primary, and `wipe`.
#[tokio::test]
async fn cluster_replica_conforms() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-conformance", &cluster, StoredFormat::V2).await;
    let started = Instant::now();
    run_conformance(&replica).await;
    println!("conformance on the cluster in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// The Lua merge against the Rust merge (a smaller `tests/differential.rs`).

/// Concurrent streams of operations, each on its own keys.
const DIFF_STREAMS: usize = 12;
/// Operations per stream (720 in all).
const DIFF_OPS_PER_STREAM: usize = 60;
/// Operations on one key before a stream moves to a new one.
const DIFF_OPS_PER_KEY: usize = 15;
const FIELD_NAMES: [&str; 4] = ["a", "b", "ü", "long-field-name-0123456789"];

/// A random delta, mode and `now`: equal stamps with different values,
/// removals, `until` entries (some past), tombstones, stamps and expiries
/// near 2^48, expiries already past, creates, both stored formats.
fn random_op(rng: &mut ChaCha8Rng, base_ms: u64) -> (Record, MergeMode, u64) {
    let now_ms = base_ms - 10_000 + rng.random_range(0..20_000);
    let stamp = |rng: &mut ChaCha8Rng| {
        let physical = [base_ms - 1, base_ms - 2, PHYSICAL_MAX][rng.random_range(0..3)];
        Stamp::new(
            physical,
            rng.random_range(0..2),
            [1, WRITER_MAX][rng.random_range(0..2)],
        )
    };
    let limit = |rng: &mut ChaCha8Rng| match rng.random_range(0..50) {
        0 => now_ms - 1,
        1..=5 => PHYSICAL_MAX,
        _ => base_ms + HOUR_MS,
    };
    let mut delta = Record::new(limit(rng), limit(rng));
    for _ in 0..rng.random_range(0..=3) {
        let name = FIELD_NAMES[rng.random_range(0..FIELD_NAMES.len())];
        let value: Vec<u8> = [&b"a"[..], b"b", b"\xff\x00", b""][rng.random_range(0..4)].to_vec();
        let mut entry = if rng.random_bool(0.2) {
            FieldEntry::removed(stamp(rng))
        } else {
            FieldEntry::value(stamp(rng), value)
        };
        if rng.random_bool(0.2) {
            entry = entry.with_until([now_ms - 1, now_ms + 5_000][rng.random_range(0..2)]);
        }
        delta.fields.insert(name.to_owned(), entry);
    }
    if rng.random_bool(0.03) {
        delta.tombstone = Some(stamp(rng));
    }
    if rng.random_bool(0.3) {
        delta.origin = Some(stamp(rng));
    }
    delta.partial = rng.random_bool(0.2);
    delta.format = if rng.random_bool(0.3) { 1 } else { 2 };
    let mode = if rng.random_bool(0.1) {
        MergeMode::Create
    } else {
        MergeMode::Upsert
    };
    (delta, mode, now_ms)
}

/// One stream: each operation through the replica writing its format and
/// through `apply_merge` (plus the Redis-only rule: a record dead at `now`
/// is deleted); status, `held_max`, the epoch and the record read back
/// must agree. Returns the keys left holding a record, and the statuses
/// seen.
async fn diff_stream(
    replicas: &[RedisReplica; 2],
    stream: usize,
    seed: u64,
    base_ms: u64,
) -> (BTreeSet<String>, [usize; 3]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(stream as u64));
    let epoch = replicas[1].ping().await.expect("ping");
    let (mut live, mut statuses) = (BTreeSet::new(), [0; 3]);
    let mut model: Option<Record> = None;
    let mut key = String::new();
    for index in 0..DIFF_OPS_PER_STREAM {
        if index % DIFF_OPS_PER_KEY == 0 {
            if model.is_some() {
                live.insert(key.clone());
            }
            // Some keys with a hash tag, some without: spread over the slots.
            key = match index % 2 {
                0 => format!("s:{{d{stream}-{index}}}"),
                _ => format!("u:d{stream}-{index}"),
            };
            model = None;
        }
        let (delta, mode, now_ms) = random_op(&mut rng, base_ms);
        let context = || format!("seed {seed}, stream {stream}, op {index}");
        let held = model.as_ref().and_then(Record::max_stamp);
        let (status, merged) = apply_merge(model.as_ref(), &delta, mode, now_ms);
        let next = match (status, merged) {
            (MergeStatus::Applied, Some(merged)) if merged.is_expired(now_ms) => None,
            (MergeStatus::Applied, Some(merged)) => Some(merged),
            _ => model.clone(),
        };
        let replica = &replicas[usize::from(delta.format == 2)];
        let reply = replica
            .merge(&key, &delta, mode, now_ms)
            .await
            .unwrap_or_else(|e| panic!("merge failed: {e}; {}", context()));
        assert_eq!(reply.status, status, "status; {}", context());
        assert_eq!(reply.held_max, held, "held_max; {}", context());
        assert_eq!(reply.epoch, epoch, "epoch changed; {}", context());
        let read = replica
            .read(&key)
            .await
            .unwrap_or_else(|e| panic!("read failed: {e}; {}", context()));
        assert_eq!(read.record, next, "record read back; {}", context());
        statuses[status_index(status)] += 1;
        model = next;
    }
    if model.is_some() {
        live.insert(key);
    }
    (live, statuses)
}

/// The Lua merge in a cluster agrees exactly with the Rust `apply_merge` on
/// random histories (720 merges in 12 concurrent streams over 48 keys on
/// every primary, both stored formats), and a scan across the primaries
/// lists exactly the keys the model holds. `QS_DIFF_SEED=<n>` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lua_merge_equals_rust_merge() {
    let seed = std::env::var("QS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("seed {seed}");
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replicas = [
        cluster_replica("cluster-diff-v1", &cluster, StoredFormat::V1).await,
        cluster_replica("cluster-diff-v2", &cluster, StoredFormat::V2).await,
    ];
    replicas[1].wipe().await.expect("wipe");
    let base_ms = wall_clock_ms();
    let started = Instant::now();
    let streams = (0..DIFF_STREAMS).map(|s| diff_stream(&replicas, s, seed, base_ms));
    let results = futures::future::join_all(streams).await;
    println!(
        "{} merges in {:?}",
        DIFF_STREAMS * DIFF_OPS_PER_STREAM,
        started.elapsed()
    );
    let mut expected = BTreeSet::new();
    let mut statuses = [0; 3];
    for (live, seen) in results {
        expected.extend(live);
        for (total, n) in statuses.iter_mut().zip(seen) {
            *total += n;
        }
    }
    println!("statuses applied, gone, exists: {statuses:?}");
    assert!(statuses.iter().all(|n| *n > 0), "every status occurred");
    let scanned = scan_all(&replicas[1]).await;
    assert_eq!(scanned, expected, "a scan lists exactly the model's keys");
}

/// Where a status is counted: applied, gone, exists.
fn status_index(status: MergeStatus) -> usize {
    match status {
        MergeStatus::Applied => 0,
        MergeStatus::Gone => 1,
        MergeStatus::Exists => 2,
    }
}

/// Most scan pages followed before failing (a cursor that never ends).
const SCAN_PAGES_MAX: usize = 10_000;

/// Every key a scan lists, from the first page to the last.
async fn scan_all(replica: &RedisReplica) -> BTreeSet<String> {
    let (mut keys, mut cursor) = (BTreeSet::new(), "0".to_owned());
    for _page in 0..SCAN_PAGES_MAX {
        let page = replica.scan(&cursor, 7).await.expect("scan");
        keys.extend(page.keys);
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return keys,
        }
    }
    panic!("the scan did not end within {SCAN_PAGES_MAX} pages");
}

// ---------------------------------------------------------------------------
// A coordinator on three clusters.

/// Sessions the coordinator test writes.
const SESSIONS: usize = 150;

fn session_key(i: usize) -> String {
    format!("s:{{co-{i}}}")
}

/// Runs passes until one covers `name` and marks it complete, and returns
/// how many passes that took.
async fn refill(c: &Coordinator, name: &str) -> usize {
    let deadline = Instant::now() + CONVERGE_BOUND;
    for pass in 1.. {
        let report = c.anti_entropy().await.expect("one pass at a time");
        if report.covered.iter().any(|n| n == name)
            && report.marked_complete.iter().any(|n| n == name)
        {
            println!("{name} refilled by pass {pass}: {:?}", report.stats);
            return pass;
        }
        assert!(
            Instant::now() < deadline,
            "no pass refilled {name} within {CONVERGE_BOUND:?}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns or panics")
}

/// Every session is held, identically, by every replica (read directly).
async fn assert_converged(replicas: &[Arc<RedisReplica>]) {
    for i in 0..SESSIONS {
        let key = session_key(i);
        let reads = futures::future::join_all(replicas.iter().map(|r| r.read(&key))).await;
        let copies: Vec<Option<Record>> = reads
            .into_iter()
            .map(|r| r.expect("direct read").record)
            .collect();
        assert!(copies[0].is_some(), "session {i} missing on replica 0");
        assert!(
            copies.iter().all(|copy| *copy == copies[0]),
            "session {i} differs between replicas"
        );
    }
}

/// A coordinator (N = 3, W = R = 2) whose replicas are each a 3-primary
/// cluster: every write is acknowledged and read back; a cluster flushed on
/// every primary gets a new epoch, is refilled by anti-entropy and marked
/// complete, holding every session again; a replica wiped through
/// `Replica::wipe` is emptied (no key left on any primary), gets a new
/// epoch, and is refilled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_on_three_clusters_writes_reads_refills_and_wipes() {
    let started = Instant::now();
    let clusters = start_clusters(3).await;
    println!("three clusters in {:?}", started.elapsed());
    let mut replicas = Vec::new();
    for (index, cluster) in clusters.iter().enumerate() {
        let name = format!("cluster-{index}");
        replicas.push(Arc::new(
            cluster_replica(&name, cluster, StoredFormat::V2).await,
        ));
    }
    let mut config = ClusterConfig {
        request_timeout: REQUEST_TIMEOUT,
        ..ClusterConfig::default()
    };
    config.anti_entropy.on_rejoin = false; // the test runs its passes itself
    config.health.probe_interval_max = Duration::from_millis(300);
    let dyn_replicas = replicas
        .iter()
        .map(|r| r.clone() as Arc<dyn Replica>)
        .collect();
    let c = Coordinator::connect(config, dyn_replicas)
        .await
        .expect("coordinator");

    let now = c.now_ms();
    for i in 0..SESSIONS {
        let mutation = Mutation::create(now + HOUR_MS, now + 2 * HOUR_MS)
            .set("user", format!("u{i}"))
            .set("cart", "x".repeat(100));
        c.write(&session_key(i), mutation).await.expect("write");
    }
    for i in 0..SESSIONS {
        let record = c.read(&session_key(i)).await.expect("read");
        let user = record.and_then(|r| r.fields.get("user").cloned());
        let value = user.and_then(|entry| entry.value);
        assert_eq!(
            value.as_deref(),
            Some(format!("u{i}").as_bytes()),
            "session {i}"
        );
    }
    // The legs beyond W land in the background (or as hints): wait.
    let deadline = Instant::now() + CONVERGE_BOUND;
    while c.stats().hints_pending > 0 {
        assert!(
            Instant::now() < deadline,
            "hints still pending: {:?}",
            c.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refill_until_converged(&c, &replicas).await;
    println!("written and converged in {:?}", started.elapsed());

    // Cluster 1 loses its whole dataset (every primary, the epoch key with
    // it): the next request makes a new epoch there.
    let before = replicas[1].ping().await.expect("ping");
    clusters[1].flush_all();
    let after = replicas[1].ping().await.expect("ping after the flush");
    assert!(
        after.id != before.id && !after.complete,
        "a new epoch: {after:?}"
    );
    for i in 0..SESSIONS {
        assert!(
            c.read(&session_key(i)).await.expect("read").is_some(),
            "session {i}"
        );
    }
    let passes = refill(&c, "cluster-1").await;
    assert_converged(&replicas).await;
    println!(
        "flushed cluster refilled ({passes} passes) at {:?}",
        started.elapsed()
    );

    // `wipe` empties cluster 2 through the replica: nothing left on any
    // primary, and a new epoch.
    let before = replicas[2].ping().await.expect("ping");
    replicas[2].wipe().await.expect("wipe");
    // A health probe may renew the epoch at once (every witness stamped):
    // the sessions are what must be gone.
    let pattern = format!("{}s:*", replicas[2].key_prefix());
    assert_eq!(
        clusters[2].keys_matching(&pattern),
        Vec::new(),
        "wipe leaves no session on any primary"
    );
    let after = replicas[2].ping().await.expect("ping after the wipe");
    assert!(
        after.id != before.id && !after.complete,
        "a new epoch: {after:?}"
    );
    refill(&c, "cluster-2").await;
    assert_converged(&replicas).await;
    println!("wiped cluster refilled at {:?}", started.elapsed());
}

/// Passes until every replica holds every session (bounded).
async fn refill_until_converged(c: &Coordinator, replicas: &[Arc<RedisReplica>]) {
    let deadline = Instant::now() + CONVERGE_BOUND;
    loop {
        let report = c.anti_entropy().await.expect("one pass at a time");
        if report.stats.keys_repaired == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {report:?}");
    }
    assert_converged(replicas).await;
}

/// Eviction on any primary is refused at connect: with `allkeys-lru` set
/// on one primary only (each in turn), `connect` fails with
/// `RedisConnectError::Eviction` (one primary evicting would silently drop
/// that shard's tombstones).
#[tokio::test]
async fn an_evicting_primary_is_refused() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    for port in cluster.primary_ports() {
        let set =
            |policy| cluster_support::cli(port, &["CONFIG", "SET", "maxmemory-policy", policy]);
        assert_eq!(set("allkeys-lru").as_deref(), Some("OK"));
        let server = ServerConfig::new_clustered(vec![("127.0.0.1", cluster.seed_port())]);
        let mut config = RedisReplicaConfig::from_server("cluster-evicting", server);
        config.request_timeout = REQUEST_TIMEOUT;
        let result = RedisReplica::connect(config).await;
        assert!(
            matches!(result, Err(RedisConnectError::Eviction { .. })),
            "allkeys-lru on primary {port} refused: {result:?}"
        );
        assert_eq!(set("noeviction").as_deref(), Some("OK"));
    }
}

// ---------------------------------------------------------------------------
// A failover inside the cluster.

/// Attempts of one request across a failover: a request that lands on the
/// old primary while the topology changes may fail once or twice
/// (`MOVED`, a dropped connection) before fred follows the new map.
const FAILOVER_ATTEMPTS: usize = 20;

/// `f` until it succeeds, at most [`FAILOVER_ATTEMPTS`] times; counts the
/// failures in `failures`.
async fn retried<T, F, Fut>(failures: &mut usize, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, quorum_sessions::ReplicaError>>,
{
    for _attempt in 0..FAILOVER_ATTEMPTS {
        match f().await {
            Ok(value) => return value,
            Err(error) => {
                *failures += 1;
                println!("failed while the topology changed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("still failing after {FAILOVER_ATTEMPTS} attempts");
}

/// A manual failover of the primary holding the epoch key (3 primaries, one
/// Cluster replica each): afterwards every record is read back, merges are
/// applied, a scan walks the new primaries and lists every key; and the
/// epoch is a new, incomplete one: the promoted node is another Redis
/// process than the one that stamped its slots' witnesses, so the replica
/// cannot tell this failover (which lost nothing) from one to a lagging
/// Cluster replica, and a coordinator refills it (as after a Sentinel
/// failover of a standalone replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_keeps_every_record_and_starts_a_new_epoch() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(3, 1))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-failover", &cluster, StoredFormat::V2).await;
    let now = wall_clock_ms();
    let keys: BTreeSet<String> = (0..40).map(|i| format!("s:{{fo-{i}}}")).collect();
    seed(&replica, &keys, now, 2).await;
    let epoch = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(epoch.id).await.expect("mark"));
    let epoch_primary = epoch_holder(cluster.primary_ports(), &replica);
    let follower = cluster
        .follower_of(epoch_primary)
        .expect("the epoch primary has a replica");
    let started = Instant::now();
    // Blocks on redis-cli: off the runtime's worker (fred's tasks run on).
    tokio::task::block_in_place(|| cluster.failover(follower));
    println!("failover done in {:?}", started.elapsed());
    assert!(!cluster.primary_ports().contains(&epoch_primary));

    let mut failures = 0;
    let after = retried(&mut failures, || replica.ping()).await;
    assert!(
        after.id != epoch.id && !after.complete,
        "a new, incomplete epoch: {after:?}"
    );
    for key in &keys {
        let read = retried(&mut failures, || replica.read(key)).await;
        assert!(read.record.is_some(), "a record survives the failover");
        let mut delta = live_record(now);
        delta
            .fields
            .insert("b".into(), FieldEntry::value(stamp_at(now, 1, 0, 1), "y"));
        let reply = retried(&mut failures, || {
            replica.merge(key, &delta, MergeMode::Upsert, now)
        })
        .await;
        assert_eq!(reply.status, MergeStatus::Applied);
    }
    // The primaries a scan walks come from fred's cached cluster map.
    let mut cached: Vec<u16> = replica
        .client()
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default()
        .iter()
        .map(|server| server.port)
        .collect();
    cached.sort_unstable();
    let mut primaries = cluster.primary_ports();
    primaries.sort_unstable();
    assert_eq!(cached, primaries, "fred's map follows the failover");
    let mut scanned = BTreeSet::new();
    for _attempt in 0..FAILOVER_ATTEMPTS {
        scanned = scan_all(&replica).await;
        if scanned == keys {
            break;
        }
        failures += 1;
    }
    assert_eq!(
        scanned, keys,
        "a scan over the new primaries lists every key"
    );
    println!("requests failed during or after the failover: {failures}");
}

/// The primary holding the epoch key killed and restarted empty (same
/// ports and `nodes.conf`: it rejoins with its slots, without data): while
/// it is down every request fails (a read needs the epoch, on that shard);
/// once back the replica reports a new, incomplete epoch, so its misses
/// (the keys of that shard) are not authoritative and a coordinator
/// refills it, while the other shards' records are still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_primary_restarted_empty_gives_a_new_epoch() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-restart", &cluster, StoredFormat::V2).await;
    let now = wall_clock_ms();
    let keys: Vec<String> = (0..30).map(|i| format!("s:{{rs-{i}}}")).collect();
    seed(&replica, &keys, now, 1).await;
    let epoch = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(epoch.id).await.expect("mark"));
    let epoch_primary = epoch_holder(cluster.primary_ports(), &replica);
    cluster.kill(epoch_primary);
    let down = replica.read(&keys[0]).await;
    println!("a read while the epoch primary is down: {down:?}");
    assert!(down.is_err(), "no read without the epoch");
    let started = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(epoch_primary));
    let mut failures = 0;
    let after = retried(&mut failures, || replica.ping()).await;
    println!(
        "back in {:?} ({failures} requests failed meanwhile)",
        started.elapsed()
    );
    assert!(
        after.id != epoch.id && !after.complete,
        "a new epoch: {after:?}"
    );
    let (mut held, mut lost) = (0, 0);
    for key in &keys {
        let read = retried(&mut failures, || replica.read(key)).await;
        assert!(!read.epoch.complete, "no read is authoritative yet");
        match read.record {
            Some(_) => held += 1,
            None => lost += 1,
        }
    }
    println!("records held {held}, lost with the shard {lost}");
    assert!(held > 0 && lost > 0, "the other shards kept theirs");
}

// ---------------------------------------------------------------------------
// Witnesses: a shard that lost its data is seen from its own keys.

/// How a shard other than the epoch key's loses its data.
#[derive(Clone, Copy, Debug)]
enum ShardLoss {
    /// `FLUSHALL` on its primary.
    Flushed,
    /// Its primary SIGKILLed and started again, empty (same `nodes.conf`).
    RestartedEmpty,
}

/// A primary other than the one holding the epoch key loses its data: the
/// next read of one of its keys finds the slot's witness missing, so the
/// replica renews (every witness stamped, then a new epoch): no read after
/// the loss answers a miss in the old, complete epoch (which a coordinator
/// would take as an authoritative "not found"), and the epoch is new and
/// incomplete (the coordinator refills the replica).
async fn a_shard_loss_changes_the_epoch(loss: ShardLoss) {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let connecting = Instant::now();
    let replica = cluster_replica("cluster-shard", &cluster, StoredFormat::V2).await;
    println!(
        "connected (every witness stamped) in {:?}",
        connecting.elapsed()
    );
    let now = wall_clock_ms();
    let keys: Vec<String> = (0..30).map(|i| format!("s:{{shard-{i}}}")).collect();
    seed(&replica, &keys, now, 1).await;
    let epoch = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(epoch.id).await.expect("mark"));
    let epoch_node = epoch_holder(cluster.ports(), &replica);
    let other = cluster
        .ports()
        .into_iter()
        .find(|port| *port != epoch_node)
        .expect("another primary");
    match loss {
        ShardLoss::Flushed => assert_eq!(
            cluster_support::cli(other, &["FLUSHALL"]).as_deref(),
            Some("OK")
        ),
        ShardLoss::RestartedEmpty => tokio::task::block_in_place(|| {
            cluster.kill(other);
            cluster.restart(other);
        }),
    }
    let mut failures = 0;
    let (mut held, mut lost) = (0, 0);
    // The first read of a key of the lost shard renews the epoch (every
    // witness stamped): its time is the price of a renewal.
    let reading = Instant::now();
    for key in &keys {
        let read = retried(&mut failures, || replica.read(key)).await;
        assert!(
            read.record.is_some() || !read.epoch.complete,
            "a record lost with its shard reads as a miss in a complete epoch: {:?}",
            read.epoch
        );
        match read.record {
            Some(_) => held += 1,
            None => lost += 1,
        }
    }
    let after = replica.ping().await.expect("ping");
    println!(
        "{loss:?}: records held {held}, lost {lost}, read in {:?}; epoch {epoch:?} -> {after:?}; \
         {failures} requests failed",
        reading.elapsed()
    );
    assert!(lost > 0 && held > 0, "one shard of three lost its records");
    assert!(
        after.id != epoch.id && !after.complete,
        "a new, incomplete epoch: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_shard_flushed_changes_the_epoch() {
    a_shard_loss_changes_the_epoch(ShardLoss::Flushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_shard_restarted_empty_changes_the_epoch() {
    a_shard_loss_changes_the_epoch(ShardLoss::RestartedEmpty).await;
}

/// A replica written by a build without witnesses (every witness deleted,
/// its epoch complete): by default renewed (a new, incomplete epoch: a
/// deployment restored from an old backup looks the same); with
/// `adopt_unwitnessed_cluster` adopted: every slot stamped, the epoch kept,
/// still complete (the upgrade path: renewing every replica of a deployment
/// at once would leave none complete). Deleting one other primary's
/// witnesses (as its data loss would) renews even then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_witnesses_is_adopted_with_its_epoch() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-adopt", &cluster, StoredFormat::V2).await;
    let now = wall_clock_ms();
    let keys: Vec<String> = (0..20).map(|i| format!("s:{{adopt-{i}}}")).collect();
    seed(&replica, &keys, now, 1).await;
    let epoch = replica.ping().await.expect("ping");
    assert!(replica.mark_epoch_complete(epoch.id).await.expect("mark"));
    let pattern = format!("{}epoch:w:*", replica.key_prefix());
    let witnesses = cluster.keys_matching(&pattern);
    assert_eq!(witnesses.len(), 16_384, "one witness per slot");

    // Without the setting: renewed.
    tokio::task::block_in_place(|| cluster.delete_keys(&witnesses));
    let renewed = replica.ping().await.expect("ping");
    assert!(
        renewed.id != epoch.id && !renewed.complete,
        "not adopted by default: {renewed:?}"
    );
    assert!(replica.mark_epoch_complete(renewed.id).await.expect("mark"));
    drop(replica);

    let witnesses = cluster.keys_matching(&pattern);
    tokio::task::block_in_place(|| cluster.delete_keys(&witnesses));
    let upgraded = cluster_replica_with("cluster-adopt", &cluster, StoredFormat::V2, true).await;
    let after = upgraded.ping().await.expect("ping");
    assert!(
        after.id == renewed.id && after.complete,
        "adopted: the epoch kept, complete: {after:?}"
    );
    assert_eq!(
        cluster.keys_matching(&pattern).len(),
        16_384,
        "stamped again"
    );
    for key in &keys {
        let read = upgraded.read(key).await.expect("read");
        assert!(read.record.is_some() && read.epoch.id == after.id && read.epoch.complete);
    }
    let epoch = after;

    // One other primary's witnesses gone (as with its data): renewed.
    let epoch_node = epoch_holder(cluster.ports(), &upgraded);
    let other = cluster
        .primary_ports()
        .into_iter()
        .find(|port| *port != epoch_node)
        .expect("another primary");
    let lost: Vec<(u16, String)> = cluster
        .keys_matching(&pattern)
        .into_iter()
        .filter(|(port, _)| *port == other)
        .collect();
    tokio::task::block_in_place(|| cluster.delete_keys(&lost));
    let mut failures = 0;
    for key in &keys {
        retried(&mut failures, || upgraded.read(key)).await;
    }
    let renewed = upgraded.ping().await.expect("ping");
    assert!(
        renewed.id != epoch.id && !renewed.complete,
        "a slot's witness lost: a new epoch, {renewed:?}"
    );
}

/// An epoch left *being renewed* (`<id>:s`: a renewal stopped half way, its
/// app server gone) reads as incomplete, is never marked complete, and the
/// next ping (the renewal lease free) renews it to a new epoch that can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_stopped_half_way_is_taken_over() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-takeover", &cluster, StoredFormat::V2).await;
    let epoch_node = epoch_holder(cluster.ports(), &replica);
    let stopped = "00000000000000aa:s";
    assert_eq!(
        cluster_support::cli(epoch_node, &["SET", replica.epoch_key(), stopped]).as_deref(),
        Some("OK")
    );
    assert!(
        !replica.mark_epoch_complete(0xaa).await.expect("mark"),
        "an epoch being renewed is never marked complete"
    );
    let after = replica.ping().await.expect("ping");
    assert!(after.id != 0xaa && !after.complete, "renewed: {after:?}");
    assert!(replica.mark_epoch_complete(after.id).await.expect("mark"));
}

// ---------------------------------------------------------------------------
// The known limit.

/// What Cluster mode would need to stay up through one shard's outage: a
/// primary (not the epoch key's) killed, without a Cluster replica to take
/// over, the epoch is still read and the records of the other shards too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fred 10 reconnects a clustered client as a whole: while one primary is unreachable \
            every request fails, on every shard and the epoch's (ReplicaError::Unavailable \
            `not connected (reconnecting)`, the first ones Timeout), until the node is back"]
async fn a_primary_down_leaves_the_other_shards_readable() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("cluster start");
    let replica = cluster_replica("cluster-shard-down", &cluster, StoredFormat::V2).await;
    let now = wall_clock_ms();
    let keys: Vec<String> = (0..12).map(|i| format!("s:{{down-{i}}}")).collect();
    seed(&replica, &keys, now, 1).await;
    let epoch_primary = epoch_holder(cluster.primary_ports(), &replica);
    let other = cluster
        .primary_ports()
        .into_iter()
        .find(|port| *port != epoch_primary)
        .expect("another primary");
    cluster.kill(other);
    let mut failures = 0;
    retried(&mut failures, || replica.ping()).await;
    let mut readable = 0;
    for key in &keys {
        if replica.read(key).await.is_ok() {
            readable += 1;
        }
    }
    assert!(readable > 0, "the keys of the shards still up are read");
}
