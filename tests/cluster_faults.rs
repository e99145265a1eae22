//! Faults inside a replica that is itself a Redis Cluster or a Sentinel
//! group, under the workload of the fault table (`quorum_sessions::chaos`):
//! three app servers (coordinators with their own connections, W = R = 2 of
//! N = 3) write and read sessions while one replica's deployment has a
//! fault, and the history is checked: no acknowledged write lost (against a
//! final quorum read), no stale read (R + W > N), no session read as
//! missing. Each fault that loses or may lose data inside the replica must
//! also give it a new epoch (the coordinators then refill it), and one
//! anti-entropy pass must make it complete again.
//!
//! Replica 0 and 2 are 3-primary clusters; replica 1 is the one with the
//! fault: a 3-primary cluster with a Cluster replica per primary, or a
//! Sentinel group. Local `redis-server` processes (`support/cluster.rs`,
//! `support/sentinel.rs`), no Docker. Each test prints its row of the fault
//! table and appends it to `target/fault-table.md` (as `tests/faults.rs`).
#![cfg(feature = "chaos")]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "support/sentinel.rs"]
mod sentinel_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::RedisCluster;
use fred::prelude::ServerConfig;
use quorum_sessions::chaos::{check, create_sessions, record_rows, start_workload, ScenarioReport};
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator};
use sentinel_support::SentinelGroup;

/// App servers running the workload.
const APP_SERVERS: usize = 3;
/// The replicas' and coordinators' request deadline (as the fault table's).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the workload runs before the fault, and after it is in place.
const BEFORE_FAULT: Duration = Duration::from_secs(2);
const AFTER_FAULT: Duration = Duration::from_secs(4);
/// Bound on the anti-entropy passes that refill the replica with the fault:
/// past the renewal lease's time to live (about 25 s here), which a renewal that
/// failed half way may leave behind.
const REFILL_BOUND: Duration = Duration::from_secs(90);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The coordinators' settings: those of the fault table, and no refill on
/// rejoin (the test runs its pass itself, after the workload).
fn config() -> ClusterConfig {
    let mut config = ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        request_timeout: REQUEST_TIMEOUT,
        hedge_delay: Some(Duration::from_millis(50)),
        ..ClusterConfig::default()
    };
    config.health.probe_interval_max = Duration::from_millis(500);
    config.anti_entropy.on_rejoin = false;
    config
}

/// One replica's deployment, as a fred server config.
async fn replica(name: &str, server: ServerConfig) -> RedisReplica {
    let mut config = RedisReplicaConfig::from_server(name, server);
    config.request_timeout = REQUEST_TIMEOUT;
    config.connect_timeout = Duration::from_secs(10);
    RedisReplica::connect(config)
        .await
        .expect("connect a RedisReplica")
}

fn clustered(cluster: &RedisCluster) -> ServerConfig {
    ServerConfig::new_clustered(vec![("127.0.0.1", cluster.seed_port())])
}

/// A coordinator with its own connections to the three deployments.
async fn app_server(servers: &[ServerConfig; 3]) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        replicas.push(Arc::new(
            replica(&format!("r{index}"), server.clone()).await,
        ));
    }
    Coordinator::connect(config(), replicas)
        .await
        .expect("connect a coordinator")
}

/// Runs the workload on [`APP_SERVERS`] app servers over `servers`, makes
/// `fault` happen to replica 1 (blocking: it drives `redis-cli`), and checks
/// the history, that replica 1 got a new epoch (when `loses_epoch`), and
/// that anti-entropy then makes it complete. Prints and records the row.
async fn run(
    name: &str,
    servers: [ServerConfig; 3],
    loses_epoch: bool,
    fault: impl FnOnce() + Send + 'static,
) -> ScenarioReport {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut apps = Vec::new();
    for _ in 0..APP_SERVERS {
        apps.push(app_server(&servers).await);
    }
    create_sessions(&apps[0])
        .await
        .expect("create the sessions");
    let epoch_before = apps[0].replica_states()[1].epoch;
    let workload = start_workload(&apps);
    tokio::time::sleep(BEFORE_FAULT).await;
    let started = Instant::now();
    tokio::task::spawn_blocking(fault)
        .await
        .expect("the fault ran");
    println!("{name}: fault in place in {:?}", started.elapsed());
    tokio::time::sleep(AFTER_FAULT).await;
    let history = workload.stop().await;
    let verdict = check(&history, &apps[0]).await;
    let epochs_changed = apps[0].stats().epochs_changed;
    let epoch_after = apps[0].replica_states()[1].epoch;
    let mut report = ScenarioReport::from_history(name, &history, &verdict);
    report.claim(
        "a real workload ran (over 1000 operations)",
        history.operations > 1_000,
        format!("{} operations", history.operations),
    );
    report.claim_clean_history(&verdict);
    if loses_epoch {
        report.claim(
            "replica 1 got a new epoch",
            epochs_changed >= 1 && epoch_after.map(|e| e.id) != epoch_before.map(|e| e.id),
            format!("{epochs_changed} epoch changes; {epoch_before:?} -> {epoch_after:?}"),
        );
    }
    // One pass at a time refills replica 1 (bounded).
    let deadline = Instant::now() + REFILL_BOUND;
    let mut refilled = false;
    while !refilled && Instant::now() < deadline {
        let pass = apps[0].anti_entropy().await;
        refilled = apps[0].replica_states()[1].readable;
        if !refilled {
            println!("{name}: pass {pass:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    report.claim(
        "anti-entropy makes replica 1 complete again",
        refilled,
        format!("not within {REFILL_BOUND:?}"),
    );
    for app in &apps {
        app.shutdown(Duration::from_secs(1)).await;
    }
    record_rows(
        std::slice::from_ref(&report),
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md"),
    );
    report
}

fn assert_held(report: &ScenarioReport) {
    let failures: Vec<String> = report.failures().iter().map(|c| c.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{}: broken claims:\n  {}",
        report.name,
        failures.join("\n  ")
    );
}

/// Starts the two healthy clusters (replicas 0 and 2) and replica 1's.
async fn three_clusters(replicas_of_one: usize) -> (RedisCluster, RedisCluster, RedisCluster) {
    let start = |replicas| {
        tokio::task::spawn_blocking(move || RedisCluster::start_with_replicas(3, replicas))
    };
    let (a, b, c) = tokio::join!(start(0), start(replicas_of_one), start(0));
    (
        a.expect("cluster start"),
        b.expect("cluster start"),
        c.expect("cluster start"),
    )
}

/// Cluster: one shard's primary of replica 1 SIGKILLed under the workload;
/// its Cluster replica is promoted (cluster-node-timeout 5 s), the killed
/// node then restarts and rejoins as a replica. Replica 1 is unreachable
/// meanwhile (fred 10 reconnects a clustered client as a whole), then its
/// promoted shard shows another process than its witnesses name: a new
/// epoch, and a refill. Nothing lost, stale or missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shard_primary_killed_its_replica_promoted() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = three_clusters(1).await;
    let servers = [clustered(&a), clustered(&b), clustered(&c)];
    let b = Arc::new(std::sync::Mutex::new(b));
    let faulty = Arc::clone(&b);
    let report = run(
        "Cluster: a shard's primary SIGKILLed, its replica promoted",
        servers,
        true,
        move || {
            let mut cluster = faulty.lock().expect("the cluster");
            let primary = cluster.primary_ports()[0];
            let follower = cluster.follower_of(primary).expect("a Cluster replica");
            cluster.kill(primary);
            cluster.wait_primary(follower);
            cluster.restart(primary);
        },
    )
    .await;
    assert_held(&report);
}

/// Cluster: one shard's primary of replica 1 restarted empty (no Cluster
/// replica): the next request for any of its keys finds the slot's witness
/// missing, and replica 1 gets a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shard_restarted_empty() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = three_clusters(0).await;
    let servers = [clustered(&a), clustered(&b), clustered(&c)];
    let b = Arc::new(std::sync::Mutex::new(b));
    let faulty = Arc::clone(&b);
    let report = run(
        "Cluster: a shard restarted empty",
        servers,
        true,
        move || {
            let mut cluster = faulty.lock().expect("the cluster");
            let primary = cluster.primary_ports()[1];
            cluster.kill(primary);
            cluster.restart(primary);
        },
    )
    .await;
    assert_held(&report);
}

/// Cluster: 2,000 slots of replica 1 migrated from one primary to another
/// while serving (`redis-cli --cluster reshard`: `ASK`, then `MOVED`).
/// Nothing is lost, stale or missing; the migrated slots' witnesses name
/// the old primary's process, so the replica renews its epoch (a
/// conservative refill, see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reshard_while_serving() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = three_clusters(0).await;
    let servers = [clustered(&a), clustered(&b), clustered(&c)];
    let b = Arc::new(b);
    let faulty = Arc::clone(&b);
    let report = run(
        "Cluster: 2,000 slots resharded while serving",
        servers,
        true,
        move || {
            let primaries = faulty.primary_ports();
            faulty.reshard(primaries[0], primaries[1], 2_000);
        },
    )
    .await;
    assert_held(&report);
}

/// Sentinel: replica 1 is a Sentinel group (a primary, its replica, one
/// Sentinel); `SENTINEL FAILOVER` under the workload promotes the replica,
/// and the Sentinel later demotes the old primary (closing its clients'
/// connections; until then fred's connection stays on it, and what it
/// acknowledges there is lost at its resync: the other replicas hold it).
/// The promoted process is not the one that made the epoch: a new epoch,
/// and a refill. Nothing lost, stale or missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover() {
    let _serial = SERIAL.lock().await;
    let (a, c) = tokio::join!(
        tokio::task::spawn_blocking(|| RedisCluster::start(3)),
        tokio::task::spawn_blocking(|| RedisCluster::start(3)),
    );
    let (a, c) = (a.expect("cluster start"), c.expect("cluster start"));
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .expect("sentinel group start");
    let servers = [clustered(&a), group.server_config(), clustered(&c)];
    let group = Arc::new(group);
    let faulty = Arc::clone(&group);
    let report = run(
        "Sentinel: SENTINEL FAILOVER of one replica",
        servers,
        true,
        move || {
            // In place once the old primary is a replica too: until then
            // it still takes writes (Sentinel demotes it some seconds
            // later) and fred's connection stays on it.
            let promoted = faulty.failover();
            faulty.wait_demoted(if promoted == faulty.replica {
                faulty.primary
            } else {
                faulty.replica
            });
        },
    )
    .await;
    assert_held(&report);
}
