//! `cargo bench --bench cluster_scale`: what sharding each replica buys or
//! costs per operation. One quorum (N = 3, W = 2, R = 1, per-key read
//! order) over three kinds of replica, measured in one run, taking turns:
//!
//! - `standalone`: three `redis-server` processes (the library's usual
//!   deployment, for reference);
//! - `cluster-1`: three 1-shard Redis Clusters (three processes: what
//!   Cluster mode costs by itself);
//! - `cluster-3`: three 3-shard Redis Clusters (nine processes: what
//!   sharding adds on the same machine).
//!
//! Workloads: `update` (2 changed fields of a preloaded 10-field, 1 KB
//! session) and `read`, at concurrency 1 and 64. Printed per case:
//! operations per second, p50 latency, and the servers' CPU per operation
//! (every Redis process of the system, from `/proc/<pid>/task/*/schedstat`);
//! written to `target/bench/cluster_scale.json`.
//!
//! On a 2-core machine the Redis processes and the client share the same
//! two cores, so sharding cannot add throughput here: what the figures
//! show is the cost per operation (Cluster mode's witness check, the epoch
//! read around each record's call, one record per script call) and
//! whether it stays flat as shards are added. Spread over machines, each
//! shard brings its own core and memory, and a replica's capacity grows
//! with its shards until the app servers' fan-out is the limit.
//!
//! `QS_BENCH_OPS` scales the operation counts (default 1.0).

#[path = "../tests/support/cluster.rs"]
mod cluster_support;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::RedisCluster;
use common::{process_cpu, RedisServer};
use fred::prelude::ServerConfig;
use futures::StreamExt;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation, ReadOrder};

/// Preloaded sessions.
const SESSIONS: usize = 2_000;
const FIELDS: usize = 10;
const FIELD_BYTES: usize = 100;
/// Turns the systems take per case (each runs a third of the operations).
const ROUNDS: usize = 3;
const HOUR_MS: u64 = 3_600_000;

fn key(index: usize) -> String {
    format!("s:{{scale-{index}}}")
}

/// One system: its coordinator and the pids of its Redis processes.
struct System {
    name: &'static str,
    coordinator: Coordinator,
    pids: Vec<u32>,
}

impl System {
    fn server_cpu(&self) -> Duration {
        self.pids.iter().filter_map(|pid| process_cpu(*pid)).sum()
    }
}

async fn coordinator(servers: Vec<ServerConfig>, name: &str) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for (index, server) in servers.into_iter().enumerate() {
        let mut config = RedisReplicaConfig::from_server(format!("{name}-{index}"), server);
        config.request_timeout = Duration::from_secs(10);
        config.connect_timeout = Duration::from_secs(30);
        replicas.push(Arc::new(
            RedisReplica::connect(config)
                .await
                .expect("connect replica"),
        ));
    }
    let config = ClusterConfig {
        write_quorum: 2,
        read_quorum: 1,
        read_order: ReadOrder::PerKey,
        request_timeout: Duration::from_secs(10),
        hedge_delay: None,
        ..ClusterConfig::default()
    };
    Coordinator::connect(config, replicas)
        .await
        .expect("coordinator")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Update,
    Read,
}

async fn preload(coordinator: &Coordinator) {
    let value = "v".repeat(FIELD_BYTES);
    let written = futures::stream::iter(0..SESSIONS)
        .map(|index| {
            let (coordinator, value) = (coordinator.clone(), value.clone());
            async move {
                let now = coordinator.now_ms();
                let mut mutation = Mutation::create(now + HOUR_MS, now + 2 * HOUR_MS);
                for field in 0..FIELDS {
                    mutation = mutation.set(format!("field{field}"), value.clone());
                }
                match coordinator.write(&key(index), mutation).await {
                    Ok(_) => true,
                    Err(error) if index == 0 => panic!("preload: {error:?}"),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(written, SESSIONS, "every session preloaded");
}

/// What one case measured on one system.
#[derive(Default)]
struct Measure {
    ops: usize,
    elapsed: Duration,
    server_cpu: Duration,
    latencies_us: Vec<u32>,
}

impl Measure {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn p50_us(&mut self) -> u32 {
        self.latencies_us.sort_unstable();
        self.latencies_us
            .get(self.latencies_us.len() / 2)
            .copied()
            .unwrap_or(0)
    }
    fn cpu_per_op_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.ops as f64
    }
}

async fn run_slice(
    system: &System,
    workload: Workload,
    concurrency: usize,
    ops: usize,
    round: usize,
    measure: &mut Measure,
) {
    let per_worker = (ops / concurrency).max(1);
    let cpu_before = system.server_cpu();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let coordinator = system.coordinator.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for op in round * per_worker..(round + 1) * per_worker {
                    let index = (worker * 7919 + op * 104_729) % SESSIONS;
                    let t = Instant::now();
                    match workload {
                        Workload::Update => {
                            let now = coordinator.now_ms();
                            let mutation = Mutation::update(now + HOUR_MS, now + 2 * HOUR_MS)
                                .set("field0", format!("{worker}-{op}"))
                                .set("field1", format!("{op}"));
                            coordinator
                                .write(&key(index), mutation)
                                .await
                                .expect("update");
                        }
                        Workload::Read => {
                            let record = coordinator.read(&key(index)).await.expect("read");
                            assert!(record.is_some(), "preloaded session missing");
                        }
                    }
                    latencies.push(t.elapsed().as_micros() as u32);
                }
                latencies
            })
        })
        .collect();
    for worker in workers {
        measure.latencies_us.extend(worker.await.expect("worker"));
    }
    measure.elapsed += started.elapsed();
    measure.ops += per_worker * concurrency;
    measure.server_cpu += system.server_cpu().saturating_sub(cpu_before);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let scale: f64 = common::env("QS_BENCH_OPS").unwrap_or(1.0);
    let started = Instant::now();

    let standalone_servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(&[])).collect();
    for server in &standalone_servers {
        common::client(server.port).await;
    }
    let standalone = System {
        name: "standalone",
        coordinator: coordinator(
            standalone_servers
                .iter()
                .map(|s| ServerConfig::new_centralized("127.0.0.1", s.port))
                .collect(),
            "standalone",
        )
        .await,
        pids: standalone_servers.iter().map(RedisServer::pid).collect(),
    };
    let clusters = |shards: usize| {
        tokio::task::spawn_blocking(move || {
            (0..3)
                .map(|_| RedisCluster::start(shards))
                .collect::<Vec<_>>()
        })
    };
    let (one, three) = tokio::join!(clusters(1), clusters(3));
    let (one, three) = (
        one.expect("1-shard clusters"),
        three.expect("3-shard clusters"),
    );
    let system_of = |name: &'static str, clusters: &[RedisCluster]| {
        let servers = clusters
            .iter()
            .map(|c| ServerConfig::new_clustered(vec![("127.0.0.1", c.seed_port())]))
            .collect();
        let pids = clusters.iter().flat_map(RedisCluster::pids).collect();
        async move {
            System {
                name,
                coordinator: coordinator(servers, name).await,
                pids,
            }
        }
    };
    let cluster_1 = system_of("cluster-1", &one).await;
    let cluster_3 = system_of("cluster-3", &three).await;
    let systems = [standalone, cluster_1, cluster_3];
    for system in &systems {
        preload(&system.coordinator).await;
    }
    println!(
        "set up and preloaded {SESSIONS} sessions per system in {:?}",
        started.elapsed()
    );

    let cases = [
        (Workload::Update, 64, 6_000),
        (Workload::Read, 64, 12_000),
        (Workload::Update, 1, 1_500),
        (Workload::Read, 1, 3_000),
    ];
    println!();
    println!("| case | system | ops/s | p50 µs | server CPU µs/op | ops/s ÷ standalone |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut json = Vec::new();
    for (workload, concurrency, ops) in cases {
        let ops = ((ops as f64 * scale) as usize).max(concurrency * ROUNDS);
        let mut measures: Vec<Measure> = systems.iter().map(|_| Measure::default()).collect();
        for round in 0..ROUNDS {
            for (system, measure) in systems.iter().zip(measures.iter_mut()) {
                run_slice(system, workload, concurrency, ops / ROUNDS, round, measure).await;
            }
        }
        let reference = measures[0].ops_per_s();
        for (system, measure) in systems.iter().zip(measures.iter_mut()) {
            let case = format!("{workload:?} c={concurrency}").to_lowercase();
            let (rate, p50, cpu) = (
                measure.ops_per_s(),
                measure.p50_us(),
                measure.cpu_per_op_us(),
            );
            println!(
                "| {case} | {} | {rate:.0} | {p50} | {cpu:.1} | {:.2} |",
                system.name,
                rate / reference
            );
            json.push(serde_json::json!({
                "case": case,
                "system": system.name,
                "ops_per_s": rate,
                "p50_us": p50,
                "server_cpu_us_per_op": cpu,
                "ratio_to_standalone": rate / reference,
            }));
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&path);
    let file = path.join("cluster_scale.json");
    std::fs::write(&file, serde_json::to_string_pretty(&json).expect("json"))
        .expect("write the json");
    println!(
        "\nwritten to {} ({:?} in all)",
        file.display(),
        started.elapsed()
    );
    for system in &systems {
        system.coordinator.shutdown(Duration::from_secs(1)).await;
    }
}
