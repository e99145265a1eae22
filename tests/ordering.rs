//! Acknowledgement order and stamp order agree, on real Redis (bug B8).
//!
//! Three Redis containers, N=3 W=2 R=2, no faults. App server A's wall
//! clock runs ahead of B's (by 100 ms, then by 2 s: both are inside
//! `max_clock_skew`). A creates a session with `f = "0"` and it is
//! acknowledged; then B — which never read the session, so its clock has
//! not seen A's stamps — writes `f = "1"` blind, and it is acknowledged.
//! Every later read, through A or B, must return `"1"`: before the fix, B's
//! write was stamped below A's and last-writer-wins kept `"0"` for good.

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use quorum_sessions::coordinator::system_clock;
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};
use support::RedisNodes;

/// An app server whose wall clock is the system clock plus `offset_ms`.
async fn app_server(nodes: &RedisNodes, offset_ms: i64) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for replica in nodes.replicas().await {
        replicas.push(Arc::new(replica));
    }
    let config = ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        ..ClusterConfig::default()
    };
    let system = system_clock();
    let offset = Arc::new(AtomicI64::new(offset_ms));
    Coordinator::builder(config, replicas)
        .wall_clock(Arc::new(move || {
            (system() as i64 + offset.load(Ordering::Relaxed)) as u64
        }))
        .connect()
        .await
        .expect("valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_write_from_a_slower_clock_wins_over_the_earlier_acknowledged_one() {
    let nodes = RedisNodes::start(3).await;
    for (case, ahead_ms) in [(0, 100), (1, 2_000)] {
        let fast = app_server(&nodes, ahead_ms).await;
        let slow = app_server(&nodes, 0).await;
        let key = format!("s:{{ordering-{case}}}");
        let now = slow.now_ms();
        let (expiry, cap) = (now + 600_000, now + 3_600_000);
        let first = fast
            .write(&key, Mutation::create(expiry, cap).set("f", "0"))
            .await
            .expect("the create is acknowledged");
        let second = slow
            .write(&key, Mutation::update(expiry, cap).set("f", "1"))
            .await
            .expect("the blind update is acknowledged");
        println!(
            "clock ahead {ahead_ms} ms: create stamped {}, update acknowledged at {} ({} re-stamp(s))",
            first.stamp,
            second.stamp,
            slow.stats().restamped_writes
        );
        assert!(
            second.stamp > first.stamp,
            "the later acknowledged write carries the larger stamp"
        );
        for reader in [&fast, &slow] {
            let record = reader.read(&key).await.unwrap().expect("present");
            assert_eq!(
                record.get("f"),
                Some(&b"1"[..]),
                "the write acknowledged last is the one read (clock ahead {ahead_ms} ms)"
            );
        }
    }
}
