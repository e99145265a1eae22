//! `cargo bench --bench refill`: how long anti-entropy takes to refill an
//! emptied replica, against how long Redis itself takes to copy the same
//! data to a fresh replica (`REPLICAOF`, a full sync), measured in one run.
//!
//! It starts local `redis-server` processes, preloads sessions of about 1 KB
//! (10 fields of about 100 bytes) through a coordinator (N=3, W=2), then:
//!
//! 1. Redis: a fresh `redis-server` runs `REPLICAOF` of one loaded replica;
//!    timed until `master_link_status:up` and `master_sync_in_progress:0`.
//!    The primary gets `repl-diskless-sync-delay 0` (the default waits 5 s
//!    for more replicas, which would flatter the comparison).
//! 2. quorum-sessions: one replica is emptied (`FLUSHALL`, so its epoch goes
//!    too and the next request gives it a new, incomplete one), and
//!    `Coordinator::anti_entropy` runs until it marks that replica complete.
//!    The emptied replica is then checked to hold every session.
//!
//! It prints both times and their ratio (target: at most 3), and writes
//! `target/bench/refill.json`. `QS_REFILL_SESSIONS` sets the session count
//! (default 100,000), `QS_REFILL_SCAN_BATCH` the `SCAN` count of the pass
//! (default: the library's `anti_entropy.scan_batch`).

mod common;
use common::{client, RedisServer};

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use futures::StreamExt;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};

const FIELDS: usize = 10;
const FIELD_BYTES: usize = 100;
/// Target: the refill takes at most this many times Redis's full sync.
const RATIO_TARGET: f64 = 3.0;

fn key(index: usize) -> String {
    format!("s:{{refill-{index}}}")
}

/// Writes `count` sessions, 64 at a time; returns how many were acknowledged.
async fn preload(coordinator: &Coordinator, count: usize) -> usize {
    let value = "v".repeat(FIELD_BYTES);
    futures::stream::iter(0..count)
        .map(|index| {
            let (coordinator, value) = (coordinator.clone(), value.clone());
            async move {
                let now = coordinator.now_ms();
                let mut mutation = Mutation::create(now + 3_600_000, now + 7_200_000);
                for field in 0..FIELDS {
                    mutation = mutation.set(format!("field{field}"), value.clone());
                }
                coordinator.write(&key(index), mutation).await.is_ok()
            }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

/// `INFO <section>` as text.
async fn info(client: &Client, section: &str) -> String {
    client
        .custom::<String, _>(
            CustomCommand::new_static("INFO", ClusterHash::FirstKey, false),
            vec![section.to_owned()],
        )
        .await
        .expect("INFO")
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Times a full sync of a fresh Redis from the server on `primary_port`.
async fn time_replicaof(primary_port: u16) -> Duration {
    let fresh = RedisServer::start(&["--repl-diskless-sync-delay", "0"]);
    let replica = client(fresh.port).await;
    let started = Instant::now();
    let _: Value = replica
        .custom(
            CustomCommand::new_static("REPLICAOF", ClusterHash::FirstKey, false),
            vec!["127.0.0.1".to_owned(), primary_port.to_string()],
        )
        .await
        .expect("REPLICAOF");
    loop {
        let text = info(&replica, "replication").await;
        let up = info_field(&text, "master_link_status") == Some("up");
        let syncing = info_field(&text, "master_sync_in_progress") != Some("0");
        if up && !syncing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _: Value = replica
        .custom(
            CustomCommand::new_static("REPLICAOF", ClusterHash::FirstKey, false),
            vec!["NO".to_owned(), "ONE".to_owned()],
        )
        .await
        .expect("REPLICAOF NO ONE");
    drop(fresh);
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions: usize = common::env("QS_REFILL_SESSIONS").unwrap_or(100_000);
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start(&["--repl-diskless-sync-delay", "0"]))
        .collect();
    let mut plain = Vec::new();
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for server in &servers {
        plain.push(client(server.port).await);
        let config = RedisReplicaConfig::from_url(
            format!("redis-{}", server.port),
            format!("redis://127.0.0.1:{}", server.port),
        );
        replicas.push(Arc::new(
            RedisReplica::connect(config).await.expect("replica"),
        ));
    }
    let mut config = ClusterConfig::default();
    // Only the passes this bench runs: none started by a rejoin or a timer.
    config.anti_entropy.on_rejoin = false;
    config.anti_entropy.interval = None;
    if let Some(batch) = common::env("QS_REFILL_SCAN_BATCH") {
        config.anti_entropy.scan_batch = batch;
    }
    let coordinator = Coordinator::connect(config, replicas)
        .await
        .expect("coordinator");

    let started = Instant::now();
    let acked = preload(&coordinator, sessions).await;
    assert_eq!(acked, sessions, "every preload write acknowledged");
    // Let the writes still running in the background land everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dbsize: u64 = plain[0].dbsize().await.expect("DBSIZE");
    let used_memory = info(&plain[0], "memory").await;
    let used_memory = info_field(&used_memory, "used_memory")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "preloaded {sessions} sessions in {:.1} s ({dbsize} keys, {:.0} MB per replica)",
        started.elapsed().as_secs_f64(),
        used_memory as f64 / 1e6
    );

    // Redis's own full sync of the same data.
    let replicaof = time_replicaof(servers[0].port).await;
    println!(
        "redis REPLICAOF full sync: {:.2} s",
        replicaof.as_secs_f64()
    );

    // Empty replica 2 (its epoch goes with the data), then refill it.
    let _: () = plain[2].flushall(false).await.expect("FLUSHALL");
    let emptied = coordinator.replicas()[2].name().to_owned();
    let started = Instant::now();
    let mut passes = Vec::new();
    loop {
        let report = coordinator
            .anti_entropy()
            .await
            .expect("no other pass runs");
        let done = report.marked_complete.contains(&emptied);
        passes.push(report);
        if done {
            break;
        }
        assert!(passes.len() < 10, "replica not marked complete: {passes:?}");
    }
    let refill = started.elapsed();
    let refilled: u64 = plain[2].dbsize().await.expect("DBSIZE");
    let last = passes.last().expect("a pass");
    println!(
        "anti-entropy refill: {:.2} s in {} pass(es); last pass: {} keys compared, {} repaired, {} records sent, {} pages",
        refill.as_secs_f64(),
        passes.len(),
        last.stats.keys_compared,
        last.stats.keys_repaired,
        last.stats.records_sent,
        last.stats.pages_scanned,
    );
    assert!(
        refilled >= dbsize,
        "the refilled replica holds {refilled} keys, the source {dbsize}"
    );
    for index in (0..sessions).step_by((sessions / 1000).max(1)) {
        let record = coordinator.replicas()[2]
            .read(&key(index))
            .await
            .expect("read the refilled replica")
            .record;
        assert!(record.is_some(), "session {index} missing after the refill");
    }

    let ratio = refill.as_secs_f64() / replicaof.as_secs_f64().max(1e-9);
    let met = ratio <= RATIO_TARGET;
    println!();
    println!(
        "{:<28} {:>10}\n{:<28} {:>10.2}\n{:<28} {:>10.2}\n{:<28} {:>7.2} <= {RATIO_TARGET:.1}  {}",
        "sessions",
        sessions,
        "redis full sync (s)",
        replicaof.as_secs_f64(),
        "anti-entropy refill (s)",
        refill.as_secs_f64(),
        "refill / full sync",
        ratio,
        if met { "met" } else { "NOT met" }
    );
    let json = serde_json::json!({
        "sessions": sessions,
        "keys_per_replica": dbsize,
        "replicaof_s": replicaof.as_secs_f64(),
        "refill_s": refill.as_secs_f64(),
        "passes": passes.len(),
        "last_pass": {
            "keys_compared": last.stats.keys_compared,
            "keys_repaired": last.stats.keys_repaired,
            "records_sent": last.stats.records_sent,
            "pages_scanned": last.stats.pages_scanned,
        },
        "ratio": { "value": ratio, "target": RATIO_TARGET, "met": met },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let path = dir.join("refill.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    println!("wrote {}", path.display());
}
