//! Recovery on real Redis containers: hinted handoff after a partition,
//! refill of a node restarted empty (timed, keys per second), a node back
//! from an old snapshot while sessions were deleted, and a hint queue
//! overflow that anti-entropy still repairs. Every check compares every key
//! on every replica, read directly from each Redis. Rows are appended to
//! `target/fault-table.md` like the fault scenarios'.

mod support;

use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation, Record};
use support::RedisNodes;
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sessions preloaded for the refill scenario (each about 1 KB).
const REFILL_SESSIONS: usize = 5_000;

fn config() -> ClusterConfig {
    let mut config = ClusterConfig {
        request_timeout: Duration::from_millis(300),
        ..ClusterConfig::default()
    };
    config.anti_entropy.on_rejoin = false; // each test runs its passes itself
    config.health.probe_interval_max = Duration::from_millis(300);
    config
}

async fn app_server(nodes: &RedisNodes, config: ClusterConfig) -> Coordinator {
    let replicas: Vec<Arc<dyn Replica>> = nodes
        .replicas()
        .await
        .into_iter()
        .map(|r| Arc::new(r) as Arc<dyn Replica>)
        .collect();
    Coordinator::connect(config, replicas)
        .await
        .expect("coordinator")
}

fn key(i: usize) -> String {
    format!("s:{{rec-{i}}}")
}

/// Writes `count` sessions of about 1 KB (10 fields), 64 at a time.
async fn write_sessions(c: &Coordinator, range: std::ops::Range<usize>, tag: &str) -> usize {
    let value = format!("{tag}{}", "x".repeat(98));
    let writes = futures::stream::iter(range).map(|i| {
        let (c, value) = (c.clone(), value.clone());
        async move {
            let now = c.now_ms();
            let mut mutation = Mutation::update(now + 600_000, now + 3_600_000);
            for field in 0..10 {
                mutation = mutation.set(format!("f{field}"), value.clone());
            }
            c.write(&key(i), mutation).await.is_ok()
        }
    });
    use futures::StreamExt;
    writes
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

async fn copies(replicas: &[RedisReplica], key: &str) -> Vec<Option<Record>> {
    let reads = futures::future::join_all(replicas.iter().map(|r| r.read(key))).await;
    reads
        .into_iter()
        .map(|r| r.expect("direct read").record)
        .collect()
}

/// Every key 0..count holds the same record on every replica.
async fn assert_converged(nodes: &RedisNodes, count: usize) {
    let replicas = nodes.replicas().await;
    for i in 0..count {
        let copies = copies(&replicas, &key(i)).await;
        assert!(copies[0].is_some(), "key {i} missing on replica 0");
        assert_eq!(copies[0], copies[1], "key {i}: replicas 0 and 1 differ");
        assert_eq!(copies[1], copies[2], "key {i}: replicas 1 and 2 differ");
    }
}

/// Runs anti-entropy passes until one covers replica `index` from its first
/// page to its last (a node that just came back may not answer the first
/// ping yet), and returns that pass's report.
async fn pass_covering(
    c: &Coordinator,
    nodes: &RedisNodes,
    index: usize,
) -> quorum_sessions::AntiEntropyReport {
    let name = nodes.node(index).replica_name();
    for _ in 0..50 {
        let report = c.anti_entropy().await.expect("one pass at a time");
        if report.covered.contains(&name) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no anti-entropy pass covered {name}");
}

fn row(text: &str) {
    println!("{text}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_after_a_partition_brings_every_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let c = app_server(&nodes, config()).await;
    nodes.node(2).disconnect().await;
    let acked = write_sessions(&c, 0..500, "a").await;
    assert_eq!(acked, 500, "2 of 3 up: every write acknowledged");
    nodes.node(2).reconnect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.stats().hints_pending > 0 {
        assert!(
            Instant::now() < deadline,
            "hints not replayed: {:?}",
            c.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = c.stats();
    row(&format!(
        "| handoff after a partition | 500 | 0 | 0 | 0 | 0 | {} hints queued, {} replayed |",
        stats.hints_queued, stats.hints_replayed
    ));
    assert_converged(&nodes, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_is_refilled_completely() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let c = app_server(&nodes, config()).await;
    let acked = write_sessions(&c, 0..REFILL_SESSIONS, "a").await;
    assert_eq!(acked, REFILL_SESSIONS);
    nodes.node(1).restart_empty().await;
    let started = Instant::now();
    let report = pass_covering(&c, &nodes, 1).await;
    let elapsed = started.elapsed();
    let keys_per_sec = REFILL_SESSIONS as f64 / elapsed.as_secs_f64();
    row(&format!(
        "| refill of a node restarted empty | {REFILL_SESSIONS} sessions | 0 | 0 | 0 | 0 | {:.1} s, {keys_per_sec:.0} keys/s |",
        elapsed.as_secs_f64()
    ));
    assert!(
        report
            .marked_complete
            .contains(&nodes.node(1).replica_name())
            || c.replica_states()[1].readable,
        "refilled node marked complete: {report:?}"
    );
    assert_eq!(
        nodes.node(1).dbsize().await,
        nodes.node(0).dbsize().await,
        "same key count"
    );
    assert_converged(&nodes, REFILL_SESSIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_an_old_snapshot_never_revives_deleted_sessions() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let c = app_server(&nodes, config()).await;
    write_sessions(&c, 0..200, "a").await;
    nodes.node(0).save().await;
    nodes.node(0).stop().await;
    for i in (0..200).step_by(2) {
        let cap = c.now_ms() + 3_600_000;
        c.write(&key(i), Mutation::delete(cap))
            .await
            .expect("delete acknowledged");
    }
    nodes.node(0).start().await; // back with its dump: no tombstones
    let report = pass_covering(&c, &nodes, 0).await;
    assert!(
        report
            .marked_complete
            .contains(&nodes.node(0).replica_name()),
        "{report:?}"
    );
    let replicas = nodes.replicas().await;
    let mut revived = 0;
    for i in (0..200).step_by(2) {
        for copy in copies(&replicas, &key(i)).await {
            if copy.is_some_and(|r| !r.is_tombstone()) {
                revived += 1;
            }
        }
        assert_eq!(c.read(&key(i)).await.unwrap(), None);
    }
    row(&format!(
        "| old snapshot after deletes, then anti-entropy | 200 | 0 | 0 | 0 | {revived} | - |"
    ));
    assert_eq!(revived, 0, "no deleted session lives on any replica");
    assert_converged(&nodes, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_queue_overflow_is_counted_and_anti_entropy_converges() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let mut config = config();
    config.hints.entries_max = 50;
    let c = app_server(&nodes, config).await;
    nodes.node(0).disconnect().await;
    write_sessions(&c, 0..400, "a").await;
    // A write returns at its W-th acknowledgement; the leg to the cut-off
    // node fails later (at its deadline) and only then becomes a hint. Wait,
    // bounded, until every one of the 400 missed writes has been counted.
    for _ in 0..50 {
        if c.stats().hints_queued >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = c.stats();
    assert_eq!(
        stats.hints_queued, 400,
        "every missed write hinted: {stats:?}"
    );
    let dropped = stats.hints_dropped;
    assert!(stats.hints_pending <= 50, "queue bounded: {stats:?}");
    assert_eq!(
        dropped,
        400 - stats.hints_pending,
        "overflow counted: {stats:?}"
    );
    assert!(c.replica_states()[0].needs_anti_entropy);
    nodes.node(0).reconnect().await;
    let report = pass_covering(&c, &nodes, 0).await;
    row(&format!(
        "| hint overflow, then anti-entropy | 400 | 0 | 0 | 0 | 0 | {dropped} hints dropped, {} records sent |",
        report.stats.records_sent
    ));
    assert!(!c.replica_states()[0].needs_anti_entropy);
    assert_converged(&nodes, 400).await;
}
