//! A dropped connection to a healthy Redis: how long the replica is out of
//! use, and what it costs a workload.
//!
//! `CLIENT KILL TYPE normal` closes every client connection of a Redis that
//! keeps running, as an idle timeout, a proxy or a failover does. fred
//! reconnects; the question is how soon the replica is used again. These
//! tests PRINT the figures (time back in use, failed operations) and assert
//! only generous correctness bounds (no timing assertion: the machine is a
//! shared, noisy VM):
//!
//! - `one_replica_back_in_use_after_its_connections_are_killed`: one
//!   `RedisReplica`, reads back to back, the connections killed ten times;
//!   per kill, the time from the kill to the first successful read and the
//!   reads that failed meanwhile.
//! - `periodic_client_kill_under_a_workload`: a coordinator over three
//!   containers (W = R = 2) under a write-and-read workload while a task
//!   kills the connections of a random node every 250 ms for a few
//!   seconds; the failed operations over the total, and how long nodes were
//!   Down (skipped) per kill, and with two Down at once.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorum_sessions::replica::redis::{
    RedisReplica, DEFAULT_RECONNECT_DELAY_MAX, DEFAULT_RECONNECT_DELAY_MIN,
};
use quorum_sessions::replica::{MergeMode, Replica};
use quorum_sessions::testing::{live_record, wall_clock_ms};
use quorum_sessions::Health;
use quorum_sessions::{ClusterConfig, Coordinator, Error, Mutation};
use rand::Rng;
use tokio::time::Instant;

/// Runs one at a time: the figures of one are not mixed with another's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KILL_EVERY: Duration = Duration::from_millis(250);
const KILL_FOR: Duration = Duration::from_secs(5);

/// A replica with the library's default reconnection delays (the harness's
/// are shorter), as an application would run it.
async fn default_replica(node: &support::RedisNode) -> RedisReplica {
    let mut config = node.replica_config();
    config.reconnect_delay_min = DEFAULT_RECONNECT_DELAY_MIN;
    config.reconnect_delay_max = DEFAULT_RECONNECT_DELAY_MAX;
    RedisReplica::connect(config).await.expect("connect")
}

/// Closes every client connection of `node` but the one sending it.
async fn kill_clients(node: &support::RedisNode) {
    let reply = node.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    assert!(reply.starts_with(':'), "CLIENT KILL answered {reply:?}");
}

/// An operation's failure without its key: the error's kind and each
/// replica's failure kind and detail (no session data in either).
fn error_kind(error: &Error) -> String {
    let failures = match error {
        Error::QuorumNotReached { failures, .. } | Error::Unavailable { failures, .. } => failures
            .iter()
            .map(|f| format!("{}", f.error))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    let kind = format!("{error}");
    let kind = kind.split(':').next().unwrap_or_default();
    format!("{kind} [{failures}]")
}

/// `RUST_LOG=quorum_sessions=debug` shows each replica failure (keys cut
/// to 8 characters, no values).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_back_in_use_after_its_connections_are_killed() {
    let _serial = SERIAL.lock().await;
    init_logs();
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = default_replica(node).await;
    let now = wall_clock_ms();
    replica
        .merge("t:{k}", &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
    replica.read("t:{k}").await.expect("warm read");

    let mut outages = Vec::new();
    let mut failed_total = 0;
    for _ in 0..10 {
        kill_clients(node).await;
        let killed = Instant::now();
        let mut failed = 0;
        let back = loop {
            match replica.read("t:{k}").await {
                Ok(_) => break killed.elapsed(),
                Err(error) => {
                    failed += 1;
                    println!(
                        "B9 one replica: a read failed {:.1} ms after the kill: {error}",
                        millis(killed.elapsed())
                    );
                }
            }
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "the replica was not back in use 10 s after a CLIENT KILL"
            );
            tokio::task::yield_now().await;
        };
        outages.push(back);
        failed_total += failed;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outages.sort();
    println!(
        "B9 one replica, CLIENT KILL x{}: back in use after median {:.1} ms, max {:.1} ms; \
         {failed_total} reads failed in all",
        outages.len(),
        millis(outages[outages.len() / 2]),
        millis(outages[outages.len() - 1]),
    );
    // Still the same epoch (the process did not change).
    assert!(replica.read("t:{k}").await.expect("read").record.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_client_kill_under_a_workload() {
    let _serial = SERIAL.lock().await;
    init_logs();
    let nodes = support::RedisNodes::start(3).await;
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for node in nodes.nodes() {
        replicas.push(Arc::new(default_replica(node).await));
    }
    let config = ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        request_timeout: Duration::from_millis(300),
        ..ClusterConfig::default()
    };
    let coordinator = Coordinator::connect(config, replicas)
        .await
        .expect("coordinator");
    let key = |i: u64| format!("s:{{kill-{}}}", i % 20);
    let write = |c: &Coordinator, i: u64| {
        let now = c.now_ms();
        Mutation::update(now + 600_000, now + 3_600_000).set("n", i.to_string())
    };
    for i in 0..20 {
        let now = coordinator.now_ms();
        let create = Mutation::create(now + 600_000, now + 3_600_000).set("n", "0");
        coordinator
            .write(&key(i), create)
            .await
            .expect("create before the kills");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (total, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut workers = Vec::new();
    for task in 0..4u64 {
        let (c, stop, total, failed, errors) = (
            coordinator.clone(),
            stop.clone(),
            total.clone(),
            failed.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                i += 4;
                let wrote = c.write(&key(i), write(&c, i)).await;
                let read = c.read(&key(i + 7)).await;
                for error in [wrote.as_ref().err(), read.as_ref().err()]
                    .into_iter()
                    .flatten()
                {
                    *errors.lock().unwrap().entry(error_kind(error)).or_insert(0) += 1;
                }
                let (wrote, read) = (wrote.is_ok(), read.is_ok());
                total.fetch_add(2, Ordering::Relaxed);
                failed.fetch_add(u64::from(!wrote) + u64::from(!read), Ordering::Relaxed);
                // A failure can come back without waiting (replicas Down):
                // pause as a client would, and never starve the runtime.
                if !(wrote && read) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // Samples every node's health every 2 ms: time Down, per node and with
    // two nodes Down at once.
    let sampler = {
        let (c, stop) = (coordinator.clone(), stop.clone());
        tokio::spawn(async move {
            let mut down = [Duration::ZERO; 3];
            let mut two_down = Duration::ZERO;
            let mut longest = Duration::ZERO;
            let mut since: [Option<Instant>; 3] = [None; 3];
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = Instant::now();
                let step = now - last;
                last = now;
                let states = c.replica_states();
                let mut downs = 0;
                for (i, state) in states.iter().enumerate() {
                    if state.health == Health::Down {
                        downs += 1;
                        down[i] += step;
                        let start = *since[i].get_or_insert(now);
                        longest = longest.max(now - start);
                    } else {
                        since[i] = None;
                    }
                }
                if downs >= 2 {
                    two_down += step;
                }
            }
            (down, two_down, longest)
        })
    };

    let started = Instant::now();
    let mut kills = 0u32;
    while started.elapsed() < KILL_FOR {
        tokio::time::sleep(KILL_EVERY).await;
        let victim = rand::rng().random_range(0..nodes.len());
        kill_clients(nodes.node(victim)).await;
        kills += 1;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    let (down, two_down, longest) = sampler.await.expect("sampler");
    let (total, failed) = (
        total.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let down_total: Duration = down.iter().sum();
    println!(
        "B9 CLIENT KILL every {} ms on a random node for {:.1} s ({kills} kills): \
         {failed} of {total} operations failed ({:.1}%); nodes Down {:.0} ms in all \
         ({:.1} ms per kill, longest stretch {:.0} ms), two nodes Down at once {:.0} ms \
         ({:.1}% of the time)",
        KILL_EVERY.as_millis(),
        elapsed.as_secs_f64(),
        100.0 * failed as f64 / total.max(1) as f64,
        millis(down_total),
        millis(down_total) / f64::from(kills.max(1)),
        millis(longest),
        millis(two_down),
        100.0 * two_down.as_secs_f64() / elapsed.as_secs_f64(),
    );
    println!("B9 failures by kind: {:?}", errors.lock().unwrap());
    println!(
        "B9 states after the kills: {:?}",
        coordinator.replica_states()
    );
    println!("B9 stats after the kills: {:?}", coordinator.stats());
    assert!(total > 0, "the workload ran");

    // Once the kills stop, every node is back in use and operations succeed.
    let settle = Instant::now();
    while coordinator
        .replica_states()
        .iter()
        .any(|s| s.health == Health::Down)
    {
        assert!(
            settle.elapsed() < Duration::from_secs(10),
            "a node stayed Down 10 s after the kills stopped: {:?}",
            coordinator.replica_states()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..20 {
        coordinator
            .write(&key(i), write(&coordinator, 1000 + i))
            .await
            .expect("write after the kills");
        coordinator
            .read(&key(i))
            .await
            .expect("read after the kills");
    }
    assert_eq!(
        coordinator.stats().epochs_changed,
        0,
        "a dropped connection is not a new epoch"
    );
}
