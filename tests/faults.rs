//! Real faults on real Redis containers, under a concurrent workload.
//!
//! The scenarios (a)–(g) of the Redis-replicas issue live in the library
//! (`quorum_sessions::chaos`, feature `chaos`), so that `qs-admin chaos`
//! runs the very same code on local processes; this file runs them on 3
//! Redis containers (testcontainers, `tests/support`) through
//! [`ChaosNodes`]. Each scenario runs several coordinators as separate app
//! servers doing thousands of writes and reads while a fault happens, and
//! checks the history: no acknowledged write lost (against a final quorum
//! read), no stale read (R + W > N), no deleted session read back.
//!
//! Each test asserts that every claim of its scenario held, and that the
//! scenario checked the claims this file has always asserted (listed per
//! test), so a claim dropped from the library fails here. Each appends its
//! rows to `target/fault-table.md`, the table quoted in BENCHMARKS.md.
//! Scenarios run one at a time (a file-wide lock) so their latency figures
//! are not mixed. Latencies are printed, not asserted, except the bounded
//! waits (b) and (c) claim: no request hangs on a dead or frozen node.
#![cfg(feature = "chaos")]

mod support;

use async_trait::async_trait;
use quorum_sessions::chaos::{record_rows, ChaosNodes, Scenario, ScenarioReport};
use quorum_sessions::replica::redis::RedisReplica;
use support::RedisNodes;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The testcontainers harness as the scenarios' fault injector.
struct Containers(RedisNodes);

#[async_trait]
impl ChaosNodes for Containers {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn replica_name(&self, index: usize) -> String {
        self.0.node(index).replica_name()
    }
    async fn replica(&self, index: usize) -> RedisReplica {
        self.0.node(index).replica().await
    }
    async fn kill(&self, index: usize) {
        self.0.node(index).kill().await
    }
    async fn stop(&self, index: usize) {
        self.0.node(index).stop().await
    }
    async fn start(&self, index: usize) {
        self.0.node(index).start().await
    }
    async fn pause(&self, index: usize) {
        self.0.node(index).pause().await
    }
    async fn unpause(&self, index: usize) {
        self.0.node(index).unpause().await
    }
    async fn disconnect(&self, index: usize) {
        self.0.node(index).disconnect().await
    }
    async fn reconnect(&self, index: usize) {
        self.0.node(index).reconnect().await
    }
    async fn restart_empty(&self, index: usize) {
        self.0.node(index).restart_empty().await
    }
    async fn save(&self, index: usize) {
        self.0.node(index).save().await
    }
}

/// Runs `scenario` on 3 fresh containers; prints its rows (and the first
/// failed operations, if any) and appends them to `target/fault-table.md`.
async fn run(scenario: Scenario) -> Vec<ScenarioReport> {
    let nodes = Containers(RedisNodes::start(3).await);
    let reports = scenario.run(&nodes, &|_: &str| {}).await;
    record_rows(
        &reports,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md"),
    );
    reports
}

/// Asserts that `report` checked every claim of `expected` (by its
/// words) and that every claim it checked held.
fn assert_held(report: &ScenarioReport, expected: &[&str]) {
    for what in expected {
        assert!(
            report.claims.iter().any(|claim| claim.what.contains(what)),
            "{}: the claim {what:?} was not checked; checked: {:?}",
            report.name,
            report.claims
        );
    }
    let failures: Vec<String> = report.failures().iter().map(|c| c.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{}: broken claims:\n  {}",
        report.name,
        failures.join("\n  ")
    );
}

/// The claims of the one-node-down scenarios (a) and (e).
const ONE_DOWN: [&str; 7] = [
    "marked down",
    "a real workload ran",
    "no failed operation with 2 of 3 replicas up",
    "no acknowledged write lost",
    "no stale read",
    "no session read as missing",
    "every final quorum read",
];

/// (a) SIGKILL of 1 node of 3 under the workload, then it starts again
/// (empty): over 1000 operations, not one failed, none lost, stale or
/// missing, and the node was marked Down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_one_of_three() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::A).await;
    assert_eq!(reports.len(), 1);
    assert_held(&reports[0], &ONE_DOWN);
}

/// (e) 1 node of 3 cut off its network under the workload, then back:
/// the same claims as (a).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_network_partition_one_of_three() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::E).await;
    assert_eq!(reports.len(), 1);
    assert_held(&reports[0], &ONE_DOWN);
}

/// (b) 2 of 3 cut off: every write fails with `QuorumNotReached` (W = 2,
/// fewer acks) within 3 request timeouts and every read is `Unavailable`;
/// after they come back every session is written and read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_two_of_three_down_then_back() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::B).await;
    assert_eq!(reports.len(), 1);
    assert_held(
        &reports[0],
        &[
            "every write fails with QuorumNotReached",
            "every read is Unavailable",
            "no write hangs",
            "service comes back",
        ],
    );
}

/// (c) A healthy phase, then 1 of 3 paused (SIGSTOP) under the workload:
/// no failed operation, nothing lost or stale, and the slowest request
/// stays under 4 request timeouts + 1 s (a bounded wait, not a speed
/// target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_one_node_paused() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::C).await;
    assert_eq!(reports.len(), 2, "a healthy row and a paused row");
    assert_eq!(reports[0].name, "(c) healthy phase");
    assert_held(
        &reports[1],
        &[
            "no request waits on the hung node unboundedly",
            "a hung node costs time, not failures",
            "no acknowledged write lost",
            "no stale read",
        ],
    );
}

/// (d) 1 of 3 restarted empty under the workload, no anti-entropy on
/// rejoin: the new epoch is noticed, the node is write-only, nothing fails,
/// is lost, stale or missing; one anti-entropy pass then marks it complete
/// and every session on it and on a reference node equals a quorum read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_one_node_restarted_empty() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::D).await;
    assert_eq!(reports.len(), 1);
    assert_held(
        &reports[0],
        &[
            "the new epoch was noticed",
            "the emptied node is write-only",
            "no session read as missing",
            "no acknowledged write lost",
            "no stale read",
            "no failed operation",
            "marks it complete",
            "repaired onto the emptied node",
            "on a reference node",
        ],
    );
}

/// (f) Half the sessions deleted while node 2 is down, by an app server
/// that then stops (its hints for node 2 go with it); node 2 comes back
/// with its old dump (the sessions, no tombstones): reads from app servers
/// in both orders never bring a deleted session back, live ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_delete_while_down_and_the_node_returns_with_old_data() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::F).await;
    assert_eq!(reports.len(), 1);
    assert_held(
        &reports[0],
        &[
            "every delete is acknowledged",
            "node 2 comes back with old data",
            "every read of a deleted session answers",
            "a deleted session never comes back",
            "live sessions stay",
        ],
    );
}

/// (g) Two app servers in opposite read orders update different fields of
/// the same sessions at once: nothing lost, stale or failed, and every
/// replica ends with the same record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_two_orders_update_different_fields_concurrently() {
    let _serial = SERIAL.lock().await;
    let reports = run(Scenario::G).await;
    assert_eq!(reports.len(), 1);
    assert_held(
        &reports[0],
        &[
            "no acknowledged write lost",
            "no stale read",
            "no failed operation",
            "identical on every replica",
        ],
    );
}
