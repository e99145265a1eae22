//! `Coordinator::shutdown` on three real Redis servers (testcontainers).
//! What it proves, each point asserted:
//!
//! 1. With a node cut off, the writes acknowledged by the two others leave
//!    hints for it; a shutdown while it is still away returns, reports
//!    those hints as left (`hints_left`), and every later read and write is
//!    refused with `Error::ShuttingDown` (nothing half-done).
//! 2. With the node back (Up again for the app server), a shutdown reports
//!    nothing left, and the node then holds every acknowledged write: the
//!    hints were handed over before the server stopped.
//! 3. An anti-entropy pass under way stops at shutdown and gives its lease
//!    back: another app server runs a pass at once, although the lease
//!    would otherwise hold for a minute.
//!
//! Needs Docker (see `tests/support`).
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::recovery::PassStats;
use quorum_sessions::replica::Replica;
use quorum_sessions::{AntiEntropyOptions, ClusterConfig, Coordinator, Error, Health, Mutation};
use support::RedisNodes;
use tokio::time::Instant;

const SESSIONS: usize = 20;
/// How long a node may take to be seen Down or Up again.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

fn key(session: usize) -> String {
    format!("s:{{shutdown-{session}}}")
}

async fn app_server(nodes: &RedisNodes, config: ClusterConfig) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for node in nodes.nodes() {
        replicas.push(Arc::new(node.replica().await));
    }
    Coordinator::connect(config, replicas).await.unwrap()
}

async fn write_all(server: &Coordinator, tag: &str) {
    for session in 0..SESSIONS {
        let now = server.now_ms();
        server
            .write(
                &key(session),
                Mutation::update(now + 600_000, now + 3_600_000).set(tag, "1"),
            )
            .await
            .expect("two of three nodes acknowledge");
    }
}

async fn wait_health(server: &Coordinator, index: usize, health: Health) {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    while server.replica_states()[index].health != health {
        assert!(Instant::now() < deadline, "node {index} never {health:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_hints_hands_them_over_and_releases_the_lease() {
    let nodes = RedisNodes::start(3).await;
    let away = nodes.node(2);

    // 1. Node 2 cut off: hints queue up; shutdown reports them and refuses.
    let first = app_server(&nodes, support::fault_test_config()).await;
    away.disconnect().await;
    write_all(&first, "a").await;
    wait_health(&first, 2, Health::Down).await;
    write_all(&first, "b").await; // skipped: straight to hints
    let pending = first.stats().hints_pending;
    assert!(pending >= 1, "hints queued for the node away");
    let report = first.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.hints_left, pending, "{report:?}");
    assert_eq!(report.background_writes_left, 0, "{report:?}");
    assert!(matches!(
        first.read(&key(0)).await,
        Err(Error::ShuttingDown)
    ));
    let now = first.now_ms();
    let refused = first
        .write(&key(0), Mutation::update(now + 1, now + 2).set("c", "1"))
        .await;
    assert!(matches!(refused, Err(Error::ShuttingDown)), "{refused:?}");

    // 2. A second app server writes while node 2 is away, then sees it back:
    // its shutdown leaves nothing, and node 2 holds its writes.
    let second = app_server(&nodes, support::fault_test_config()).await;
    write_all(&second, "d").await;
    // The merges to node 2 fail after the writes were acknowledged.
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    while second.stats().hints_pending < SESSIONS as u64 {
        assert!(Instant::now() < deadline, "hints queued for the node away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    away.reconnect().await;
    wait_health(&second, 2, Health::Up).await;
    let report = second.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let direct = away.replica().await;
    for session in 0..SESSIONS {
        let record = direct.read(&key(session)).await.unwrap().record;
        assert!(
            record.is_some_and(|r| r.get("d") == Some(b"1".as_slice())),
            "node 2 holds the write made while it was away (session {session})"
        );
    }

    // 3. A pass under way stops at shutdown and releases its lease.
    let mut slow = support::fault_test_config();
    slow.anti_entropy.scan_batch = 2;
    slow.anti_entropy.pause_between_pages = Duration::from_millis(300);
    slow.anti_entropy.lease_ttl = Duration::from_secs(60);
    slow.anti_entropy.on_rejoin = false;
    slow.anti_entropy.interval = None;
    let third = app_server(&nodes, slow.clone()).await;
    let (page_done, mut first_page) = tokio::sync::mpsc::unbounded_channel();
    let options = AntiEntropyOptions {
        progress: Some(Arc::new(move |_: &PassStats| {
            let _ = page_done.send(());
        })),
        ..AntiEntropyOptions::default()
    };
    let pass = {
        let third = third.clone();
        tokio::spawn(async move { third.anti_entropy_with(options).await })
    };
    // Under way (a page was compared): another server cannot take the lease.
    first_page.recv().await.expect("the pass scanned a page");
    let other = app_server(&nodes, slow).await;
    assert!(other.anti_entropy().await.is_none(), "the lease is held");
    let report = third.shutdown(Duration::from_secs(10)).await;
    assert!(!report.anti_entropy_running, "{report:?}");
    assert!(pass.await.unwrap().is_none(), "the pass stopped unfinished");
    assert!(
        other.anti_entropy().await.is_some(),
        "the lease was given back: another server's pass runs at once"
    );
}
