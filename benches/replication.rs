//! `cargo bench --bench replication`: this library against a single Redis and
//! the tutorial's naive fan-out, measured side by side in one run.
//!
//! It starts its own `redis-server` processes on 127.0.0.1 (Docker's port
//! forwarding would blur the figures), interleaves the systems round by round
//! so that machine drift hits all alike, prints a table, and writes the same
//! figures to `target/bench/replication.json`.
//!
//! Systems: `single` (one Redis: HSET + PEXPIREAT pipelined, HGETALL),
//! `naive` (each of 3 Redis in turn for writes, the first for reads), and
//! `quorum` (this library, N=3 W=2 with R=1 and R=2; N=5 and N=7 with a
//! majority W for the fan-out case). A session is 10 fields of 100 bytes.
//!
//! Environment: `QS_BENCH_OPS` scales the operation counts (default 1.0).

mod common;
use common::{client, RedisServer};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures::StreamExt;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation, ReadOrder};

const FIELDS: usize = 10;
const FIELD_BYTES: usize = 100;
const SESSIONS: usize = 1_000;
/// Rounds per case: the systems take turns round by round. At concurrency 1
/// a latency depends on how fast this VM wakes a sleeping thread, which
/// drifts within seconds: short rounds let every system sample the same
/// drift.
fn rounds(concurrency: usize) -> usize {
    if concurrency == 1 {
        30
    } else {
        3
    }
}
const SERVERS: usize = 7;

/// The order in which `systems` systems take their turn in round `round`:
/// each round starts one system further, so that no system always runs
/// first (right after another workload) or right after the same neighbour:
/// at concurrency 1 on a shared VM, position alone can double a p50.
fn turns(round: usize, systems: usize) -> impl Iterator<Item = usize> {
    (0..systems).map(move |i| (round + i) % systems)
}

fn session_fields() -> Vec<(String, Vec<u8>)> {
    (0..FIELDS)
        .map(|i| (format!("field{i}"), vec![b'a' + i as u8; FIELD_BYTES]))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

enum System {
    Single(Client),
    Naive(Vec<Client>),
    /// Not a store: plain commands to N Redis at once (writes go to all and
    /// answer after `acks`, the rest finishing in the background as
    /// `quorum`'s do; reads from the key's replica as `quorum` spreads them),
    /// no versions, no merge, no epochs. The floor any N-way replication on
    /// fred pays on this machine: each ratio is also printed with `fanout`
    /// in place of `quorum`, to tell the cost of fanning out from ours.
    Fanout {
        clients: Vec<Client>,
        acks: usize,
    },
    Quorum(Coordinator),
}

impl System {
    fn key(&self, index: usize) -> String {
        match self {
            System::Single(_) => format!("single:s:{{{index}}}"),
            System::Naive(_) => format!("naive:s:{{{index}}}"),
            System::Fanout { .. } => format!("fanout:s:{{{index}}}"),
            System::Quorum(_) => format!("s:{{{index}}}"),
        }
    }

    async fn write(&self, index: usize) {
        let key = self.key(index);
        let expiry = now_ms() + 3_600_000;
        match self {
            System::Single(client) => plain_write(client, &key, expiry).await,
            System::Naive(clients) => {
                for client in clients {
                    plain_write(client, &key, expiry).await;
                }
            }
            System::Fanout { clients, acks } => {
                let mut writes: futures::stream::FuturesUnordered<_> = clients
                    .iter()
                    .map(|client| {
                        let (client, key) = (client.clone(), key.clone());
                        async move { plain_write(&client, &key, expiry).await }
                    })
                    .collect();
                for _ in 0..*acks {
                    writes.next().await;
                }
                if !writes.is_empty() {
                    tokio::spawn(async move { while writes.next().await.is_some() {} });
                }
            }
            System::Quorum(coordinator) => {
                let mut mutation = Mutation::update(expiry, expiry + 3_600_000);
                for (name, value) in session_fields() {
                    mutation = mutation.set(name, value);
                }
                coordinator
                    .write(&key, mutation)
                    .await
                    .expect("quorum write");
            }
        }
    }

    async fn read(&self, index: usize) {
        let key = self.key(index);
        match self {
            System::Single(client) => plain_read(client, &key).await,
            System::Naive(clients) => plain_read(&clients[0], &key).await,
            System::Fanout { clients, .. } => {
                let replica = quorum_sessions::core::read::key_hash(&key) as usize % clients.len();
                plain_read(&clients[replica], &key).await
            }
            System::Quorum(coordinator) => {
                let record = coordinator.read(&key).await.expect("quorum read");
                assert!(record.is_some(), "preloaded session missing");
            }
        }
    }
}

async fn plain_write(client: &Client, key: &str, expiry: u64) {
    let pipeline = client.pipeline();
    let fields: Vec<(String, Vec<u8>)> = session_fields();
    let _: () = pipeline.hset(key, fields).await.expect("queue hset");
    let _: () = pipeline
        .pexpire_at(key, expiry as i64, None)
        .await
        .expect("queue pexpireat");
    let _: Vec<Value> = pipeline.all().await.expect("pipeline");
}

async fn plain_read(client: &Client, key: &str) {
    let map: BTreeMap<String, Vec<u8>> = client.hgetall(key).await.expect("hgetall");
    assert_eq!(map.len(), FIELDS, "preloaded session missing");
}

async fn quorum(
    servers: &[RedisServer],
    n: usize,
    w: usize,
    r: usize,
    prefix: &str,
) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for server in &servers[..n] {
        let mut config = RedisReplicaConfig::from_url(
            format!("{prefix}{}", server.port),
            format!("redis://127.0.0.1:{}", server.port),
        );
        config.key_prefix = format!("{prefix}:");
        replicas.push(Arc::new(
            RedisReplica::connect(config)
                .await
                .expect("connect replica"),
        ));
    }
    let config = ClusterConfig {
        write_quorum: w,
        read_quorum: r,
        read_order: ReadOrder::PerKey,
        ..ClusterConfig::default()
    };
    Coordinator::connect(config, replicas)
        .await
        .expect("coordinator")
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Write,
    Read,
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Mixed => "mixed",
        }
    }
}

#[derive(Default)]
struct Measure {
    latencies_us: Vec<u32>,
    ops: usize,
    elapsed: Duration,
    /// CPU time of this process (the client side) and of every Redis server.
    client_cpu: Duration,
    server_cpu: Duration,
}

/// CPU used so far by this process and by all the servers (zero where it
/// cannot be read).
fn cpu_now(servers: &[RedisServer]) -> (Duration, Duration) {
    let client = common::process_cpu(std::process::id()).unwrap_or_default();
    let server = servers.iter().filter_map(RedisServer::cpu).sum();
    (client, server)
}

async fn run_round(
    servers: &[RedisServer],
    system: &Arc<System>,
    workload: Workload,
    concurrency: usize,
    ops: usize,
    measure: &mut Measure,
) {
    let per_worker = ops / concurrency;
    let (client_before, server_before) = cpu_now(servers);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let system = system.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for op in 0..per_worker {
                    let index = (worker * 7919 + op * 104_729) % SESSIONS;
                    let write = match workload {
                        Workload::Write => true,
                        Workload::Read => false,
                        Workload::Mixed => op % 5 == 0,
                    };
                    let t = Instant::now();
                    if write {
                        system.write(index).await;
                    } else {
                        system.read(index).await;
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
    let (client_after, server_after) = cpu_now(servers);
    measure.client_cpu += client_after.saturating_sub(client_before);
    measure.server_cpu += server_after.saturating_sub(server_before);
}

/// `ops` operations of `workload` on each of `systems`, taken in
/// [`rounds`] short rounds in which the systems take turns (see [`turns`]):
/// one measure per system, in order.
async fn interleaved(
    servers: &[RedisServer],
    systems: &[&Arc<System>],
    workload: Workload,
    concurrency: usize,
    ops: usize,
) -> Vec<Measure> {
    let mut measures: Vec<Measure> = systems.iter().map(|_| Measure::default()).collect();
    for round in 0..rounds(concurrency) {
        for i in turns(round, systems.len()) {
            let per_round = ops / rounds(concurrency);
            run_round(
                servers,
                systems[i],
                workload,
                concurrency,
                per_round,
                &mut measures[i],
            )
            .await;
        }
    }
    measures
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

struct Case {
    name: String,
    system: String,
    concurrency: usize,
    ops_per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    /// CPU per operation, µs: this process (client) and all servers.
    client_cpu_us: f64,
    server_cpu_us: f64,
}

fn summarize(name: &str, system: &str, concurrency: usize, mut measure: Measure) -> Case {
    measure.latencies_us.sort_unstable();
    Case {
        name: name.to_owned(),
        system: system.to_owned(),
        concurrency,
        ops_per_sec: measure.ops as f64 / measure.elapsed.as_secs_f64(),
        p50_us: percentile(&measure.latencies_us, 0.50),
        p99_us: percentile(&measure.latencies_us, 0.99),
        client_cpu_us: measure.client_cpu.as_secs_f64() * 1e6 / measure.ops as f64,
        server_cpu_us: measure.server_cpu.as_secs_f64() * 1e6 / measure.ops as f64,
    }
}

async fn preload(system: &System) {
    if let System::Quorum(coordinator) = system {
        for index in 0..SESSIONS {
            let now = now_ms();
            let mutation = Mutation::create(now + 3_600_000, now + 7_200_000).set("created", "1");
            let _ = coordinator.write(&system.key(index), mutation).await;
        }
    }
    for index in 0..SESSIONS {
        system.write(index).await;
    }
}

async fn memory_usage(client: &Client, key: &str) -> u64 {
    client
        .memory_usage::<Option<u64>, _>(key, Some(0))
        .await
        .expect("memory usage")
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = common::env("QS_BENCH_OPS").unwrap_or(1.0);
    let ops_for =
        |concurrency: usize| ((if concurrency == 1 { 1_500.0 } else { 12_800.0 }) * scale) as usize;
    let servers: Vec<RedisServer> = (0..SERVERS).map(|_| RedisServer::start(&[])).collect();
    let mut all_clients = Vec::new();
    for server in &servers {
        all_clients.push(client(server.port).await);
    }
    let clients = all_clients[..3].to_vec();
    let fanout_of = |n: usize| {
        Arc::new(System::Fanout {
            clients: all_clients[..n].to_vec(),
            acks: n / 2 + 1,
        })
    };
    let mut systems: Vec<(String, Arc<System>)> = vec![
        (
            "single".into(),
            Arc::new(System::Single(clients[0].clone())),
        ),
        ("naive".into(), Arc::new(System::Naive(clients.clone()))),
        ("fanout".into(), fanout_of(3)),
        (
            "quorum-r1".into(),
            Arc::new(System::Quorum(quorum(&servers, 3, 2, 1, "q3").await)),
        ),
        (
            "quorum-r2".into(),
            Arc::new(System::Quorum(quorum(&servers, 3, 2, 2, "q3").await)),
        ),
    ];
    let fanout: Vec<(String, Arc<System>)> = vec![
        ("fanout-n5".into(), fanout_of(5)),
        ("fanout-n7".into(), fanout_of(7)),
        (
            "quorum-n5".into(),
            Arc::new(System::Quorum(quorum(&servers, 5, 3, 1, "q5").await)),
        ),
        (
            "quorum-n7".into(),
            Arc::new(System::Quorum(quorum(&servers, 7, 4, 1, "q7").await)),
        ),
    ];
    for (_, system) in systems.iter().chain(&fanout) {
        preload(system).await;
    }
    if let Ok(spec) = std::env::var("QS_BENCH_PROFILE") {
        return profile(&spec, &servers, &systems).await;
    }
    let mut cases = Vec::new();
    for concurrency in [1, 64] {
        for workload in [Workload::Write, Workload::Read, Workload::Mixed] {
            let list: Vec<&Arc<System>> = systems.iter().map(|(_, system)| system).collect();
            let measures =
                interleaved(&servers, &list, workload, concurrency, ops_for(concurrency)).await;
            for ((name, _), measure) in systems.iter().zip(measures) {
                cases.push(summarize(workload.name(), name, concurrency, measure));
            }
        }
    }
    // Fan-out: N = 3, 5, 7 writes at concurrency 1, interleaved.
    systems.retain(|(name, _)| name == "quorum-r1" || name == "fanout");
    let fanout_systems: Vec<_> = systems.iter().chain(&fanout).collect();
    let list: Vec<&Arc<System>> = fanout_systems.iter().map(|(_, system)| system).collect();
    let measures = interleaved(&servers, &list, Workload::Write, 1, ops_for(1)).await;
    for ((name, _), measure) in fanout_systems.iter().zip(measures) {
        let label = match name.as_str() {
            "quorum-r1" => "quorum-n3",
            "fanout" => "fanout-n3",
            other => other,
        };
        cases.push(summarize("write-fanout", label, 1, measure));
    }
    let single_bytes = memory_usage(&clients[0], "single:s:{0}").await;
    let quorum_bytes = memory_usage(&clients[0], "q3:s:{0}").await;
    report(&cases, single_bytes, quorum_bytes);
    // Server-side cost per command on the first server (it serves `single`,
    // the first `naive` replica and a replica of every quorum system).
    let stats: String = clients[0]
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    println!("\nserver 0, INFO commandstats (calls, µs per call):");
    for line in stats.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("?")
                .to_owned()
        };
        if ["evalsha", "hset", "hgetall", "mget", "pexpireat", "eval"].contains(&name) {
            println!(
                "  {name:<10} {:>10} {:>8}",
                field("calls"),
                field("usec_per_call")
            );
        }
    }
}

/// `QS_BENCH_PROFILE=<workload>:<system>:<concurrency>` (e.g.
/// `read:quorum-r1:64`): runs that one case for about 10 s, for a profiler
/// attached to this process (`perf record -g -p <pid>`), and prints its line.
async fn profile(spec: &str, servers: &[RedisServer], systems: &[(String, Arc<System>)]) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [workload, name, concurrency] = parts.as_slice() else {
        panic!("QS_BENCH_PROFILE is <workload>:<system>:<concurrency>, not {spec:?}");
    };
    let workload = [Workload::Write, Workload::Read, Workload::Mixed]
        .into_iter()
        .find(|w| w.name() == *workload)
        .unwrap_or_else(|| panic!("workload is write, read or mixed, not {workload:?}"));
    let concurrency: usize = concurrency.parse().expect("concurrency is a number");
    let (_, system) = systems
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no system {name:?}"));
    println!("profiling pid {}", std::process::id());
    let mut measure = Measure::default();
    while measure.elapsed < Duration::from_secs(10) {
        let ops = ops_for_profile(concurrency);
        run_round(servers, system, workload, concurrency, ops, &mut measure).await;
    }
    let case = summarize(workload.name(), name, concurrency, measure);
    report_cases(std::slice::from_ref(&case));
}

fn ops_for_profile(concurrency: usize) -> usize {
    concurrency * 100
}

fn find<'a>(cases: &'a [Case], name: &str, system: &str, concurrency: usize) -> &'a Case {
    cases
        .iter()
        .find(|c| c.name == name && c.system == system && c.concurrency == concurrency)
        .unwrap_or_else(|| panic!("no case {name}/{system}/{concurrency}"))
}

fn report_cases(cases: &[Case]) {
    println!(
        "{:<14} {:<10} {:>5} {:>12} {:>9} {:>9} {:>10} {:>10}",
        "case", "system", "conc", "ops/s", "p50 µs", "p99 µs", "cpu cli/op", "cpu srv/op"
    );
    for c in cases {
        println!(
            "{:<14} {:<10} {:>5} {:>12.0} {:>9} {:>9} {:>10.1} {:>10.1}",
            c.name,
            c.system,
            c.concurrency,
            c.ops_per_sec,
            c.p50_us,
            c.p99_us,
            c.client_cpu_us,
            c.server_cpu_us
        );
    }
}

fn report(cases: &[Case], single_bytes: u64, quorum_bytes: u64) {
    report_cases(cases);
    let p50 = |name, system, conc| f64::from(find(cases, name, system, conc).p50_us);
    let ops = |name, system, conc| find(cases, name, system, conc).ops_per_sec;
    // (ratio name, value, the same ratio for `fanout` in place of `quorum`
    // where one applies, target, true when the target is an upper bound)
    let ratios: Vec<(&str, f64, Option<f64>, f64, bool)> = vec![
        (
            "write_p50_quorum_over_single",
            p50("write", "quorum-r1", 1) / p50("write", "single", 1),
            Some(p50("write", "fanout", 1) / p50("write", "single", 1)),
            1.5,
            true,
        ),
        (
            "read_p50_r1_over_single",
            p50("read", "quorum-r1", 1) / p50("read", "single", 1),
            Some(p50("read", "fanout", 1) / p50("read", "single", 1)),
            1.15,
            true,
        ),
        (
            "read_p50_r2_over_single",
            p50("read", "quorum-r2", 1) / p50("read", "single", 1),
            None,
            1.4,
            true,
        ),
        (
            "read_ops_r1_over_single_c64",
            ops("read", "quorum-r1", 64) / ops("read", "single", 64),
            Some(ops("read", "fanout", 64) / ops("read", "single", 64)),
            0.85,
            false,
        ),
        (
            "mixed_ops_r1_over_single_c64",
            ops("mixed", "quorum-r1", 64) / ops("mixed", "single", 64),
            Some(ops("mixed", "fanout", 64) / ops("mixed", "single", 64)),
            0.65,
            false,
        ),
        (
            "write_ops_over_single_c64",
            ops("write", "quorum-r1", 64) / ops("write", "single", 64),
            Some(ops("write", "fanout", 64) / ops("write", "single", 64)),
            0.40,
            false,
        ),
        (
            "write_p50_quorum_over_naive",
            p50("write", "quorum-r1", 1) / p50("write", "naive", 1),
            Some(p50("write", "fanout", 1) / p50("write", "naive", 1)),
            0.6,
            true,
        ),
        (
            "write_p50_n7_over_n3",
            p50("write-fanout", "quorum-n7", 1) / p50("write-fanout", "quorum-n3", 1),
            Some(p50("write-fanout", "fanout-n7", 1) / p50("write-fanout", "fanout-n3", 1)),
            1.3,
            true,
        ),
        (
            "memory_quorum_over_plain_hash",
            quorum_bytes as f64 / single_bytes.max(1) as f64,
            None,
            1.6,
            true,
        ),
    ];
    let met = |value: f64, target: f64, upper: bool| {
        if upper {
            value <= target
        } else {
            value >= target
        }
    };
    println!();
    println!(
        "{:<32} {:>8} {:>8}  met  {:>8}  floor met",
        "ratio", "value", "target", "floor"
    );
    for &(name, value, floor, target, upper) in &ratios {
        let sign = if upper { "<=" } else { ">=" };
        let yes = |met: bool| if met { "yes" } else { "NO" };
        let (floor, floor_met) = match floor {
            Some(floor) => (format!("{floor:.3}"), yes(met(floor, target, upper))),
            None => ("-".to_owned(), "-"),
        };
        println!(
            "{name:<32} {value:>8.3} {sign}{target:>6.2}  {:<3}  {floor:>8}  {floor_met}",
            yes(met(value, target, upper))
        );
    }
    println!("(floor: the same ratio for `fanout`, plain commands to the same replicas, no store)");
    println!("redis bytes per session: plain hash {single_bytes}, quorum-sessions {quorum_bytes}");
    let json = serde_json::json!({
        "cases": cases.iter().map(|c| serde_json::json!({
            "name": c.name, "system": c.system, "concurrency": c.concurrency,
            "ops_per_sec": c.ops_per_sec, "p50_us": c.p50_us, "p99_us": c.p99_us,
            "client_cpu_us_per_op": c.client_cpu_us, "server_cpu_us_per_op": c.server_cpu_us,
        })).collect::<Vec<_>>(),
        "ratios": ratios.iter().map(|&(name, value, floor, target, upper)| {
            (name.to_string(), serde_json::json!({
                "value": value, "target": target, "met": met(value, target, upper),
                "fanout_floor": floor, "fanout_floor_met": floor.map(|f| met(f, target, upper)),
            }))
        }).collect::<serde_json::Map<_, _>>(),
        "redis_bytes_per_session": { "plain_hash": single_bytes, "quorum_sessions": quorum_bytes },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let path = dir.join("replication.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    println!("wrote {}", path.display());
}
