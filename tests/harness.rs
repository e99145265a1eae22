//! Proves that the container harness (`tests/support`) injects the faults it
//! names, as a `RedisReplica` sees them: SIGKILL loses the data and changes
//! the epoch; a paused node answers nothing (a timeout) and recovers with its
//! data; a disconnected node is unreachable and recovers with its data;
//! `restart_with_data` keeps what was saved and starts a new epoch; a slow
//! replica is slow. (`stop`/`start`/`restart_empty` are proved in
//! `conformance.rs`.)

mod support;

use std::time::{Duration, Instant};

use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::{Epoch, MergeMode, Replica};
use quorum_sessions::testing::{live_record, wall_clock_ms};
use quorum_sessions::ReplicaError;

/// Retries while fred reconnects.
async fn ping_until_ok(replica: &RedisReplica) -> Epoch {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match replica.ping().await {
            Ok(epoch) => return epoch,
            Err(error) if Instant::now() < deadline && error.is_health_failure() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("replica did not come back: {error}"),
        }
    }
}

async fn write(replica: &RedisReplica, key: &str) {
    let now = wall_clock_ms();
    replica
        .merge(key, &live_record(now), MergeMode::Upsert, now)
        .await
        .expect("merge");
}

async fn holds(replica: &RedisReplica, key: &str) -> bool {
    replica.read(key).await.expect("read").record.is_some()
}

#[tokio::test]
async fn kill_loses_the_data_and_the_epoch() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = node.replica().await;
    write(&replica, "h:{kill}").await;
    let before = replica.ping().await.expect("ping");
    node.kill().await;
    let started = Instant::now();
    let down = replica.ping().await;
    assert!(
        matches!(&down, Err(error) if error.is_health_failure()),
        "a killed node is a health failure: {down:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    node.start().await;
    let after = ping_until_ok(&replica).await;
    assert_ne!(after.id, before.id);
    assert!(!holds(&replica, "h:{kill}").await);
}

#[tokio::test]
async fn a_paused_node_times_out_then_recovers_with_its_data() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = node.replica().await;
    write(&replica, "h:{pause}").await;
    let before = replica.ping().await.expect("ping");
    node.pause().await;
    let started = Instant::now();
    let hung = replica.ping().await;
    assert!(
        matches!(hung, Err(ReplicaError::Timeout { .. })),
        "{hung:?}"
    );
    assert!(started.elapsed() < replica.request_timeout() * 3);
    node.unpause().await;
    assert_eq!(ping_until_ok(&replica).await, before);
    assert!(holds(&replica, "h:{pause}").await);
}

#[tokio::test]
async fn a_disconnected_node_is_unreachable_then_recovers_with_its_data() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = node.replica().await;
    write(&replica, "h:{net}").await;
    let before = replica.ping().await.expect("ping");
    node.disconnect().await;
    let cut = replica.ping().await;
    assert!(
        matches!(&cut, Err(error) if error.is_health_failure()),
        "{cut:?}"
    );
    node.reconnect().await;
    assert_eq!(ping_until_ok(&replica).await, before);
    assert!(holds(&replica, "h:{net}").await);
}

#[tokio::test]
async fn restart_with_data_keeps_the_saved_records_under_a_new_epoch() {
    let nodes = support::RedisNodes::start(1).await;
    let node = nodes.node(0);
    let replica = node.replica().await;
    write(&replica, "h:{saved}").await;
    let before = replica.ping().await.expect("ping");
    node.restart_with_data().await;
    let after = ping_until_ok(&replica).await;
    assert_ne!(after.id, before.id, "a reloaded keyspace is a new epoch");
    assert!(holds(&replica, "h:{saved}").await);
}

#[tokio::test]
async fn a_slow_replica_answers_late() {
    let nodes = support::RedisNodes::start(1).await;
    let (slow, handle) = nodes.node(0).slow_replica(Duration::from_millis(200)).await;
    let started = Instant::now();
    slow.ping().await.expect("ping");
    assert!(started.elapsed() >= Duration::from_millis(200));
    handle.heal();
    let started = Instant::now();
    slow.ping().await.expect("ping");
    assert!(started.elapsed() < Duration::from_millis(200));
}
