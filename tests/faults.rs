//! Real faults on real Redis containers, under a concurrent workload.
//!
//! Each scenario starts 3 Redis containers (testcontainers), runs several
//! coordinators as separate app servers — each with its own `RedisReplica`
//! connections — doing thousands of writes and reads while a fault happens,
//! records what every client saw, and checks the history:
//!
//! - lost writes: each (session, field) is written by one task with rising
//!   values; after the faults heal, a quorum read must show at least the last
//!   acknowledged value;
//! - stale reads: a read that began after a write was acknowledged must show
//!   that write (or a later one) — R + W > N makes this a guarantee;
//! - resurrections: a session whose delete was acknowledged never reads back.
//!
//! Scenarios (a)–(g) of the Redis-replicas issue. Each appends its row to
//! `target/fault-table.md`, the table quoted in BENCHMARKS.md. Scenarios run one
//! at a time (a file-wide lock) so their latency figures are not mixed.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::Health;
use quorum_sessions::{ClusterConfig, Coordinator, Error, Mutation, ReadOrder};
use support::RedisNodes;
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SESSIONS: usize = 40;
const COORDINATORS: usize = 3;
const TASKS_PER_COORDINATOR: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

fn config(order: ReadOrder) -> ClusterConfig {
    let mut config = ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        request_timeout: REQUEST_TIMEOUT,
        hedge_delay: Some(Duration::from_millis(50)),
        read_order: order,
        ..ClusterConfig::default()
    };
    config.health.probe_interval_max = Duration::from_millis(500);
    config
}

/// A coordinator with its own connections (a separate app server).
async fn app_server(nodes: &RedisNodes, order: &[usize], config: ClusterConfig) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for &index in order {
        let replica: RedisReplica = nodes.node(index).replica().await;
        replicas.push(Arc::new(replica));
    }
    Coordinator::connect(config, replicas)
        .await
        .expect("coordinator")
}

fn key(session: usize) -> String {
    format!("s:{{fault-{session}}}")
}

fn expiry(c: &Coordinator) -> (u64, u64) {
    let now = c.now_ms();
    (now + 600_000, now + 3_600_000)
}

/// A read: the session, when it began, the fields it returned (None: absent).
type ReadSeen = (usize, Instant, Option<BTreeMap<String, u64>>);

#[derive(Default)]
struct History {
    /// (session, field) → acknowledged (value, acked_at).
    acked: BTreeMap<(usize, String), Vec<(u64, Instant)>>,
    /// Reads: (session, started_at, fields seen).
    reads: Vec<ReadSeen>,
    latencies_us: Vec<u64>,
    errors: Vec<(Instant, String)>,
    operations: usize,
}

struct Workload {
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn fields_of(record: &quorum_sessions::Record) -> BTreeMap<String, u64> {
    record
        .values()
        .filter_map(|(name, value)| {
            Some((
                name.to_owned(),
                std::str::from_utf8(value).ok()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Starts the workload: every task owns one field (`c{coordinator}t{task}`)
/// of every session and writes it with rising values, reading a session
/// between writes.
fn start_workload(servers: &[Coordinator]) -> Workload {
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (server_index, server) in servers.iter().enumerate() {
        for task in 0..TASKS_PER_COORDINATOR {
            let (server, history, stop) = (server.clone(), history.clone(), stop.clone());
            let field = format!("c{server_index}t{task}");
            tasks.push(tokio::spawn(async move {
                let mut value = 0u64;
                let mut step = task;
                while !stop.load(Ordering::Relaxed) {
                    step += 1;
                    value += 1;
                    let session = (step * 7 + server_index) % SESSIONS;
                    let (exp, cap) = expiry(&server);
                    let started = Instant::now();
                    let mutation = Mutation::update(exp, cap).set(field.clone(), value.to_string());
                    let result = server.write(&key(session), mutation).await;
                    record_write(
                        &history,
                        session,
                        &field,
                        value,
                        started,
                        result.map(|_| ()),
                    );
                    let session = (step * 13 + task) % SESSIONS;
                    let started = Instant::now();
                    let result = server.read(&key(session)).await;
                    record_read(&history, session, started, result);
                }
            }));
        }
    }
    Workload {
        history,
        stop,
        tasks,
    }
}

fn record_write(
    history: &Mutex<History>,
    session: usize,
    field: &str,
    value: u64,
    started: Instant,
    result: Result<(), Error>,
) {
    let mut history = history.lock().unwrap();
    history.operations += 1;
    history
        .latencies_us
        .push(started.elapsed().as_micros() as u64);
    match result {
        Ok(()) => history
            .acked
            .entry((session, field.to_owned()))
            .or_default()
            .push((value, Instant::now())),
        Err(error) => history.errors.push((started, format!("write: {error}"))),
    }
}

fn record_read(
    history: &Mutex<History>,
    session: usize,
    started: Instant,
    result: Result<Option<quorum_sessions::Record>, Error>,
) {
    let mut history = history.lock().unwrap();
    history.operations += 1;
    history
        .latencies_us
        .push(started.elapsed().as_micros() as u64);
    match result {
        Ok(record) => history
            .reads
            .push((session, started, record.as_ref().map(fields_of))),
        Err(error) => history.errors.push((started, format!("read: {error}"))),
    }
}

impl Workload {
    async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("workload task");
        }
        Arc::try_unwrap(self.history)
            .ok()
            .expect("tasks ended")
            .into_inner()
            .unwrap()
    }
}

/// Creates every session before the workload starts.
async fn create_sessions(server: &Coordinator) {
    for session in 0..SESSIONS {
        let (exp, cap) = expiry(server);
        server
            .write(&key(session), Mutation::create(exp, cap).set("user", "0"))
            .await
            .expect("create session");
    }
}

struct Verdict {
    lost: usize,
    stale: usize,
    missing: usize,
}

/// Lost writes (against a final quorum read), stale and missing reads.
async fn check(history: &History, reader: &Coordinator) -> Verdict {
    let mut lost = 0;
    let mut finals = BTreeMap::new();
    for session in 0..SESSIONS {
        let record = reader
            .read(&key(session))
            .await
            .expect("final read")
            .expect("session exists");
        finals.insert(session, fields_of(&record));
    }
    for ((session, field), acks) in &history.acked {
        let last = acks.iter().map(|(v, _)| *v).max().unwrap_or(0);
        if finals[session].get(field).copied().unwrap_or(0) < last {
            lost += 1;
        }
    }
    let (mut stale, mut missing) = (0, 0);
    for (session, started, seen) in &history.reads {
        let Some(seen) = seen else {
            missing += 1;
            continue;
        };
        for ((acked_session, field), acks) in &history.acked {
            if acked_session != session {
                continue;
            }
            let must_see = acks
                .iter()
                .filter(|(_, at)| at < started)
                .map(|(v, _)| *v)
                .max();
            if must_see.is_some_and(|v| seen.get(field).copied().unwrap_or(0) < v) {
                stale += 1;
            }
        }
    }
    Verdict {
        lost,
        stale,
        missing,
    }
}

fn latency_summary(latencies: &[u64]) -> (f64, f64, f64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), *sorted.last().unwrap() as f64 / 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn table_row(
    scenario: &str,
    ops: usize,
    errors: usize,
    lost: usize,
    stale: usize,
    resurrected: usize,
    latencies: &[u64],
) {
    let (p50, p99, max) = latency_summary(latencies);
    let row = format!(
        "| {scenario} | {ops} | {errors} | {lost} | {stale} | {resurrected} | {p50:.1} / {p99:.1} / {max:.1} |\n"
    );
    print!("{row}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(row.as_bytes());
    }
}

async fn wait_down(server: &Coordinator, index: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.replica_states()[index].health != Health::Down {
        assert!(
            Instant::now() < deadline,
            "replica {index} never marked down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Instant::now()
}

/// Runs the workload on 3 app servers, applies `fault` in the middle, heals,
/// and returns the history plus the time the fault was applied.
async fn one_fault_scenario(
    name: &str,
    fault: impl std::future::Future<Output = ()>,
    heal: impl std::future::Future<Output = ()>,
    nodes: &RedisNodes,
) -> (History, Vec<Coordinator>, Instant) {
    let mut servers = Vec::new();
    for _ in 0..COORDINATORS {
        servers.push(app_server(nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await);
    }
    create_sessions(&servers[0]).await;
    let workload = start_workload(&servers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fault.await;
    let fault_at = Instant::now();
    wait_down(&servers[0], 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    heal.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = workload.stop().await;
    println!("{name}: {} operations", history.operations);
    (history, servers, fault_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_one_of_three() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let node = nodes.node(1);
    let (history, servers, _) = one_fault_scenario("a", node.kill(), node.start(), &nodes).await;
    assert_one_down_scenario("(a) SIGKILL 1 of 3", &history, &servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_network_partition_one_of_three() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let node = nodes.node(1);
    let (history, servers, _) =
        one_fault_scenario("e", node.disconnect(), node.reconnect(), &nodes).await;
    assert_one_down_scenario("(e) network partition 1 of 3", &history, &servers).await;
}

async fn assert_one_down_scenario(name: &str, history: &History, servers: &[Coordinator]) {
    let verdict = check(history, &servers[0]).await;
    // Writes still have two replicas and reads fall through, so no client
    // operation fails at all: not even before the node is marked down.
    for (at, error) in &history.errors {
        eprintln!("{name}: error at {at:?}: {error}");
    }
    table_row(
        name,
        history.operations,
        history.errors.len(),
        verdict.lost,
        verdict.stale,
        0,
        &history.latencies_us,
    );
    assert!(
        history.operations > 1_000,
        "a real workload ran: {}",
        history.operations
    );
    assert_eq!(
        history.errors.len(),
        0,
        "no failed operation with 2 of 3 replicas up"
    );
    assert_eq!(verdict.lost, 0, "no acknowledged write lost");
    assert_eq!(verdict.stale, 0, "no stale read");
    assert_eq!(verdict.missing, 0, "no session read as missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_two_of_three_down_then_back() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let server = app_server(&nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await;
    create_sessions(&server).await;
    // Down but not wiped (cut off): two nodes returning EMPTY would exceed
    // N - W lost replicas, which no quorum system can serve through.
    nodes.node(1).disconnect().await;
    nodes.node(2).disconnect().await;
    let mut latencies = Vec::new();
    let (mut write_errors, mut read_errors, mut ops) = (0, 0, 0);
    for session in 0..SESSIONS {
        let (exp, cap) = expiry(&server);
        let started = Instant::now();
        let result = server
            .write(&key(session), Mutation::update(exp, cap).set("x", "1"))
            .await;
        latencies.push(started.elapsed().as_micros() as u64);
        match result {
            Err(Error::QuorumNotReached {
                needed: 2, acked, ..
            }) if acked < 2 => write_errors += 1,
            other => panic!("2 of 3 down: expected the quorum error, got {other:?}"),
        }
        assert!(
            started.elapsed() <= REQUEST_TIMEOUT * 3,
            "a write hung: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let result = server.read(&key(session)).await;
        latencies.push(started.elapsed().as_micros() as u64);
        match result {
            Err(Error::Unavailable { .. }) => read_errors += 1,
            other => panic!("R=2 with 1 replica up must be Unavailable, got {other:?}"),
        }
        ops += 2;
    }
    // They come back: full service again.
    nodes.node(1).reconnect().await;
    nodes.node(2).reconnect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while served < SESSIONS {
        assert!(Instant::now() < deadline, "service did not come back");
        let session = served;
        let (exp, cap) = expiry(&server);
        let write = server
            .write(&key(session), Mutation::update(exp, cap).set("y", "2"))
            .await;
        let read = server.read(&key(session)).await;
        ops += 2;
        if write.is_ok() && matches!(read, Ok(Some(_))) {
            served += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    table_row(
        "(b) 2 of 3 down, then back",
        ops,
        write_errors + read_errors,
        0,
        0,
        0,
        &latencies,
    );
    assert_eq!(write_errors, SESSIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_one_node_paused() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let mut servers = Vec::new();
    for _ in 0..COORDINATORS {
        servers.push(app_server(&nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await);
    }
    create_sessions(&servers[0]).await;
    let healthy = start_workload(&servers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy = healthy.stop().await;
    nodes.node(1).pause().await;
    let paused = start_workload(&servers);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = paused.stop().await;
    nodes.node(1).unpause().await;
    let verdict = check(&paused, &servers[0]).await;
    table_row(
        "(c) healthy phase",
        healthy.operations,
        healthy.errors.len(),
        0,
        0,
        0,
        &healthy.latencies_us,
    );
    table_row(
        "(c) 1 of 3 paused",
        paused.operations,
        paused.errors.len(),
        verdict.lost,
        verdict.stale,
        0,
        &paused.latencies_us,
    );
    let (_, _, max_ms) = latency_summary(&paused.latencies_us);
    // Bounded wait, not a speed target: one request may pay the timeout
    // once per replica it tries, never an unbounded wait on the hung node.
    assert!(
        max_ms < (REQUEST_TIMEOUT.as_millis() as f64) * 4.0 + 1_000.0,
        "max {max_ms} ms"
    );
    assert_eq!(
        paused.errors.len(),
        0,
        "a hung node costs time, not failures"
    );
    assert_eq!((verdict.lost, verdict.stale), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_one_node_restarted_empty() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    // No anti-entropy on rejoin here: this scenario shows read-repair alone
    // bringing touched keys to the emptied node (recovery.rs covers refill).
    let mut no_refill = config(ReadOrder::PerKey);
    no_refill.anti_entropy.on_rejoin = false;
    let mut servers = Vec::new();
    for _ in 0..COORDINATORS {
        servers.push(app_server(&nodes, &[0, 1, 2], no_refill.clone()).await);
    }
    create_sessions(&servers[0]).await;
    let workload = start_workload(&servers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes.node(2).restart_empty().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let history = workload.stop().await;
    let states = servers[0].replica_states();
    assert!(
        servers[0].stats().epochs_changed >= 1,
        "the new epoch was noticed"
    );
    assert!(!states[2].readable, "the emptied node is write-only");
    let verdict = check(&history, &servers[0]).await;
    table_row(
        "(d) 1 of 3 restarted empty",
        history.operations,
        history.errors.len(),
        verdict.lost,
        verdict.stale,
        0,
        &history.latencies_us,
    );
    assert_eq!(verdict.missing, 0, "no session read as missing");
    assert_eq!((verdict.lost, verdict.stale), (0, 0));
    assert_eq!(history.errors.len(), 0);
    // Reads never wait on a write-only node (its answers do not count toward
    // R), so read-repair does not reach it; the writes of the workload did,
    // as partial records. One anti-entropy pass refills it: then every
    // session is identical on every node and the node is readable again.
    let all = app_server(&nodes, &[0, 1, 2], no_refill.clone()).await;
    let report = all.anti_entropy().await.expect("a pass");
    assert!(
        report
            .marked_complete
            .contains(&nodes.node(2).replica_name()),
        "{report:?}"
    );
    let (reference, emptied) = (nodes.node(0).replica().await, nodes.node(2).replica().await);
    for session in 0..SESSIONS {
        let merged = all.read(&key(session)).await.unwrap().unwrap();
        let on_emptied = emptied.read(&key(session)).await.unwrap().record;
        assert_eq!(
            on_emptied.as_ref(),
            Some(&merged),
            "session {session} repaired onto the emptied node"
        );
        let on_reference = reference.read(&key(session)).await.unwrap().record;
        assert_eq!(on_reference.as_ref(), Some(&merged));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_delete_while_down_and_the_node_returns_with_old_data() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let servers = [
        app_server(&nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await,
        app_server(&nodes, &[2, 1, 0], config(ReadOrder::Configured)).await,
    ];
    create_sessions(&servers[0]).await;
    nodes.node(2).save().await;
    nodes.node(2).stop().await;
    let deleted: Vec<usize> = (0..SESSIONS).filter(|s| s % 2 == 0).collect();
    for &session in &deleted {
        let cap = expiry(&servers[0]).1;
        servers[0]
            .write(&key(session), Mutation::delete(cap))
            .await
            .expect("delete acknowledged");
    }
    nodes.node(2).start().await; // back with its dump: the deleted sessions, no tombstones
    let stale = nodes.node(2).replica().await;
    assert!(
        stale
            .read(&key(0))
            .await
            .unwrap()
            .record
            .is_some_and(|r| !r.is_tombstone()),
        "node 2 has old data"
    );
    let mut resurrected = 0;
    let mut ops = 0;
    let mut latencies = Vec::new();
    for round in 0..5 {
        for &session in &deleted {
            let server = &servers[(session + round) % servers.len()];
            let started = Instant::now();
            let result = server.read(&key(session)).await;
            latencies.push(started.elapsed().as_micros() as u64);
            ops += 1;
            match result {
                Ok(None) => {}
                Ok(Some(_)) => resurrected += 1,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }
    for session in (0..SESSIONS).filter(|s| s % 2 == 1) {
        assert!(
            servers[1].read(&key(session)).await.unwrap().is_some(),
            "live sessions stay"
        );
    }
    table_row(
        "(f) delete while down, node back with old data",
        ops,
        0,
        0,
        0,
        resurrected,
        &latencies,
    );
    assert_eq!(resurrected, 0, "a deleted session never comes back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_two_orders_update_different_fields_concurrently() {
    let _serial = SERIAL.lock().await;
    let nodes = RedisNodes::start(3).await;
    let servers = vec![
        app_server(&nodes, &[0, 1, 2], config(ReadOrder::Configured)).await,
        app_server(&nodes, &[2, 1, 0], config(ReadOrder::Configured)).await,
    ];
    create_sessions(&servers[0]).await;
    let workload = start_workload(&servers);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let history = workload.stop().await;
    tokio::time::sleep(REQUEST_TIMEOUT).await; // background merges finish
    let verdict = check(&history, &servers[1]).await;
    table_row(
        "(g) 2 orders, different fields",
        history.operations,
        history.errors.len(),
        verdict.lost,
        verdict.stale,
        0,
        &history.latencies_us,
    );
    assert_eq!(
        (verdict.lost, verdict.stale, history.errors.len()),
        (0, 0, 0)
    );
    let replicas = nodes.replicas().await;
    for session in 0..SESSIONS {
        let key = key(session);
        let copies = futures::future::join_all(replicas.iter().map(|r| r.read(&key))).await;
        let copies: Vec<_> = copies.into_iter().map(|c| c.unwrap().record).collect();
        assert_eq!(
            copies[0], copies[1],
            "session {session}: replicas 0 and 1 identical"
        );
        assert_eq!(
            copies[1], copies[2],
            "session {session}: replicas 1 and 2 identical"
        );
    }
}
