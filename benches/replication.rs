//! `cargo bench --bench replication`: this library against a single Redis,
//! the tutorial's naive fan-out and a floor of plain commands to the same
//! replicas (`fanout`), measured side by side in one run.
//!
//! It starts its own `redis-server` processes on 127.0.0.1 (Docker's port
//! forwarding would blur the figures), interleaves the systems round by round
//! so that machine drift hits all alike, prints a table, and writes the same
//! figures to `target/bench/replication.json`.
//!
//! Systems: `single` (one Redis: HSET + PEXPIREAT pipelined, HGETALL),
//! `naive` (each of 3 Redis in turn for writes, the first for reads),
//! `fanout` (plain commands to N Redis at once, answering after a majority:
//! the floor), `fanout-lua` (`fanout` with each write one `EVALSHA` of the
//! same HSET + PEXPIREAT: the floor of any merge made by a script on each
//! server; its write figures are printed against the same targets), and
//! `quorum` (this library, N=3 W=2 with R=1 and R=2; N=5 and
//! N=7 with a majority W for the fan-out case).
//!
//! Workloads, on sessions of 10 fields of 100 bytes (1 KB):
//! - `create`: a new session, all 10 fields (`quorum`: `Mutation::create`;
//!   the others: HSET of the 10 fields + PEXPIREAT), on a fresh key;
//! - `update`: 2 changed fields of an existing session, what a tower-sessions
//!   save sends after its diff (`quorum`: a `Mutation::update` setting 2
//!   fields; the others: HSET of the 2 fields + PEXPIREAT);
//! - `read`: a whole session (`quorum`: R=1 or R=2; the others: HGETALL);
//! - `mixed`: 80% reads, 20% updates.
//!
//! Then: updates at concurrency 1 with N = 3, 5, 7 (`update-fanout`); reads
//! with one of the 3 replicas slowed (`read-slow1`: a TCP proxy in this
//! process holds every reply chunk of that replica for 20 ms, for `quorum`
//! R=1 with its default hedging and for `fanout`); Redis memory per session.
//! The ratios of `quorum` to `fanout` are printed against their targets and
//! written under `ratios_vs_floor`.
//!
//! `cargo bench --bench replication -- --instructions` is a separate mode:
//! 3 `redis-server`s under `valgrind --tool=callgrind`, a small fixed number
//! of creates, updates and reads per system, and the server instructions
//! (Ir) per operation, summed over the replicas, minus the idle rate of the
//! servers (`callgrind_control --zero` / `--dump` around each phase). It adds
//! `instructions` to the JSON of the last default run.
//!
//! Environment: `QS_BENCH_OPS` scales the operation counts (default 1.0);
//! `QS_BENCH_EXTRA=name=redis://127.0.0.1:8102[,name2=url2]` adds each
//! endpoint as a `single`-style system (HSET + PEXPIREAT, HGETALL) to every
//! workload and table, e.g. Dynomite or another Redis-compatible server (its
//! server CPU is not measured: `-`); every client has `TCP_NODELAY` on, as
//! the library's replica does; `QS_BENCH_PROFILE=update:quorum-r1:64`
//! runs one case for 10 s for a profiler; `QS_BENCH_KEEP_CALLGRIND=1`
//! keeps the servers' callgrind dumps of `--instructions`.

mod common;
use common::{client, RedisServer};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use futures::StreamExt;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation, ReadOrder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIELDS: usize = 10;
const FIELD_BYTES: usize = 100;
/// Fields an update changes.
const CHANGED_FIELDS: usize = 2;
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
/// What the slowed replica adds to each of its replies in `read-slow1`.
const SLOW_DELAY: Duration = Duration::from_millis(20);
/// Sessions created per system to measure Redis memory per session.
const MEMORY_SESSIONS: usize = 2_000;

/// Keys of `create`: fresh ones, above the preloaded sessions.
static NEXT_CREATE: AtomicUsize = AtomicUsize::new(1_000_000);

/// The order in which `systems` systems take their turn in round `round`:
/// each round starts one system further, so that no system always runs
/// first (right after another workload) or right after the same neighbour:
/// at concurrency 1 on a shared VM, position alone can double a p50.
fn turns(round: usize, systems: usize) -> impl Iterator<Item = usize> {
    (0..systems).map(move |i| (round + i) % systems)
}

type Fields = Vec<(String, Vec<u8>)>;

/// A whole session: 10 fields of 100 bytes.
fn session_fields() -> Fields {
    (0..FIELDS)
        .map(|i| (format!("field{i}"), vec![b'a' + i as u8; FIELD_BYTES]))
        .collect()
}

/// The fields update `op` changes: 2 of the 10, new values.
fn changed_fields(op: usize) -> Fields {
    let value = vec![b'A' + (op % 26) as u8; FIELD_BYTES];
    (0..CHANGED_FIELDS)
        .map(|i| {
            let field = (op + i * FIELDS / CHANGED_FIELDS) % FIELDS;
            (format!("field{field}"), value.clone())
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Clone, Copy, PartialEq)]
enum Write {
    Create,
    Update,
}

enum System {
    /// One Redis-protocol endpoint (`single`, and each `QS_BENCH_EXTRA`):
    /// HSET + PEXPIREAT pipelined, HGETALL. `local` is false for an
    /// endpoint whose server CPU this process cannot see.
    Plain {
        client: Client,
        prefix: String,
        local: bool,
    },
    Naive(Vec<Client>),
    /// Not a store: plain commands to N Redis at once (writes go to all and
    /// answer after `acks`, the rest finishing in the background as
    /// `quorum`'s do; reads from the key's replica as `quorum` spreads them),
    /// no versions, no merge, no epochs. The floor any N-way replication on
    /// fred pays on this machine: every ratio is `quorum` over it.
    Fanout {
        clients: Vec<Client>,
        acks: usize,
    },
    /// `fanout-lua`: `Fanout` with each write one `EVALSHA` of
    /// [`SCRIPT_FLOOR`] (the same HSET + PEXPIREAT inside a script) per
    /// replica. Not a store either: the floor of any design that merges
    /// atomically on each server with a Lua script, this library's or
    /// another's, since such a merge must at least make this call.
    ScriptFloor {
        clients: Vec<Client>,
        acks: usize,
        script: Script,
    },
    Quorum(Coordinator),
}

impl System {
    fn key(&self, index: usize) -> String {
        match self {
            System::Plain { prefix, .. } => format!("{prefix}:s:{{{index}}}"),
            System::Naive(_) => format!("naive:s:{{{index}}}"),
            System::Fanout { .. } => format!("fanout:s:{{{index}}}"),
            System::ScriptFloor { .. } => format!("lua:s:{{{index}}}"),
            System::Quorum(_) => format!("s:{{{index}}}"),
        }
    }

    /// Whether the servers' CPU in `Measure` is this system's.
    fn local(&self) -> bool {
        !matches!(self, System::Plain { local: false, .. })
    }

    /// A new session on a fresh key.
    async fn create(&self) {
        let index = NEXT_CREATE.fetch_add(1, Ordering::Relaxed);
        self.write(index, Write::Create, session_fields()).await;
    }

    /// Update `op` of the existing session `index`.
    async fn update(&self, index: usize, op: usize) {
        self.write(index, Write::Update, changed_fields(op)).await;
    }

    async fn write(&self, index: usize, kind: Write, fields: Fields) {
        let key = self.key(index);
        let expiry = now_ms() + 3_600_000;
        match self {
            System::Plain { client, .. } => plain_write(client, &key, fields, expiry).await,
            System::Naive(clients) => {
                for client in clients {
                    plain_write(client, &key, fields.clone(), expiry).await;
                }
            }
            System::Fanout { clients, acks } => {
                let writes = clients.iter().map(|client| {
                    let (client, key, fields) = (client.clone(), key.clone(), fields.clone());
                    Box::pin(async move { plain_write(&client, &key, fields, expiry).await })
                        as Write3
                });
                after_acks(writes.collect(), *acks).await;
            }
            System::ScriptFloor {
                clients,
                acks,
                script,
            } => {
                let writes = clients.iter().map(|client| {
                    let (client, key, fields) = (client.clone(), key.clone(), fields.clone());
                    let sha = script.sha1().to_string();
                    Box::pin(async move { script_write(&client, sha, &key, fields, expiry).await })
                        as Write3
                });
                after_acks(writes.collect(), *acks).await;
            }
            System::Quorum(coordinator) => {
                let cap = expiry + 3_600_000;
                let mut mutation = match kind {
                    Write::Create => Mutation::create(expiry, cap),
                    Write::Update => Mutation::update(expiry, cap),
                };
                for (name, value) in fields {
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
            System::Plain { client, .. } => plain_read(client, &key).await,
            System::Naive(clients) => plain_read(&clients[0], &key).await,
            System::Fanout { clients, .. } | System::ScriptFloor { clients, .. } => {
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

/// One write of a floor system to one replica.
type Write3 = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Waits for `acks` of `writes`, then leaves the rest to finish in the
/// background, as `quorum` does. Every write is polled on each wake-up (a
/// replica count of them): a `FuturesUnordered` would wake its own task and
/// yield each time all it holds are pending, a thread wake-up per write
/// that the floor must not pay (the library's reads stopped paying it, see
/// `src/coordinator/in_flight.rs`).
async fn after_acks(mut writes: Vec<Write3>, acks: usize) {
    let mut acked = 0;
    futures::future::poll_fn(|cx| {
        writes.retain_mut(|write| {
            let pending = write.as_mut().poll(cx).is_pending();
            acked += usize::from(!pending);
            pending
        });
        if acked >= acks {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    if !writes.is_empty() {
        tokio::spawn(futures::future::join_all(writes));
    }
}

async fn plain_write(client: &Client, key: &str, fields: Fields, expiry: u64) {
    let pipeline = client.pipeline();
    let _: () = pipeline.hset(key, fields).await.expect("queue hset");
    let _: () = pipeline
        .pexpire_at(key, expiry as i64, None)
        .await
        .expect("queue pexpireat");
    let _: Vec<Value> = pipeline.all().await.expect("pipeline");
}

/// The least a scripted write does: the fields and the expiry of
/// [`plain_write`], set from inside a script (`ARGV[1]` the expiry, then the
/// field pairs).
const SCRIPT_FLOOR: &str = "redis.call('HSET', KEYS[1], unpack(ARGV, 2)) \
     redis.call('PEXPIREAT', KEYS[1], ARGV[1]) return 1";

async fn script_write(client: &Client, sha: String, key: &str, fields: Fields, expiry: u64) {
    let mut args: Vec<Value> = Vec::with_capacity(1 + 2 * fields.len());
    args.push(Value::from(expiry as i64));
    for (name, value) in fields {
        args.push(Value::from(name));
        args.push(Value::Bytes(value.into()));
    }
    let _: i64 = client
        .evalsha(sha, vec![key.to_owned()], args)
        .await
        .expect("script floor write");
}

/// The [`System::ScriptFloor`] over `clients`, its script loaded on each.
async fn script_floor(clients: &[Client]) -> Arc<System> {
    let script = Script::from_lua(SCRIPT_FLOOR);
    for client in clients {
        script.load(client).await.expect("load the script floor");
    }
    Arc::new(System::ScriptFloor {
        clients: clients.to_vec(),
        acks: clients.len() / 2 + 1,
        script,
    })
}

async fn plain_read(client: &Client, key: &str) {
    let map: BTreeMap<String, Vec<u8>> = client.hgetall(key).await.expect("hgetall");
    assert_eq!(map.len(), FIELDS, "preloaded session missing");
}

/// A coordinator over the Redis servers on `ports`, N = `ports.len()`.
/// `patient`: long deadlines and no hedging, for servers under valgrind
/// (where a first call can take far longer than a hedge delay).
async fn quorum(ports: &[u16], w: usize, r: usize, prefix: &str, patient: bool) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for port in ports {
        let mut config = RedisReplicaConfig::from_url(
            format!("{prefix}{port}"),
            format!("redis://127.0.0.1:{port}"),
        );
        config.key_prefix = format!("{prefix}:");
        if patient {
            config.request_timeout = Duration::from_secs(30);
            config.connect_timeout = Duration::from_secs(30);
        }
        replicas.push(Arc::new(
            RedisReplica::connect(config)
                .await
                .expect("connect replica"),
        ));
    }
    let mut config = ClusterConfig {
        write_quorum: w,
        read_quorum: r,
        read_order: ReadOrder::PerKey,
        ..ClusterConfig::default()
    };
    if patient {
        config.request_timeout = Duration::from_secs(30);
        config.hedge_delay = None;
    }
    Coordinator::connect(config, replicas)
        .await
        .expect("coordinator")
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Create,
    Update,
    Read,
    Mixed,
}

const WORKLOADS: [Workload; 4] = [
    Workload::Create,
    Workload::Update,
    Workload::Read,
    Workload::Mixed,
];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Update => "update",
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
    round: usize,
    measure: &mut Measure,
) {
    let per_worker = ops / concurrency;
    // Each round goes on where the last left off, so that a case covers
    // `rounds × per_worker` sessions per worker, not the same few again.
    let offset = round * per_worker;
    let (client_before, server_before) = cpu_now(servers);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let system = system.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for op in offset..offset + per_worker {
                    let index = (worker * 7919 + op * 104_729) % SESSIONS;
                    let serial = worker * 1_000_003 + op;
                    let t = Instant::now();
                    match workload {
                        Workload::Create => system.create().await,
                        Workload::Update => system.update(index, serial).await,
                        Workload::Read => system.read(index).await,
                        Workload::Mixed if op % 5 == 0 => system.update(index, serial).await,
                        Workload::Mixed => system.read(index).await,
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
    let per_round = (ops / rounds(concurrency)).max(concurrency);
    for round in 0..rounds(concurrency) {
        for i in turns(round, systems.len()) {
            run_round(
                servers,
                systems[i],
                workload,
                concurrency,
                per_round,
                round,
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
    /// CPU per operation, µs: this process (client) and all local servers
    /// (`None` for an endpoint that is not one of them).
    client_cpu_us: f64,
    server_cpu_us: Option<f64>,
}

fn summarize(name: &str, system: &str, local: bool, concurrency: usize, mut m: Measure) -> Case {
    m.latencies_us.sort_unstable();
    Case {
        name: name.to_owned(),
        system: system.to_owned(),
        concurrency,
        ops_per_sec: m.ops as f64 / m.elapsed.as_secs_f64(),
        p50_us: percentile(&m.latencies_us, 0.50),
        p99_us: percentile(&m.latencies_us, 0.99),
        client_cpu_us: m.client_cpu.as_secs_f64() * 1e6 / m.ops as f64,
        server_cpu_us: local.then(|| m.server_cpu.as_secs_f64() * 1e6 / m.ops as f64),
    }
}

/// Writes sessions `0..SESSIONS` (whole, as `create` does) on every key
/// space of `systems` once (`quorum-r1` and `quorum-r2` share theirs).
async fn preload(systems: &[&Arc<System>]) {
    let mut done = BTreeSet::new();
    for system in systems {
        if !done.insert(system.key(0)) {
            continue;
        }
        futures::stream::iter(0..SESSIONS)
            .for_each_concurrent(16, |index| async move {
                system.write(index, Write::Create, session_fields()).await;
            })
            .await;
    }
}

async fn memory_usage(client: &Client, key: &str) -> u64 {
    client
        .memory_usage::<Option<u64>, _>(key, Some(0))
        .await
        .expect("memory usage")
        .unwrap_or(0)
}

async fn used_memory(client: &Client) -> u64 {
    let info: String = client
        .info(Some(fred::types::InfoKind::Memory))
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Redis bytes per session of `system` on the server of `client`: the
/// `INFO memory` `used_memory` delta over [`MEMORY_SESSIONS`] new sessions
/// (keys, values, expiries, the key table's growth: all of it).
async fn bytes_per_session(system: &System, client: &Client) -> f64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = used_memory(client).await;
    futures::stream::iter(0..MEMORY_SESSIONS)
        .for_each_concurrent(16, |_| system.create())
        .await;
    // The writes past the quorum finish in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = used_memory(client).await;
    after.saturating_sub(before) as f64 / MEMORY_SESSIONS as f64
}

/// A TCP proxy to the server on 127.0.0.1:`target` that holds every chunk
/// the server sends back for `delay` before passing it on (a delay line:
/// each chunk leaves `delay` after it arrived, so replies keep their order
/// and pipelined replies are not delayed twice); requests pass at once.
/// Every reply of that server is then `delay` late, whatever the load: a
/// slow replica, deterministic, without pausing the server itself (`CLIENT
/// PAUSE` or `DEBUG SLEEP` would stop every client of it). Returns its port.
async fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy listener");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut client_in, mut client_out) = inbound.into_split();
                let (mut server_in, mut server_out) = outbound.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_in, &mut server_out).await;
                });
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let replies = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                        let due = tokio::time::Instant::now() + delay;
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                while let Some((due, chunk)) = rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    if client_out.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                requests.abort();
                replies.abort();
            });
        }
    });
    port
}

/// `QS_BENCH_EXTRA=name=url[,name2=url2]`: extra `single`-style systems.
async fn extra_systems() -> Vec<(String, Arc<System>)> {
    let Ok(spec) = std::env::var("QS_BENCH_EXTRA") else {
        return Vec::new();
    };
    let mut systems = Vec::new();
    for entry in spec.split(',').filter(|e| !e.trim().is_empty()) {
        let (name, url) = entry
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("QS_BENCH_EXTRA entries are name=url, not {entry:?}"));
        let client = common::client_url(url).await;
        let system = System::Plain {
            client,
            prefix: format!("x-{name}"),
            local: false,
        };
        systems.push((name.to_owned(), Arc::new(system)));
    }
    systems
}

fn instructions_requested() -> bool {
    std::env::args().any(|arg| arg == "--instructions")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if instructions_requested() {
        return instructions().await;
    }
    let scale: f64 = common::env("QS_BENCH_OPS").unwrap_or(1.0);
    let ops_for =
        |concurrency: usize| ((if concurrency == 1 { 1_500.0 } else { 12_800.0 }) * scale) as usize;
    let servers: Vec<RedisServer> = (0..SERVERS).map(|_| RedisServer::start(&[])).collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let mut all_clients = Vec::new();
    for server in &servers {
        all_clients.push(client(server.port).await);
    }
    let clients = all_clients[..3].to_vec();
    let fanout_of = |clients: &[Client]| {
        Arc::new(System::Fanout {
            clients: clients.to_vec(),
            acks: clients.len() / 2 + 1,
        })
    };
    let single = Arc::new(System::Plain {
        client: clients[0].clone(),
        prefix: "single".into(),
        local: true,
    });
    let quorum_r1 = Arc::new(System::Quorum(quorum(&ports[..3], 2, 1, "q3", false).await));
    let mut systems: Vec<(String, Arc<System>)> = vec![
        ("single".into(), single.clone()),
        ("naive".into(), Arc::new(System::Naive(clients.clone()))),
        ("fanout".into(), fanout_of(&all_clients[..3])),
        ("fanout-lua".into(), script_floor(&all_clients[..3]).await),
        ("quorum-r1".into(), quorum_r1.clone()),
        (
            "quorum-r2".into(),
            Arc::new(System::Quorum(quorum(&ports[..3], 2, 2, "q3", false).await)),
        ),
    ];
    systems.extend(extra_systems().await);
    let wide: Vec<(String, Arc<System>)> = vec![
        ("fanout-n5".into(), fanout_of(&all_clients[..5])),
        ("fanout-n7".into(), fanout_of(&all_clients[..7])),
        (
            "quorum-n5".into(),
            Arc::new(System::Quorum(quorum(&ports[..5], 3, 1, "q5", false).await)),
        ),
        (
            "quorum-n7".into(),
            Arc::new(System::Quorum(quorum(&ports[..7], 4, 1, "q7", false).await)),
        ),
    ];
    let every: Vec<&Arc<System>> = systems.iter().chain(&wide).map(|(_, s)| s).collect();
    preload(&every).await;
    if let Ok(spec) = std::env::var("QS_BENCH_PROFILE") {
        return profile(&spec, &servers, &systems).await;
    }
    let started = Instant::now();
    let mut cases = Vec::new();
    for concurrency in [1, 64] {
        for workload in WORKLOADS {
            let list: Vec<&Arc<System>> = systems.iter().map(|(_, system)| system).collect();
            let measures =
                interleaved(&servers, &list, workload, concurrency, ops_for(concurrency)).await;
            for ((name, system), measure) in systems.iter().zip(measures) {
                cases.push(summarize(
                    workload.name(),
                    name,
                    system.local(),
                    concurrency,
                    measure,
                ));
            }
        }
    }
    // Fan-out: N = 3, 5, 7 updates at concurrency 1, interleaved.
    let narrow: Vec<(String, Arc<System>)> = systems
        .iter()
        .filter_map(|(name, system)| match name.as_str() {
            "fanout" => Some(("fanout-n3".to_owned(), system.clone())),
            "quorum-r1" => Some(("quorum-n3".to_owned(), system.clone())),
            _ => None,
        })
        .collect();
    let fan: Vec<&(String, Arc<System>)> = narrow.iter().chain(&wide).collect();
    let list: Vec<&Arc<System>> = fan.iter().map(|(_, system)| system).collect();
    let measures = interleaved(&servers, &list, Workload::Update, 1, ops_for(1)).await;
    for ((name, _), measure) in fan.iter().zip(measures) {
        cases.push(summarize("update-fanout", name, true, 1, measure));
    }
    cases.extend(slow_replica(&servers, &all_clients[..3], scale).await);
    // Memory: new sessions through `single` (a plain hash) and `quorum`,
    // measured on server 0 (a replica of both).
    let plain_bytes = bytes_per_session(&single, &clients[0]).await;
    let quorum_bytes = bytes_per_session(&quorum_r1, &clients[0]).await;
    let plain_usage = memory_usage(&clients[0], "single:s:{0}").await;
    let quorum_usage = memory_usage(&clients[0], "q3:s:{0}").await;
    report(
        &cases,
        (plain_bytes, quorum_bytes),
        (plain_usage, quorum_usage),
    );
    print_commandstats(&clients[0]).await;
    println!("measured in {:.0} s", started.elapsed().as_secs_f64());
}

/// `read-slow1`: R=1 reads at concurrency 1 to 8 with one of the 3
/// replicas behind [`slow_proxy`], for `quorum` (default configuration: it
/// hedges) and `fanout` (no hedging: a read of a key whose replica is the
/// slow one waits for it).
async fn slow_replica(servers: &[RedisServer], clients: &[Client], scale: f64) -> Vec<Case> {
    let slow_port = slow_proxy(servers[0].port, SLOW_DELAY).await;
    let ports = [slow_port, servers[1].port, servers[2].port];
    let mut fanout_clients = vec![client(slow_port).await];
    fanout_clients.extend_from_slice(&clients[1..3]);
    let systems: Vec<(&str, Arc<System>)> = vec![
        (
            "fanout",
            Arc::new(System::Fanout {
                clients: fanout_clients,
                acks: 2,
            }),
        ),
        (
            "quorum-r1",
            Arc::new(System::Quorum(quorum(&ports, 2, 1, "q3", false).await)),
        ),
    ];
    let list: Vec<&Arc<System>> = systems.iter().map(|(_, s)| s).collect();
    let ops = ((400.0 * scale) as usize).max(40);
    // A coordinator that has served reads: a fresh one knows no latencies
    // and hedges after the cap (`hedge_delay`, 50 ms) until one replica
    // has answered 32 reads.
    for system in &list {
        run_round(
            &[],
            system,
            Workload::Read,
            1,
            200,
            0,
            &mut Measure::default(),
        )
        .await;
    }
    let mut cases = Vec::new();
    for concurrency in [1, 2, 4, 8] {
        let measures = interleaved(servers, &list, Workload::Read, concurrency, ops).await;
        for ((name, _), measure) in systems.iter().zip(measures) {
            cases.push(summarize("read-slow1", name, true, concurrency, measure));
        }
    }
    cases
}

/// Server-side cost per command on the first server (it serves `single`,
/// the first `naive` replica and a replica of every quorum system).
async fn print_commandstats(client: &Client) {
    let stats: String = client
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
/// `update:quorum-r1:64`): runs that one case for about 10 s, for a profiler
/// attached to this process (`perf record -g -p <pid>`), and prints its line.
async fn profile(spec: &str, servers: &[RedisServer], systems: &[(String, Arc<System>)]) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [workload, name, concurrency] = parts.as_slice() else {
        panic!("QS_BENCH_PROFILE is <workload>:<system>:<concurrency>, not {spec:?}");
    };
    let workload = WORKLOADS
        .into_iter()
        .find(|w| w.name() == *workload)
        .unwrap_or_else(|| panic!("workload is create, update, read or mixed, not {workload:?}"));
    let concurrency: usize = concurrency.parse().expect("concurrency is a number");
    let (_, system) = systems
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no system {name:?}"));
    println!("profiling pid {}", std::process::id());
    let mut measure = Measure::default();
    let mut round = 0;
    while measure.elapsed < Duration::from_secs(10) {
        let ops = concurrency * 100;
        run_round(
            servers,
            system,
            workload,
            concurrency,
            ops,
            round,
            &mut measure,
        )
        .await;
        round += 1;
    }
    let case = summarize(workload.name(), name, system.local(), concurrency, measure);
    report_cases(std::slice::from_ref(&case));
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
        let server = c
            .server_cpu_us
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<14} {:<10} {:>5} {:>12.0} {:>9} {:>9} {:>10.1} {:>10}",
            c.name,
            c.system,
            c.concurrency,
            c.ops_per_sec,
            c.p50_us,
            c.p99_us,
            c.client_cpu_us,
            server
        );
    }
}

/// One figure of `quorum` against its floor (`fanout`, or a plain hash for
/// memory): `value` = `quorum` ÷ `floor`, `None` when not measured.
struct Ratio {
    figure: &'static str,
    quorum: Option<f64>,
    floor: Option<f64>,
    target: f64,
    /// The target is an upper bound (`<=`), else a lower bound.
    upper: bool,
}

impl Ratio {
    fn value(&self) -> Option<f64> {
        Some(self.quorum? / self.floor?)
    }

    fn met(&self) -> Option<bool> {
        let value = self.value()?;
        Some(if self.upper {
            value <= self.target
        } else {
            value >= self.target
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "figure": self.figure, "value": self.value(), "target": self.target,
            "bound": if self.upper { "<=" } else { ">=" }, "met": self.met(),
            "quorum": self.quorum, "floor": self.floor,
        })
    }
}

/// The instruction figure's name, shared by both modes.
const INSTRUCTIONS_FIGURE: &str = "server instructions per update (callgrind)";

fn instructions_ratio(quorum: Option<f64>, fanout: Option<f64>) -> Ratio {
    Ratio {
        figure: INSTRUCTIONS_FIGURE,
        quorum,
        floor: fanout,
        target: 2.5,
        upper: true,
    }
}

fn print_ratios(ratios: &[Ratio]) {
    print_ratios_of("quorum", ratios);
}

/// The ratio table of `system` (the numerator's name) over `fanout`.
fn print_ratios_of(system: &str, ratios: &[Ratio]) {
    println!();
    println!(
        "{:<46} {:>10} {:>10} {:>8} {:>9}  met",
        format!("{system} / fanout (same run)"),
        system,
        "fanout",
        "value",
        "target"
    );
    for r in ratios {
        let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let sign = if r.upper { "<=" } else { ">=" };
        let met = match r.met() {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        };
        let value = r
            .value()
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        println!(
            "{:<46} {:>10} {:>10} {value:>8} {sign}{:>7.2}  {met}",
            r.figure,
            num(r.quorum),
            num(r.floor),
            r.target
        );
    }
}

fn json_path() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir.join("replication.json")
}

/// A figure of one case: ops/s, p50 or server CPU.
type Metric = fn(&Case) -> Option<f64>;
/// A ratio's figure, metric, case name, concurrency, target and whether the
/// target is an upper bound.
type Figure = (&'static str, Metric, &'static str, usize, f64, bool);

fn report(cases: &[Case], bytes: (f64, f64), usage: (u64, u64)) {
    report_cases(cases);
    let p50: Metric = |c| Some(f64::from(c.p50_us));
    let ops: Metric = |c| Some(c.ops_per_sec);
    let cpu: Metric = |c| c.server_cpu_us;
    let ratio = |figure, quorum, floor, target, upper| Ratio {
        figure,
        quorum,
        floor,
        target,
        upper,
    };
    // One figure of `system` against `fanout` in the same case.
    let versus = |system: &str, (figure, metric, name, conc, target, upper): Figure| {
        ratio(
            figure,
            metric(find(cases, name, system, conc)),
            metric(find(cases, name, "fanout", conc)),
            target,
            upper,
        )
    };
    let widening = |system: &str| {
        let p50 = |n: &str| p50(find(cases, "update-fanout", &format!("{system}-{n}"), 1));
        Some(p50("n7")? / p50("n3")?)
    };
    // The write figures, of `system` over `fanout`.
    let write_figures: [Figure; 6] = [
        ("update writes/s, c=64", ops, "update", 64, 0.75, false),
        ("create writes/s, c=64", ops, "create", 64, 0.6, false),
        (
            "server CPU µs per update, c=64 (schedstat)",
            cpu,
            "update",
            64,
            2.0,
            true,
        ),
        ("update p50 µs, c=1", p50, "update", 1, 1.15, true),
        ("create p50 µs, c=1", p50, "create", 1, 1.15, true),
        ("mixed 80/20 ops/s, c=64", ops, "mixed", 64, 0.8, false),
    ];
    let writes = |system: &str| write_figures.map(|figure| versus(system, figure));
    let mut ratios = Vec::from(writes("quorum-r1"));
    ratios.push(ratio(
        "update p50 c=1, N=7 ÷ N=3",
        widening("quorum"),
        widening("fanout"),
        1.1,
        true,
    ));
    ratios.push(versus(
        "quorum-r1",
        ("R=1 reads/s, c=64", ops, "read", 64, 0.9, false),
    ));
    ratios.push(versus(
        "quorum-r1",
        ("R=1 read p50 µs, c=1", p50, "read", 1, 1.05, true),
    ));
    ratios.push(ratio(
        "Redis bytes/session (used_memory) vs hash",
        Some(bytes.1),
        Some(bytes.0),
        1.3,
        true,
    ));
    ratios.push(instructions_ratio(None, None));
    // The same write targets for the script floor: a target it misses is
    // out of reach of any design that merges with a script on each server.
    let script_floor = writes("fanout-lua");
    print_ratios(&ratios);
    println!(
        "(floor: `fanout`, plain commands to the same replicas, no store; for memory a plain hash)"
    );
    print_ratios_of("fanout-lua", &script_floor);
    println!(
        "(`fanout-lua`: `fanout` with each write one EVALSHA of HSET + PEXPIREAT, the least a \
         scripted merge costs; a target it misses is out of reach of any scripted merge)"
    );
    println!(
        "redis bytes per session, INFO used_memory delta over {MEMORY_SESSIONS} new sessions: \
         plain hash {:.0}, quorum-sessions {:.0} (MEMORY USAGE of one: {}, {})",
        bytes.0, bytes.1, usage.0, usage.1
    );
    println!("instructions: not measured in this mode (cargo bench --bench replication -- --instructions)");
    let mut slow = String::new();
    for conc in [1, 2, 4, 8] {
        let q = find(cases, "read-slow1", "quorum-r1", conc);
        let f = find(cases, "read-slow1", "fanout", conc);
        slow += &format!(" c={conc} {}/{}", q.p99_us, f.p99_us);
    }
    println!(
        "one replica {} ms slow, read p99 µs quorum-r1/fanout:{slow}",
        SLOW_DELAY.as_millis()
    );
    let json = serde_json::json!({
        "cases": cases.iter().map(|c| serde_json::json!({
            "name": c.name, "system": c.system, "concurrency": c.concurrency,
            "ops_per_sec": c.ops_per_sec, "p50_us": c.p50_us, "p99_us": c.p99_us,
            "client_cpu_us_per_op": c.client_cpu_us, "server_cpu_us_per_op": c.server_cpu_us,
        })).collect::<Vec<_>>(),
        "ratios_vs_floor": ratios.iter().map(Ratio::json).collect::<Vec<_>>(),
        "script_floor_vs_floor": script_floor.iter().map(Ratio::json).collect::<Vec<_>>(),
        "redis_bytes_per_session": {
            "method": format!("INFO memory used_memory delta over {MEMORY_SESSIONS} new sessions, server 0"),
            "plain_hash": bytes.0, "quorum_sessions": bytes.1,
            "memory_usage_one_key": { "plain_hash": usage.0, "quorum_sessions": usage.1 },
        },
        "slow_replica_delay_ms": SLOW_DELAY.as_millis() as u64,
    });
    let path = json_path();
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    println!("wrote {}", path.display());
}

/// The phases of the instruction-count mode, in order (updates and reads
/// are of the preloaded sessions).
const INSTRUCTION_PHASES: [Workload; 3] = [Workload::Create, Workload::Update, Workload::Read];
/// Concurrency of the instruction-count mode: low, so that the servers
/// (under valgrind, about 50 times slower) keep up.
const INSTRUCTION_CONCURRENCY: usize = 4;

/// Runs `callgrind_control <flag> <pid>`.
fn callgrind_control(flag: &str, pid: u32) {
    let out = std::process::Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .expect("callgrind_control (valgrind) must be installed");
    assert!(
        out.status.success(),
        "callgrind_control {flag} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The instructions (Ir) of callgrind dump `number` of server `pid`.
fn read_dump(dir: &std::path::Path, pid: u32, number: usize) -> u64 {
    let path = dir.join(format!("cg.{pid}.out.{number}"));
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            // `totals:` is the last line written: the dump is complete.
            if text.lines().any(|l| l.starts_with("totals:")) {
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix("summary:"))
                    .or_else(|| text.lines().find_map(|l| l.strip_prefix("totals:")))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .expect("Ir in callgrind dump");
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no callgrind dump {}", path.display());
}

/// The callgrind servers and their dumps so far.
struct Callgrind {
    dir: std::path::PathBuf,
    servers: Vec<RedisServer>,
    dumps: usize,
    zeroed: Vec<Instant>,
}

impl Callgrind {
    fn zero(&mut self) {
        for (i, server) in self.servers.iter().enumerate() {
            callgrind_control("--zero", server.pid());
            self.zeroed[i] = Instant::now();
        }
    }

    /// Ir of each server since its last zero, and how long that was.
    fn dump(&mut self) -> Vec<(u64, Duration)> {
        self.dumps += 1;
        self.servers
            .iter()
            .enumerate()
            .map(|(i, server)| {
                callgrind_control("--dump", server.pid());
                let span = self.zeroed[i].elapsed();
                (read_dump(&self.dir, server.pid(), self.dumps), span)
            })
            .collect()
    }
}

/// `-- --instructions`: server instructions per operation per system.
async fn instructions() {
    let scale: f64 = common::env("QS_BENCH_OPS").unwrap_or(1.0);
    let ops = ((2_000.0 * scale) as usize).max(100);
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("qs-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("callgrind directory");
    println!("starting 3 redis-server under callgrind (valgrind --tool=callgrind)...");
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_callgrind(&dir)).collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let mut clients = Vec::new();
    for server in &servers {
        clients.push(client(server.port).await);
    }
    // `quorum-r2` only reads: its writes are `quorum-r1`'s.
    let systems: Vec<(&str, Arc<System>, &[Workload])> = vec![
        (
            "single",
            Arc::new(System::Plain {
                client: clients[0].clone(),
                prefix: "single".into(),
                local: true,
            }),
            &INSTRUCTION_PHASES,
        ),
        (
            "naive",
            Arc::new(System::Naive(clients.clone())),
            &INSTRUCTION_PHASES,
        ),
        (
            "fanout",
            Arc::new(System::Fanout {
                clients: clients.clone(),
                acks: 2,
            }),
            &INSTRUCTION_PHASES,
        ),
        (
            "fanout-lua",
            script_floor(&clients).await,
            &[Workload::Create, Workload::Update],
        ),
        (
            "quorum-r1",
            Arc::new(System::Quorum(quorum(&ports, 2, 1, "q3", true).await)),
            &INSTRUCTION_PHASES,
        ),
        (
            "quorum-r2",
            Arc::new(System::Quorum(quorum(&ports, 2, 2, "q3", true).await)),
            &[Workload::Read],
        ),
    ];
    let list: Vec<&Arc<System>> = systems.iter().map(|(_, s, _)| s).collect();
    preload(&list).await;
    // Warm up every path (scripts loaded, code translated by valgrind).
    for (_, system, phases) in &systems {
        for &phase in *phases {
            run_round(&[], system, phase, 1, 20, 0, &mut Measure::default()).await;
        }
    }
    let mut callgrind = Callgrind {
        dir: dir.clone(),
        servers,
        dumps: 0,
        zeroed: vec![Instant::now(); 3],
    };
    // The idle rate: the servers' timers and the coordinators' probes.
    callgrind.zero();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = callgrind
        .dump()
        .iter()
        .map(|&(ir, span)| ir as f64 / span.as_secs_f64())
        .collect();
    let settle = Duration::from_millis(300);
    let mut rows: Vec<(&str, BTreeMap<&str, f64>)> = Vec::new();
    for (name, system, phases) in &systems {
        let mut row = BTreeMap::new();
        for &phase in *phases {
            callgrind.zero();
            let mut measure = Measure::default();
            run_round(
                &[],
                system,
                phase,
                INSTRUCTION_CONCURRENCY,
                ops,
                0,
                &mut measure,
            )
            .await;
            // Writes past the quorum finish in the background.
            tokio::time::sleep(settle).await;
            let busy: f64 = callgrind
                .dump()
                .iter()
                .zip(&idle)
                .map(|(&(ir, span), rate)| (ir as f64 - rate * span.as_secs_f64()).max(0.0))
                .sum();
            row.insert(phase.name(), busy / measure.ops as f64);
        }
        rows.push((*name, row));
    }
    drop(callgrind);
    if std::env::var_os("QS_BENCH_KEEP_CALLGRIND").is_some() {
        // One dump per server per phase, in the order of the table: for
        // `callgrind_annotate`.
        println!("callgrind dumps kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "\nserver instructions (Ir) per operation, summed over the 3 servers, \
         {ops} ops per phase at concurrency {INSTRUCTION_CONCURRENCY}, idle {:.0} Ir/s subtracted",
        idle.iter().sum::<f64>()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12}",
        "system", "create", "update", "read"
    );
    for (name, row) in &rows {
        let cell = |phase: &str| {
            row.get(phase)
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
        };
        println!(
            "{name:<10} {:>12} {:>12} {:>12}",
            cell("create"),
            cell("update"),
            cell("read")
        );
    }
    let per = |system: &str, phase: &str| {
        rows.iter()
            .find(|(name, _)| *name == system)
            .and_then(|(_, row)| row.get(phase).copied())
    };
    let ratio = instructions_ratio(per("quorum-r1", "update"), per("fanout", "update"));
    print_ratios(std::slice::from_ref(&ratio));
    let floor_ratio = instructions_ratio(per("fanout-lua", "update"), per("fanout", "update"));
    print_ratios_of("fanout-lua", std::slice::from_ref(&floor_ratio));
    // Into the JSON of the last default run (or a new one).
    let path = json_path();
    let mut json: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    json["instructions"] = serde_json::json!({
        "method": "callgrind Ir of the 3 redis-servers, zeroed and dumped around each phase, \
                   minus their idle rate",
        "ops_per_phase": ops, "concurrency": INSTRUCTION_CONCURRENCY,
        "idle_ir_per_sec": idle.iter().sum::<f64>(),
        "per_op": rows.iter().map(|(name, row)| (name.to_string(), serde_json::json!(row)))
            .collect::<serde_json::Map<_, _>>(),
    });
    for (table, entry) in [
        ("ratios_vs_floor", ratio.json()),
        ("script_floor_vs_floor", floor_ratio.json()),
    ] {
        match json[table].as_array_mut() {
            Some(list) => match list.iter_mut().find(|r| r["figure"] == INSTRUCTIONS_FIGURE) {
                Some(old) => *old = entry,
                None => list.push(entry),
            },
            None => json[table] = serde_json::json!([entry]),
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    println!(
        "wrote {} (instructions) after {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
