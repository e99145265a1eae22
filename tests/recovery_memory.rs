//! Recovery on in-memory replicas (paused tokio time): hinted handoff brings
//! a replica that missed writes level; anti-entropy refills a wiped replica
//! and marks it complete; a replica restored from an old snapshot never
//! brings deleted records back; a hint queue overflow is counted and
//! anti-entropy still converges; shutdown stops a pass and releases its
//! lease. The same scenarios on real Redis are in
//! `tests/recovery.rs`.

use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::replica::faulty::{FaultHandle, FaultyReplica};
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};

type Node = Arc<FaultyReplica<InMemoryReplica>>;

async fn cluster(config: ClusterConfig) -> (Coordinator, Vec<Node>, Vec<FaultHandle>) {
    let (nodes, handles): (Vec<Node>, Vec<FaultHandle>) = (0..3)
        .map(|i| {
            let (node, handle) = FaultyReplica::new(InMemoryReplica::new(format!("r{i}")), i);
            (Arc::new(node), handle)
        })
        .unzip();
    let replicas: Vec<Arc<dyn Replica>> = nodes
        .iter()
        .map(|n| n.clone() as Arc<dyn Replica>)
        .collect();
    let coordinator = Coordinator::connect(config, replicas).await.unwrap();
    (coordinator, nodes, handles)
}

fn manual() -> ClusterConfig {
    let mut config = ClusterConfig {
        request_timeout: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    config.anti_entropy.on_rejoin = false; // passes only when the test asks
    config
}

fn key(i: usize) -> String {
    format!("s:{{m{i}}}")
}

async fn write_many(c: &Coordinator, count: usize, field: &str) {
    for i in 0..count {
        let now = c.now_ms();
        let mutation = Mutation::update(now + 60_000, now + 3_600_000).set(field, i.to_string());
        c.write(&key(i), mutation).await.unwrap();
    }
}

fn assert_identical(nodes: &[Node]) {
    let reference = nodes[0].inner().snapshot();
    assert!(!reference.is_empty());
    for node in &nodes[1..] {
        assert_eq!(
            node.inner().snapshot(),
            reference,
            "{node:?} differs from replica 0"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn hinted_handoff_replays_every_missed_write() {
    let (c, nodes, handles) = cluster(manual()).await;
    handles[2].down();
    write_many(&c, 200, "a").await;
    assert!(nodes[2].inner().is_empty(), "replica 2 missed everything");
    assert!(c.stats().hints_queued >= 200);
    handles[2].heal();
    // Down replicas are probed, then hints replayed at the configured rate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.stats().hints_pending, 0, "{:?}", c.stats());
    assert_identical(&nodes);
}

#[tokio::test(start_paused = true)]
async fn anti_entropy_refills_a_wiped_replica_and_marks_it_complete() {
    let (c, nodes, handles) = cluster(manual()).await;
    write_many(&c, 500, "a").await;
    handles[1].wipe().await.unwrap();
    write_many(&c, 10, "b").await; // the coordinator sees the new epoch
    assert!(!c.replica_states()[1].readable, "write-only until refilled");
    let report = c.anti_entropy().await.expect("no pass was running");
    assert_eq!(report.marked_complete, vec!["r1".to_owned()]);
    assert!(report.stats.records_sent >= 490, "{report:?}");
    assert!(c.replica_states()[1].readable);
    assert_identical(&nodes);
}

#[tokio::test(start_paused = true)]
async fn a_replica_restored_from_an_old_snapshot_never_brings_deletes_back() {
    let (c, nodes, _handles) = cluster(manual()).await;
    write_many(&c, 100, "a").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let old = nodes[2].inner().snapshot();
    for i in (0..100).step_by(2) {
        let cap = c.now_ms() + 3_600_000;
        c.write(&key(i), Mutation::delete(cap)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    nodes[2].inner().restore(old); // back from the snapshot: deleted sessions live there
    assert!(!nodes[2].inner().get(&key(0)).unwrap().is_tombstone());
    for i in (0..100).step_by(2) {
        assert_eq!(
            c.read(&key(i)).await.unwrap(),
            None,
            "a deleted session reads as deleted"
        );
    }
    c.anti_entropy().await.unwrap();
    for i in (0..100).step_by(2) {
        for node in &nodes {
            assert!(
                node.inner().get(&key(i)).unwrap().is_tombstone(),
                "{node:?} holds the tombstone"
            );
        }
    }
    assert_identical(&nodes);
}

#[tokio::test(start_paused = true)]
async fn a_hint_queue_overflow_is_counted_and_anti_entropy_still_converges() {
    let mut config = manual();
    config.hints.entries_max = 10;
    let (c, nodes, handles) = cluster(config).await;
    handles[0].down();
    write_many(&c, 100, "a").await;
    let stats = c.stats();
    assert!(stats.hints_dropped >= 90, "{stats:?}");
    assert!(c.replica_states()[0].needs_anti_entropy);
    handles[0].heal();
    tokio::time::sleep(Duration::from_secs(3)).await; // probe + replay the 10 kept hints
    assert!(
        nodes[0].inner().len() < 100,
        "hints alone cannot bring it level"
    );
    c.anti_entropy().await.unwrap();
    assert!(!c.replica_states()[0].needs_anti_entropy);
    assert_identical(&nodes);
}

#[tokio::test(start_paused = true)]
async fn a_rejoin_starts_a_pass_by_itself() {
    let (c, nodes, handles) = cluster(ClusterConfig::default()).await;
    write_many(&c, 50, "a").await;
    handles[2].wipe().await.unwrap();
    write_many(&c, 5, "b").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.stats().anti_entropy_passes >= 1);
    assert!(
        c.replica_states()[2].readable,
        "refilled and complete again"
    );
    assert_identical(&nodes);
}

#[tokio::test(start_paused = true)]
async fn two_wiped_replicas_stay_unavailable_without_spinning_until_the_operator_accepts_the_loss()
{
    let (c, _nodes, handles) = cluster(ClusterConfig::default()).await;
    write_many(&c, 20, "a").await;
    handles[0].wipe().await.unwrap();
    handles[1].wipe().await.unwrap();
    // A field update cannot be ordered with one complete replica of three
    // (it needs N - W + 1 = 2): it fails, while a touch is acknowledged.
    let now = c.now_ms();
    let update = Mutation::update(now + 60_000, now + 3_600_000).set("b", "1");
    assert!(matches!(
        c.write(&key(0), update).await,
        Err(quorum_sessions::Error::QuorumNotReached {
            needed: 2,
            acked: 1,
            ..
        })
    ));
    for i in 0..2 {
        let touch = Mutation::update(now + 60_000, now + 3_600_000);
        c.write(&key(i), touch).await.unwrap(); // the coordinator sees both new epochs
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let passes = c.stats().anti_entropy_passes;
    assert!(
        passes <= 4,
        "passes retried with a pause, not every tick: {passes}"
    );
    match c.read("s:{never}").await {
        Err(
            ref error @ quorum_sessions::Error::Unavailable {
                ref not_refilled,
                operator_needed,
                ..
            },
        ) => {
            // The error says what happened and what to do, not only counts.
            assert_eq!(not_refilled.len(), 2, "{error}");
            assert!(operator_needed, "{error}");
            let message = error.to_string();
            assert!(message.contains("lost data"), "{message}");
            assert!(message.contains("accept_data_loss"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(c.accept_data_loss(0).await.unwrap());
    assert_eq!(
        c.read("s:{never}").await.unwrap(),
        None,
        "misses count again"
    );
}

/// One pass at a time across app servers: while another owner (another
/// app server's coordinator) holds the anti-entropy lease on a majority of
/// the replicas, a pass does not run and is counted as refused; with the
/// lease held on a minority only, or released, or expired, it runs; and a
/// pass gives the lease back when it ends.
#[tokio::test(start_paused = true)]
async fn one_anti_entropy_pass_at_a_time_across_app_servers() {
    let (c, nodes, _handles) = cluster(manual()).await;
    write_many(&c, 20, "a").await;
    let other = 0x5eed;
    let ttl = Duration::from_secs(30);
    for node in &nodes[..2] {
        assert!(node.acquire_lease(other, ttl).await.unwrap());
    }
    assert!(
        c.anti_entropy().await.is_none(),
        "the lease is held elsewhere"
    );
    assert_eq!(c.stats().anti_entropy_lease_refused, 1);
    assert_eq!(c.stats().anti_entropy_passes, 0);
    // The refused attempt gave back what it was granted: the other owner
    // can still take the third replica.
    assert!(nodes[2].acquire_lease(other, ttl).await.unwrap());
    nodes[2].release_lease(other).await.unwrap();

    nodes[1].release_lease(other).await.unwrap();
    let report = c
        .anti_entropy()
        .await
        .expect("a majority is free: the pass runs");
    assert!(report.stats.keys_compared >= 20);
    assert!(
        nodes[1].acquire_lease(other, ttl).await.unwrap(),
        "the pass released the lease"
    );

    // The other owner holds a majority again, then stops without releasing:
    // its lease expires.
    assert!(nodes[2].acquire_lease(other, ttl).await.unwrap());
    assert!(c.anti_entropy().await.is_none());
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert!(c.anti_entropy().await.is_some(), "an expired lease is free");
    assert_eq!(c.stats().anti_entropy_lease_refused, 2);
    assert_eq!(c.stats().anti_entropy_passes, 2);
}

/// Found by the simulator once it ran the production coordinator (crash
/// faults started far less often than drawn, because a restarted replica
/// stayed write-only until the quiesce phase): with a schedule configured,
/// the scheduled branch returned before the rejoin check, so a replica that
/// came back in a new epoch waited up to a whole `interval` to be refilled.
/// A rejoin starts a pass at the next tick whatever the schedule.
#[tokio::test(start_paused = true)]
async fn a_rejoin_is_refilled_at_once_even_with_a_schedule() {
    let mut config = ClusterConfig {
        request_timeout: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    config.anti_entropy.on_rejoin = true;
    config.anti_entropy.interval = Some(Duration::from_secs(600));
    let (c, nodes, handles) = cluster(config).await;
    write_many(&c, 50, "a").await;
    // The first scheduled pass runs at the first tick; let it finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    handles[1].wipe().await.unwrap();
    write_many(&c, 50, "b").await; // replies show the new epoch
    assert!(
        !c.replica_states()[1].readable,
        "the wiped replica is write-only"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        c.replica_states()[1].readable,
        "refilled within seconds, not after the 600 s schedule: {:?}",
        c.replica_states()[1]
    );
    assert_identical(&nodes);
}

/// `Coordinator::shutdown` stops a pass under way at its next page: the
/// pass ends without marking anything complete and gives the lease back,
/// so another app server's pass can run at once.
#[tokio::test(start_paused = true)]
async fn shutdown_stops_an_anti_entropy_pass_and_releases_its_lease() {
    let mut config = manual();
    config.anti_entropy.scan_batch = 10;
    config.anti_entropy.pause_between_pages = Duration::from_millis(50);
    let (c, nodes, handles) = cluster(config).await;
    write_many(&c, 200, "a").await;
    handles[1].wipe().await.unwrap();
    write_many(&c, 10, "b").await; // the coordinator sees the new epoch
    let pass = tokio::spawn({
        let c = c.clone();
        async move { c.anti_entropy().await }
    });
    tokio::time::sleep(Duration::from_millis(120)).await; // a few pages in

    let report = c.shutdown(Duration::from_secs(1)).await;
    assert!(!report.anti_entropy_running, "{report:?}");
    assert!(pass.await.unwrap().is_none(), "the pass stopped early");
    assert!(
        !c.replica_states()[1].readable,
        "a stopped pass refills nothing"
    );
    let (other, ttl) = (7, Duration::from_secs(10));
    for node in &nodes {
        assert!(
            node.acquire_lease(other, ttl).await.unwrap(),
            "lease released"
        );
    }
    assert!(c.anti_entropy().await.is_none(), "no pass after shutdown");
}
