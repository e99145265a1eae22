//! The scenarios (a)–(g): each drives its faults through [`ChaosNodes`],
//! runs the workload or its own requests, and turns what it asserts into
//! [`Claim`](super::Claim)s of its [`ScenarioReport`]s.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::workload::{check, create_sessions, expiry, key, start_workload, Workload, SESSIONS};
use super::{ChaosNodes, LatencySummary, Progress, ScenarioReport};
use crate::replica::Replica;
use crate::{ClusterConfig, Coordinator, Error, Health, Mutation, ReadOrder};

/// App servers running the workload in the one-fault scenarios.
const COORDINATORS: usize = 3;
/// The coordinators' request timeout (the replicas' own is about the same).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a fault may take to be noticed (a replica marked Down), and
/// service to come back after a heal, before the claim counts as broken.
const NOTICE_DEADLINE: Duration = Duration::from_secs(10);
/// How often a waiting scenario polls, and reports progress.
const TICK: Duration = Duration::from_millis(250);
/// Rounds of reads of the deleted sessions in (f).
const DELETED_READ_ROUNDS: usize = 5;
/// Bound on the closing shutdown of a scenario's coordinators.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);

type Outcome = Result<Vec<ScenarioReport>, String>;

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
async fn app_server(
    nodes: &dyn ChaosNodes,
    order: &[usize],
    config: ClusterConfig,
) -> Result<Coordinator, String> {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for &index in order {
        replicas.push(Arc::new(nodes.replica(index).await));
    }
    Coordinator::connect(config, replicas)
        .await
        .map_err(|error| format!("connect a coordinator: {error}"))
}

async fn app_servers(
    nodes: &dyn ChaosNodes,
    count: usize,
    config: ClusterConfig,
) -> Result<Vec<Coordinator>, String> {
    let mut servers = Vec::new();
    for _ in 0..count {
        servers.push(app_server(nodes, &[0, 1, 2], config.clone()).await?);
    }
    Ok(servers)
}

async fn create(server: &Coordinator, progress: Progress<'_>) -> Result<(), String> {
    progress("creating the sessions");
    create_sessions(server)
        .await
        .map_err(|error| format!("create the sessions: {error}"))
}

/// Stops the app servers' background work once the scenario is judged.
async fn shut_down(servers: &[Coordinator]) {
    for server in servers {
        server.shutdown(SHUTDOWN_DEADLINE).await;
    }
}

/// Lets the workload run for `duration`, reporting its operations.
async fn run_for(workload: &Workload, duration: Duration, phase: &str, progress: Progress<'_>) {
    let until = Instant::now() + duration;
    // Bounded by `duration / TICK` rounds.
    while Instant::now() < until {
        progress(&format!("{phase}: {} operations", workload.operations()));
        tokio::time::sleep(TICK.min(until - Instant::now())).await;
    }
}

/// Waits until `server` marks replica `index` Down; false after
/// [`NOTICE_DEADLINE`].
async fn wait_down(server: &Coordinator, index: usize) -> bool {
    let deadline = Instant::now() + NOTICE_DEADLINE;
    while server.replica_states()[index].health != Health::Down {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The fault of a one-node-down scenario.
#[derive(Clone, Copy)]
enum OneDown {
    Kill,
    Partition,
}

/// Runs the workload on 3 app servers, puts node 1 down in the middle,
/// heals it, and checks: no failed operation at all (writes still have two
/// replicas and reads fall through, even before the node is marked down),
/// nothing lost, nothing stale, nothing missing.
async fn one_down(
    name: &str,
    nodes: &dyn ChaosNodes,
    fault: OneDown,
    progress: Progress<'_>,
) -> Outcome {
    let servers = app_servers(nodes, COORDINATORS, config(ReadOrder::PerKey)).await?;
    create(&servers[0], progress).await?;
    let workload = start_workload(&servers);
    run_for(&workload, Duration::from_secs(2), "healthy", progress).await;
    match fault {
        OneDown::Kill => {
            progress("SIGKILL node 1");
            nodes.kill(1).await;
        }
        OneDown::Partition => {
            progress("cutting node 1 off");
            nodes.disconnect(1).await;
        }
    }
    progress("waiting for node 1 to be marked down");
    let seen_down = wait_down(&servers[0], 1).await;
    run_for(&workload, Duration::from_secs(3), "node 1 down", progress).await;
    match fault {
        OneDown::Kill => {
            progress("starting node 1");
            nodes.start(1).await;
        }
        OneDown::Partition => {
            progress("reconnecting node 1");
            nodes.reconnect(1).await;
        }
    }
    run_for(&workload, Duration::from_secs(2), "node 1 back", progress).await;
    let history = workload.stop().await;
    progress("checking the history");
    let verdict = check(&history, &servers[0]).await;
    let mut report = ScenarioReport::from_history(name, &history, &verdict);
    report.claim(
        "node 1 is marked down",
        seen_down,
        format!("not within {NOTICE_DEADLINE:?}"),
    );
    report.claim(
        "a real workload ran (over 1000 operations)",
        history.operations > 1_000,
        format!("{} operations", history.operations),
    );
    report.claim(
        "no failed operation with 2 of 3 replicas up",
        history.errors == 0,
        format!("{} failed", history.errors),
    );
    report.claim_clean_history(&verdict);
    shut_down(&servers).await;
    Ok(vec![report])
}

pub(super) async fn a_sigkill_one_of_three(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    one_down("(a) SIGKILL 1 of 3", nodes, OneDown::Kill, progress).await
}

pub(super) async fn e_network_partition_one_of_three(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    one_down(
        "(e) network partition 1 of 3",
        nodes,
        OneDown::Partition,
        progress,
    )
    .await
}

/// Two of three cut off (down but not wiped: two nodes returning EMPTY
/// would exceed N − W lost replicas, which no quorum system can serve
/// through): every write fails with `QuorumNotReached` and every read with
/// `Unavailable`, each within a bounded time; then they come back and every
/// session is served again.
pub(super) async fn b_two_of_three_down_then_back(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    let server = app_server(nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await?;
    create(&server, progress).await?;
    progress("cutting nodes 1 and 2 off");
    nodes.disconnect(1).await;
    nodes.disconnect(2).await;
    let mut latencies = Vec::new();
    let (mut write_errors, mut read_errors, mut ops) = (0, 0, 0);
    let (mut wrong_writes, mut wrong_reads, mut hung) = (Vec::new(), Vec::new(), Vec::new());
    progress("writing and reading with 1 of 3 reachable");
    for session in 0..SESSIONS {
        let (exp, cap) = expiry(&server);
        let started = Instant::now();
        let result = server
            .write(&key(session), Mutation::update(exp, cap).set("x", "1"))
            .await;
        let took = started.elapsed();
        latencies.push(took.as_micros() as u64);
        match result {
            Err(Error::QuorumNotReached {
                needed: 2, acked, ..
            }) if acked < 2 => write_errors += 1,
            other => wrong_writes.push(format!("{:?}", other.map(|_| ()))),
        }
        // Bounded wait, not a speed target: a request pays at most its
        // timeout once per replica it tries.
        if took > REQUEST_TIMEOUT * 3 {
            hung.push(took);
        }
        let started = Instant::now();
        let result = server.read(&key(session)).await;
        latencies.push(started.elapsed().as_micros() as u64);
        match result {
            Err(Error::Unavailable { .. }) => read_errors += 1,
            other => wrong_reads.push(format!("{:?}", other.map(|r| r.is_some()))),
        }
        ops += 2;
    }
    progress("reconnecting nodes 1 and 2");
    nodes.reconnect(1).await;
    nodes.reconnect(2).await;
    let deadline = Instant::now() + NOTICE_DEADLINE;
    let mut served = 0;
    // Bounded by NOTICE_DEADLINE.
    while served < SESSIONS && Instant::now() < deadline {
        let session = served;
        let (exp, cap) = expiry(&server);
        let write = server
            .write(&key(session), Mutation::update(exp, cap).set("y", "2"))
            .await;
        let read = server.read(&key(session)).await;
        ops += 2;
        if write.is_ok() && matches!(read, Ok(Some(_))) {
            served += 1;
            progress(&format!("back: {served} of {SESSIONS} sessions served"));
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut report = ScenarioReport::new("(b) 2 of 3 down, then back");
    report.operations = ops;
    report.errors = write_errors + read_errors;
    report.latency = LatencySummary::of(&latencies);
    report.claim(
        "with 2 of 3 down, every write fails with QuorumNotReached (needed 2, acked < 2)",
        wrong_writes.is_empty() && write_errors == SESSIONS,
        format!(
            "{write_errors} of {SESSIONS}; other outcomes: {}",
            sample(&wrong_writes)
        ),
    );
    report.claim(
        "with 1 replica up and R = 2, every read is Unavailable",
        wrong_reads.is_empty(),
        format!("other outcomes: {}", sample(&wrong_reads)),
    );
    report.claim(
        "no write hangs (each ends within 3 request timeouts)",
        hung.is_empty(),
        format!("{} writes took longer: {hung:?}", hung.len()),
    );
    report.claim(
        "service comes back: every session written and read",
        served == SESSIONS,
        format!("{served} of {SESSIONS} within {NOTICE_DEADLINE:?}"),
    );
    shut_down(&[server]).await;
    Ok(vec![report])
}

/// The first few of `outcomes`, for a claim's message.
fn sample(outcomes: &[String]) -> String {
    const SHOWN: usize = 3;
    if outcomes.is_empty() {
        return "none".to_owned();
    }
    format!(
        "{} ({} in all)",
        outcomes[..outcomes.len().min(SHOWN)].join(", "),
        outcomes.len()
    )
}

/// A healthy phase, then one node paused (SIGSTOP) under the workload: a
/// hung node costs time, never failures, and the wait is bounded.
pub(super) async fn c_one_node_paused(nodes: &dyn ChaosNodes, progress: Progress<'_>) -> Outcome {
    let servers = app_servers(nodes, COORDINATORS, config(ReadOrder::PerKey)).await?;
    create(&servers[0], progress).await?;
    let healthy = start_workload(&servers);
    run_for(&healthy, Duration::from_secs(3), "healthy", progress).await;
    let healthy = healthy.stop().await;
    progress("pausing node 1");
    nodes.pause(1).await;
    let paused = start_workload(&servers);
    run_for(&paused, Duration::from_secs(4), "node 1 paused", progress).await;
    let paused = paused.stop().await;
    progress("unpausing node 1");
    nodes.unpause(1).await;
    progress("checking the history");
    let verdict = check(&paused, &servers[0]).await;
    // The healthy phase is a reference for the latencies: not judged.
    let healthy_report =
        ScenarioReport::from_history("(c) healthy phase", &healthy, &Default::default());
    let mut report = ScenarioReport::from_history("(c) 1 of 3 paused", &paused, &verdict);
    // Bounded wait, not a speed target: one request may pay the timeout
    // once per replica it tries, never an unbounded wait on the hung node.
    let bound_ms = REQUEST_TIMEOUT.as_millis() as f64 * 4.0 + 1_000.0;
    report.claim(
        "no request waits on the hung node unboundedly",
        report.latency.max_ms < bound_ms,
        format!("max {:.1} ms (bound {bound_ms} ms)", report.latency.max_ms),
    );
    report.claim(
        "a hung node costs time, not failures",
        paused.errors == 0,
        format!("{} failed", paused.errors),
    );
    report.claim(
        "no acknowledged write lost",
        verdict.lost == 0,
        format!("{} lost", verdict.lost),
    );
    report.claim(
        "no stale read",
        verdict.stale == 0,
        format!("{} stale", verdict.stale),
    );
    report.claim(
        "every final quorum read finds its session",
        verdict.final_reads_failed == 0,
        format!("{} failed", verdict.final_reads_failed),
    );
    shut_down(&servers).await;
    Ok(vec![healthy_report, report])
}

/// One node restarted empty under the workload, with no anti-entropy on
/// rejoin (read-repair alone): the new epoch is noticed, the node is
/// write-only, nothing is lost, stale or missing; then one anti-entropy
/// pass refills it and every session is identical on every node.
pub(super) async fn d_one_node_restarted_empty(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    let mut no_refill = config(ReadOrder::PerKey);
    no_refill.anti_entropy.on_rejoin = false;
    let servers = app_servers(nodes, COORDINATORS, no_refill.clone()).await?;
    create(&servers[0], progress).await?;
    let workload = start_workload(&servers);
    run_for(&workload, Duration::from_secs(2), "healthy", progress).await;
    progress("restarting node 2 empty");
    nodes.restart_empty(2).await;
    run_for(
        &workload,
        Duration::from_secs(4),
        "node 2 emptied",
        progress,
    )
    .await;
    let history = workload.stop().await;
    let states = servers[0].replica_states();
    let epochs_changed = servers[0].stats().epochs_changed;
    progress("checking the history");
    let verdict = check(&history, &servers[0]).await;
    let mut report = ScenarioReport::from_history("(d) 1 of 3 restarted empty", &history, &verdict);
    report.claim(
        "the new epoch was noticed",
        epochs_changed >= 1,
        format!("{epochs_changed} epoch changes"),
    );
    report.claim(
        "the emptied node is write-only",
        !states[2].readable,
        "it is readable",
    );
    report.claim_clean_history(&verdict);
    report.claim(
        "no failed operation",
        history.errors == 0,
        format!("{} failed", history.errors),
    );
    // Reads never wait on a write-only node (its answers do not count toward
    // R), so read-repair does not reach it; the writes of the workload did,
    // as partial records. One anti-entropy pass refills it: then every
    // session is identical on every node and the node is readable again.
    progress("one anti-entropy pass");
    let all = app_server(nodes, &[0, 1, 2], no_refill).await?;
    let pass = all.anti_entropy().await;
    let emptied = nodes.replica_name(2);
    report.claim(
        "one anti-entropy pass refills the emptied node and marks it complete",
        pass.as_ref()
            .is_some_and(|pass| pass.marked_complete.contains(&emptied)),
        format!("{pass:?}"),
    );
    let (reference, emptied) = (nodes.replica(0).await, nodes.replica(2).await);
    let (mut differ_emptied, mut differ_reference) = (0, 0);
    for session in 0..SESSIONS {
        let merged = all.read(&key(session)).await.ok().flatten();
        let on_emptied = emptied
            .read(&key(session))
            .await
            .ok()
            .and_then(|r| r.record);
        let on_reference = reference
            .read(&key(session))
            .await
            .ok()
            .and_then(|r| r.record);
        differ_emptied += usize::from(merged.is_none() || on_emptied != merged);
        differ_reference += usize::from(merged.is_none() || on_reference != merged);
    }
    report.claim(
        "every session is repaired onto the emptied node (equal to a quorum read)",
        differ_emptied == 0,
        format!("{differ_emptied} of {SESSIONS} sessions differ"),
    );
    report.claim(
        "every session on a reference node equals a quorum read",
        differ_reference == 0,
        format!("{differ_reference} of {SESSIONS} sessions differ"),
    );
    let mut all_servers = servers;
    all_servers.push(all);
    shut_down(&all_servers).await;
    Ok(vec![report])
}

/// Half the sessions deleted while node 2 is down, by an app server that
/// stops before node 2 returns with its dump (the deleted sessions, no
/// tombstones, and no hint left to bring them). No read, from app servers
/// in either read order, brings a deleted session back; live ones stay.
pub(super) async fn f_delete_while_down_old_data(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    let servers = [
        app_server(nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await?,
        app_server(nodes, &[2, 1, 0], config(ReadOrder::Configured)).await?,
    ];
    create(&servers[0], progress).await?;
    progress("saving and stopping node 2");
    nodes.save(2).await;
    nodes.stop(2).await;
    progress("deleting half the sessions");
    // Through an app server that stops before node 2 returns: its hints for
    // node 2 (the tombstones) go with it, so node 2 really comes back with
    // the deleted sessions and only the tombstones on nodes 0 and 1 stand
    // between them and a reader. (Replayed hints would race the check of
    // node 2's old data below, and shield the reads from the fault.)
    let deleter = app_server(nodes, &[0, 1, 2], config(ReadOrder::PerKey)).await?;
    let deleted: Vec<usize> = (0..SESSIONS).filter(|s| s % 2 == 0).collect();
    let mut deletes_failed = 0;
    for &session in &deleted {
        let cap = expiry(&deleter).1;
        if deleter
            .write(&key(session), Mutation::delete(cap))
            .await
            .is_err()
        {
            deletes_failed += 1;
        }
    }
    shut_down(std::slice::from_ref(&deleter)).await;
    drop(deleter);
    progress("starting node 2 with its old data");
    nodes.start(2).await; // back with its dump: the deleted sessions, no tombstones
    let stale = nodes.replica(2).await;
    let (old_data, on_node_2) = match stale.read(&key(0)).await {
        Ok(reply) => match reply.record {
            Some(record) if !record.is_tombstone() => (true, "a live copy".to_owned()),
            Some(_) => (false, "a tombstone already".to_owned()),
            None => (false, "nothing".to_owned()),
        },
        Err(error) => (false, format!("the read failed: {error}")),
    };
    let mut report = ScenarioReport::new("(f) delete while down, node back with old data");
    let (mut resurrected, mut failed, mut ops) = (0, 0, 0);
    let mut latencies = Vec::new();
    progress("reading the deleted sessions");
    for round in 0..DELETED_READ_ROUNDS {
        for &session in &deleted {
            let server = &servers[(session + round) % servers.len()];
            let started = Instant::now();
            let result = server.read(&key(session)).await;
            latencies.push(started.elapsed().as_micros() as u64);
            ops += 1;
            match result {
                Ok(None) => {}
                Ok(Some(_)) => resurrected += 1,
                Err(_) => failed += 1,
            }
        }
    }
    let mut live_gone = 0;
    for session in (0..SESSIONS).filter(|s| s % 2 == 1) {
        if !matches!(servers[1].read(&key(session)).await, Ok(Some(_))) {
            live_gone += 1;
        }
    }
    report.operations = ops;
    report.errors = failed;
    report.resurrected = resurrected;
    report.latency = LatencySummary::of(&latencies);
    report.claim(
        "every delete is acknowledged with node 2 down",
        deletes_failed == 0,
        format!("{deletes_failed} failed"),
    );
    report.claim(
        "node 2 comes back with old data (the test is real)",
        old_data,
        format!("node 2 holds {on_node_2}"),
    );
    report.claim(
        "every read of a deleted session answers",
        failed == 0,
        format!("{failed} failed"),
    );
    report.claim(
        "a deleted session never comes back",
        resurrected == 0,
        format!("{resurrected} reads found one"),
    );
    report.claim(
        "live sessions stay",
        live_gone == 0,
        format!("{live_gone} not found"),
    );
    shut_down(&servers).await;
    Ok(vec![report])
}

/// Two app servers reading in opposite orders update different fields of
/// the same sessions at once: nothing lost or stale, no failure, and once
/// the background merges finish every replica holds the same record.
pub(super) async fn g_two_orders_different_fields(
    nodes: &dyn ChaosNodes,
    progress: Progress<'_>,
) -> Outcome {
    let servers = vec![
        app_server(nodes, &[0, 1, 2], config(ReadOrder::Configured)).await?,
        app_server(nodes, &[2, 1, 0], config(ReadOrder::Configured)).await?,
    ];
    create(&servers[0], progress).await?;
    let workload = start_workload(&servers);
    run_for(
        &workload,
        Duration::from_secs(4),
        "concurrent updates",
        progress,
    )
    .await;
    let history = workload.stop().await;
    tokio::time::sleep(REQUEST_TIMEOUT).await; // background merges finish
    progress("checking the history");
    let verdict = check(&history, &servers[1]).await;
    let mut report =
        ScenarioReport::from_history("(g) 2 orders, different fields", &history, &verdict);
    report.claim(
        "no acknowledged write lost",
        verdict.lost == 0,
        format!("{} lost", verdict.lost),
    );
    report.claim(
        "no stale read",
        verdict.stale == 0,
        format!("{} stale", verdict.stale),
    );
    report.claim(
        "no failed operation",
        history.errors == 0,
        format!("{} failed", history.errors),
    );
    report.claim(
        "every final quorum read finds its session",
        verdict.final_reads_failed == 0,
        format!("{} failed", verdict.final_reads_failed),
    );
    let mut replicas = Vec::new();
    for index in 0..nodes.len() {
        replicas.push(nodes.replica(index).await);
    }
    let (mut differ, mut unreadable) = (0, 0);
    for session in 0..SESSIONS {
        let key = key(session);
        let copies = futures::future::join_all(replicas.iter().map(|r| r.read(&key))).await;
        let copies: Result<Vec<_>, _> = copies.into_iter().map(|c| c.map(|r| r.record)).collect();
        match copies {
            Ok(copies) => differ += usize::from(copies.windows(2).any(|w| w[0] != w[1])),
            Err(_) => unreadable += 1,
        }
    }
    report.claim(
        "every session is identical on every replica",
        differ == 0 && unreadable == 0,
        format!("{differ} of {SESSIONS} differ, {unreadable} unreadable"),
    );
    shut_down(&servers).await;
    Ok(vec![report])
}
