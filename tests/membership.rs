//! Membership change while serving, on four real Redis servers
//! (testcontainers), following `docs/membership.md` step by step: a replica
//! added (N 3 → 4) and then removed (N 4 → 3), each by rolling app servers
//! from one replica list to the next while a workload runs on every app
//! server alive at that moment — so that servers of two consecutive steps
//! serve side by side, as in a real rolling deploy. What it proves, each
//! point asserted:
//!
//! 1. **No stale read, no lost write, no false "not found"** through every
//!    step: each workload task owns one field of every session, writes it
//!    with rising values through one app server and reads it back through
//!    another (picked at random among the servers alive then, of whichever
//!    step); a read that started after an acknowledgement must show that
//!    value or a later one, and every session must be found. No write or
//!    read fails either (every node stays up: each step's quorums are met).
//! 2. **A joining replica is not trusted early**: while the servers list it
//!    as write-only, their anti-entropy passes refill it but never mark it
//!    complete (it stays incomplete on the server itself), so nothing reads
//!    it before every app server writes to it. Once every server does, a
//!    pass without the flag (what `qs-admin repair` runs) marks it complete,
//!    and it holds every session.
//! 3. **A leaving replica can be stopped** once the servers stopped reading
//!    it (write-only) and then stopped writing it: killing it changes
//!    nothing for the clients.
//!
//! Runtime: about 20 s. Needs Docker (see `tests/support`).
#![cfg(feature = "redis")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};
use support::RedisNodes;

const SESSIONS: usize = 30;
/// Workload tasks; task `t` owns field `t<t>` of every session.
const TASKS: usize = 6;
/// How long each step serves before the next server is rolled.
const STEP: Duration = Duration::from_millis(1_500);

fn key(session: usize) -> String {
    format!("s:{{member-{session}}}")
}

/// An app server on nodes `members` with quorums `w`/`r`; the nodes in
/// `write_only` are written to but never read.
async fn app_server(
    nodes: &RedisNodes,
    members: &[usize],
    (w, r): (usize, usize),
    write_only: &[usize],
) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for &index in members {
        replicas.push(Arc::new(nodes.node(index).replica().await));
    }
    let config = ClusterConfig {
        write_quorum: w,
        read_quorum: r,
        write_only: write_only
            .iter()
            .map(|&i| nodes.node(i).replica_name())
            .collect(),
        ..support::fault_test_config()
    };
    Coordinator::connect(config, replicas)
        .await
        .expect("valid step configuration")
}

/// What the workload saw.
#[derive(Default)]
struct Seen {
    operations: AtomicUsize,
    /// Reads older than an acknowledged write, sessions read as absent,
    /// failed requests.
    violations: AtomicUsize,
    /// The first [`SAMPLES_MAX`] of them: (step, what).
    samples: Mutex<Vec<(String, String)>>,
}

/// Violations kept to print.
const SAMPLES_MAX: usize = 20;

impl Seen {
    fn violation(&self, step: String, what: String) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < SAMPLES_MAX {
            samples.push((step, what));
        }
    }
}

/// Stops the workload however the test ends (a failed assertion included:
/// the tasks would otherwise outlive it).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The app servers alive now, and the step they belong to (for the report).
struct Fleet {
    servers: RwLock<Vec<Coordinator>>,
    step: RwLock<String>,
}

impl Fleet {
    fn pick(&self, salt: usize) -> Coordinator {
        let servers = self.servers.read().unwrap();
        servers[salt % servers.len()].clone()
    }

    /// Replaces server `slot` (a rolling restart of one app server): the
    /// new one serves first, then the old one finishes its writes and stops.
    async fn roll(&self, slot: usize, next: Coordinator, step: &str) {
        *self.step.write().unwrap() = step.to_owned();
        let old = std::mem::replace(&mut self.servers.write().unwrap()[slot], next);
        old.shutdown(Duration::from_secs(2)).await;
        tokio::time::sleep(STEP).await;
    }
}

fn start_workload(
    fleet: Arc<Fleet>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..TASKS)
        .map(|task| {
            let (fleet, seen, stop) = (fleet.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let field = format!("t{task}");
                let mut acked: BTreeMap<usize, u64> = BTreeMap::new();
                let mut step = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    step += 1;
                    let session = (step * 7 + task) % SESSIONS;
                    let value = step as u64;
                    let writer = fleet.pick(step + task);
                    let now = writer.now_ms();
                    let mutation = Mutation::update(now + 600_000, now + 3_600_000)
                        .set(field.clone(), value.to_string());
                    let phase = fleet.step.read().unwrap().clone();
                    match writer.write(&key(session), mutation).await {
                        Ok(_) => {
                            acked.insert(session, value);
                        }
                        Err(error) => {
                            seen.violation(phase.clone(), format!("write failed: {error}"))
                        }
                    }
                    let reader = fleet.pick(step * 3 + task + 1);
                    let must_see = acked.get(&session).copied().unwrap_or(0);
                    let problem = match reader.read(&key(session)).await {
                        Ok(Some(record)) => {
                            let got: u64 = record
                                .get(&field)
                                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                                .unwrap_or(0);
                            (got < must_see).then(|| format!("stale read: {got} < {must_see}"))
                        }
                        Ok(None) => Some("session read as absent".to_owned()),
                        Err(error) => Some(format!("read failed: {error}")),
                    };
                    if let Some(problem) = problem {
                        seen.violation(phase, problem);
                    }
                    seen.operations.fetch_add(2, Ordering::Relaxed);
                    // A refused request answers at once: let the runtime
                    // (and its shutdown) in.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

/// One anti-entropy pass by `coordinator`, asked again while another
/// server's pass holds the lease (at most [`PASS_TRIES`] times).
async fn pass(coordinator: &Coordinator) -> quorum_sessions::AntiEntropyReport {
    for _ in 0..PASS_TRIES {
        if let Some(report) = coordinator.anti_entropy().await {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no anti-entropy pass ran in {PASS_TRIES} tries");
}

const PASS_TRIES: usize = 100;

async fn is_complete_on_server(nodes: &RedisNodes, index: usize) -> bool {
    nodes
        .node(index)
        .replica()
        .await
        .ping()
        .await
        .unwrap()
        .complete
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_then_remove_a_replica_while_serving() {
    let nodes = RedisNodes::start(4).await;
    let (abc, abcd) = ([0, 1, 2], [0, 1, 2, 3]);
    let old = (2, 2);
    let wide = (3, 2); // N = 4: W = 3, R = 2 (R + W > N)

    // Step 0: two app servers on A, B, C; the sessions exist.
    let first = app_server(&nodes, &abc, old, &[]).await;
    for session in 0..SESSIONS {
        let now = first.now_ms();
        first
            .write(
                &key(session),
                Mutation::create(now + 600_000, now + 3_600_000).set("user", "u"),
            )
            .await
            .unwrap();
    }
    let second = app_server(&nodes, &abc, old, &[]).await;
    let fleet = Arc::new(Fleet {
        servers: RwLock::new(vec![first, second]),
        step: RwLock::new("0: A B C".to_owned()),
    });
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let tasks = start_workload(fleet.clone(), seen.clone(), stop.clone());
    let _stop = StopOnDrop(stop.clone());
    tokio::time::sleep(STEP).await;

    // Step 1: roll to A B C D with D write-only (D is a new, empty Redis).
    let step = "1: A B C +D write-only";
    for slot in 0..2 {
        let next = app_server(&nodes, &abcd, wide, &[3]).await;
        fleet.roll(slot, next, step).await;
    }
    // Their passes refill D but do not mark it complete.
    let report = pass(&fleet.pick(0)).await;
    assert!(report.marked_complete.is_empty(), "{report:?}");
    assert!(!is_complete_on_server(&nodes, 3).await, "D not trusted yet");

    // Step 2: every server writes to D: a pass without the flag (qs-admin
    // repair) refills it and marks it complete.
    let operator = app_server(&nodes, &abcd, wide, &[]).await;
    let report = pass(&operator).await;
    assert_eq!(report.marked_complete, vec![nodes.node(3).replica_name()]);
    assert!(is_complete_on_server(&nodes, 3).await);
    operator.shutdown(Duration::from_secs(2)).await;

    // Step 3: roll to A B C D, D a member.
    let step = "3: A B C D";
    for slot in 0..2 {
        let next = app_server(&nodes, &abcd, wide, &[]).await;
        fleet.roll(slot, next, step).await;
    }
    let d_keys = nodes.node(3).dbsize().await;
    assert!(
        d_keys >= SESSIONS as u64,
        "D holds every session: {d_keys} keys"
    );

    // Removal. Step 4: stop reading D (write-only), still writing it.
    let step = "4: A B C, D leaving (write-only)";
    for slot in 0..2 {
        let next = app_server(&nodes, &abcd, wide, &[3]).await;
        fleet.roll(slot, next, step).await;
    }
    // Step 5: roll to A B C.
    let step = "5: A B C";
    for slot in 0..2 {
        let next = app_server(&nodes, &abc, old, &[]).await;
        fleet.roll(slot, next, step).await;
    }
    // Step 6: D is stopped; nobody notices.
    *fleet.step.write().unwrap() = "6: D stopped".to_owned();
    nodes.node(3).kill().await;
    tokio::time::sleep(STEP).await;

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let operations = seen.operations.load(Ordering::Relaxed);
    let violations = seen.violations.load(Ordering::Relaxed);
    println!(
        "| membership: add D (3 → 4), remove D (4 → 3), 2 app servers rolled per step | {operations} | {violations} |"
    );
    for (step, what) in seen.samples.lock().unwrap().iter() {
        eprintln!("step {step}: {what}");
    }
    assert!(operations > 500, "a real workload ran: {operations}");
    assert_eq!(
        violations, 0,
        "violations (the first {SAMPLES_MAX} listed above)"
    );
}
