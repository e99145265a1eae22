//! `cargo bench --bench hotpath`: one operation at a time through one layer,
//! for profiling (callgrind) and for latencies without the noise of the
//! full comparison (`benches/replication.rs`).
//!
//! ```text
//! QS_HOT_OPS=2000 valgrind --tool=callgrind target/release/deps/hotpath-<hash> write
//! QS_HOT_OPS=4000 valgrind --tool=callgrind target/release/deps/hotpath-<hash> write
//! ```
//!
//! Instructions per operation = (Ir of the second run − Ir of the first) /
//! 2000: the set-up (runtime, replicas, preload) cancels out.
//!
//! Modes on in-memory replicas (N=3, W=2; current-thread runtime, so that
//! callgrind counts the same instructions every run): `write` (a 10-field
//! update of about 1 KB), `read` (R=1), `read2` (R=2).
//!
//! Modes on local `redis-server` processes (started here): `redis-write`,
//! `redis-read`, `redis-read2` (the coordinator), `replica-merge`,
//! `replica-read` (one `RedisReplica`), `plain-write`, `plain-read` (fred
//! `HSET` + `PEXPIREAT` pipelined, `HGETALL`: the `single` system of the
//! replication bench), `plain-read3`, `plain-read3p` and `plain-read-lua`
//! (ways of reading a hash with the epoch: three commands queued together
//! or in a fred pipeline, or one script). Each
//! prints the throughput and the median and p99 latency; `QS_HOT_CONC=64`
//! keeps 64 operations in flight (one task).

mod common;
use common::{client, RedisServer};

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::{MergeMode, Replica};
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};

const SESSIONS: usize = 100;
const FIELDS: usize = 10;
const FIELD_BYTES: usize = 100;

fn fields() -> Vec<(String, Vec<u8>)> {
    (0..FIELDS)
        .map(|i| (format!("field{i}"), vec![b'a' + i as u8; FIELD_BYTES]))
        .collect()
}

fn write_mutation(now: u64, fields: &[(String, Vec<u8>)]) -> Mutation {
    let mut mutation = Mutation::update(now + 3_600_000, now + 7_200_000);
    for (name, value) in fields {
        mutation = mutation.set(name.clone(), value.clone());
    }
    mutation
}

fn keys() -> Vec<String> {
    (0..SESSIONS).map(|i| format!("s:{{{i}}}")).collect()
}

async fn coordinator(replicas: Vec<Arc<dyn Replica>>, read_quorum: usize) -> Coordinator {
    let config = ClusterConfig {
        read_quorum,
        write_quorum: replicas.len().min(2),
        ..ClusterConfig::default()
    };
    let coordinator = Coordinator::connect(config, replicas)
        .await
        .expect("coordinator");
    let fields = fields();
    for key in keys() {
        let now = coordinator.now_ms();
        let mutation = Mutation::create(now + 3_600_000, now + 7_200_000).set("created", "1");
        coordinator.write(&key, mutation).await.expect("create");
        coordinator
            .write(&key, write_mutation(now, &fields))
            .await
            .expect("write");
    }
    coordinator
}

async fn redis_replicas(servers: &[RedisServer]) -> Vec<Arc<dyn Replica>> {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for server in servers {
        client(server.port).await; // waits until it answers
        let config = RedisReplicaConfig::from_url(
            format!("r{}", server.port),
            format!("redis://127.0.0.1:{}", server.port),
        );
        replicas.push(Arc::new(
            RedisReplica::connect(config).await.expect("replica"),
        ));
    }
    replicas
}

/// Runs `ops` operations one after the other; returns their latencies.
async fn run<F, Fut>(ops: usize, mut op: F) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let concurrency: usize = common::env("QS_HOT_CONC").unwrap_or(1);
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..ops)
        .map(|index| {
            let request = op(index);
            async move {
                let started = Instant::now();
                request.await;
                started.elapsed()
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    println!(
        "{ops} ops at concurrency {concurrency}: {:.0} ops/s",
        ops as f64 / elapsed.as_secs_f64()
    );
    latencies
}

async fn run_mode(mode: &str, ops: usize) -> Vec<Duration> {
    let keys = keys();
    let fields = fields();
    let key = |index: usize| keys[index % SESSIONS].clone();
    match mode {
        "write" | "read" | "read2" => {
            let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
                .into_iter()
                .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
                .collect();
            let c = coordinator(replicas, if mode == "read2" { 2 } else { 1 }).await;
            coordinator_ops(&c, mode, ops, &keys, &fields).await
        }
        "redis-write" | "redis-read" | "redis-read2" => {
            let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(&[])).collect();
            let replicas = redis_replicas(&servers).await;
            let c = coordinator(replicas, if mode == "redis-read2" { 2 } else { 1 }).await;
            let mode = mode.trim_start_matches("redis-");
            coordinator_ops(&c, mode, ops, &keys, &fields).await
        }
        "replica-merge" | "replica-read" => {
            let servers = vec![RedisServer::start(&[])];
            let replicas = redis_replicas(&servers).await;
            let c = coordinator(replicas.clone(), 1).await;
            let replica = replicas[0].clone();
            if mode == "replica-read" {
                return run(ops, |i| {
                    let (replica, key) = (replica.clone(), key(i));
                    async move {
                        let reply = replica.read(&key).await.expect("read");
                        assert!(reply.record.is_some());
                    }
                })
                .await;
            }
            run(ops, |i| {
                let (replica, key, c) = (replica.clone(), key(i), c.clone());
                let fields = &fields;
                async move {
                    let now = c.now_ms();
                    let stamp = quorum_sessions::Stamp::new(now, i as u32, 1);
                    let delta = write_mutation(now, fields).into_delta(stamp);
                    replica
                        .merge(&key, &delta, MergeMode::Upsert, now)
                        .await
                        .expect("merge");
                }
            })
            .await
        }
        "plain-write" | "plain-read" | "plain-read3" | "plain-read3p" | "plain-read-lua" => {
            let server = RedisServer::start(&[]);
            let client = client(server.port).await;
            for k in &keys {
                plain_write(&client, k, &fields).await;
            }
            let latencies = run(ops, |i| {
                let (client, key) = (client.clone(), key(i));
                let fields = &fields;
                let mode = mode.to_owned();
                async move {
                    if mode == "plain-write" {
                        plain_write(&client, &key, fields).await;
                    } else if mode == "plain-read3" {
                        let ids = || vec!["qs:epoch", "qs:epoch:run"];
                        let (a, b, c) = tokio::join!(
                            client.mget::<Value, _>(ids()),
                            client.hgetall::<Value, _>(&key),
                            client.mget::<Value, _>(ids()),
                        );
                        assert!(a.is_ok() && b.is_ok() && c.is_ok());
                    } else if mode == "plain-read3p" {
                        let ids = || vec!["qs:epoch", "qs:epoch:run"];
                        let pipeline = client.pipeline();
                        let _: () = pipeline.mget(ids()).await.unwrap();
                        let _: () = pipeline.hgetall(&key).await.unwrap();
                        let _: () = pipeline.mget(ids()).await.unwrap();
                        let all: Vec<Value> = pipeline.all().await.unwrap();
                        assert_eq!(all.len(), 3);
                    } else if mode == "plain-read-lua" {
                        let script = fred::types::scripts::Script::from_lua(
                            "return { redis.call('MGET', KEYS[2], KEYS[3]), redis.call('HGETALL', KEYS[1]) }",
                        );
                        let v: Value = script
                            .evalsha_with_reload(&client, vec![key.as_str(), "qs:epoch", "qs:epoch:run"], Vec::<String>::new())
                            .await
                            .unwrap();
                        drop(v);
                    } else {
                        let map: std::collections::BTreeMap<String, Vec<u8>> =
                            client.hgetall(&key).await.expect("hgetall");
                        assert_eq!(map.len(), FIELDS);
                    }
                }
            })
            .await;
            drop(server);
            latencies
        }
        other => panic!("unknown mode {other:?}"),
    }
}

async fn plain_write(client: &Client, key: &str, fields: &[(String, Vec<u8>)]) {
    let pipeline = client.pipeline();
    let _: () = pipeline.hset(key, fields.to_vec()).await.expect("hset");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let expiry = i64::try_from(now).expect("ms") + 3_600_000;
    let _: () = pipeline
        .pexpire_at(key, expiry, None)
        .await
        .expect("pexpireat");
    let _: Vec<Value> = pipeline.all().await.expect("pipeline");
}

async fn coordinator_ops(
    c: &Coordinator,
    mode: &str,
    ops: usize,
    keys: &[String],
    fields: &[(String, Vec<u8>)],
) -> Vec<Duration> {
    run(ops, |i| {
        let key = &keys[i % SESSIONS];
        async move {
            match mode {
                "write" => {
                    let now = c.now_ms();
                    c.write(key, write_mutation(now, fields))
                        .await
                        .expect("write");
                }
                _ => {
                    let record = c.read(key).await.expect("read");
                    assert!(record.is_some());
                }
            }
        }
    })
    .await
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "write".into());
    let ops: usize = common::env("QS_HOT_OPS").unwrap_or(20_000);
    let runtime = if mode.contains('-') {
        // Redis modes: like the replication bench (fred's tasks on the pool).
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    let mut latencies = runtime.block_on(run_mode(&mode, ops));
    latencies.sort_unstable();
    let at = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    if !latencies.is_empty() {
        println!(
            "{mode}: {ops} ops, p50 {:.1} µs, p99 {:.1} µs",
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6
        );
    }
}
