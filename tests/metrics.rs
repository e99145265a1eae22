//! The metrics (feature `metrics`) move with what the coordinator does.
//!
//! Proves, on in-memory replicas under tokio's paused clock with
//! `metrics-util`'s debugging recorder installed for this thread only: an
//! acknowledged write moves the operation counter and the latency
//! histograms; a replica going down moves its failure, health-transition
//! and hint metrics, and coming back moves them again (hints replayed,
//! none pending); a replica restarting empty moves the epoch and
//! anti-entropy metrics; an update from a server whose clock is behind
//! moves the re-stamp counter; no label holds a key.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use quorum_sessions::replica::faulty::FaultyReplica;
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator, Mutation, ReadOrder};

type Snapshot = Vec<(String, Vec<(String, String)>, DebugValue)>;

/// What moved since the last snapshot (the debugging recorder drains its
/// counters and gauges when it reads them).
fn snapshot(recorder: &DebuggingRecorder) -> Snapshot {
    let snapshotter = recorder.snapshotter();
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

/// The value of the metric `name` with exactly these labels.
fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(n, l, value)| {
        let same = l.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v));
        (n == name && same).then_some(value)
    })
}

/// Names are ours, labels are the documented ones, and no value is a key.
fn assert_labels_hold_no_key(snapshot: &Snapshot) {
    for (name, labels, _) in snapshot {
        assert!(name.starts_with("quorum_sessions_"), "{name}");
        for (key, value) in labels {
            assert!(
                ["replica", "op", "outcome", "to"].contains(&key.as_str()),
                "{key}"
            );
            assert!(
                !value.contains("s:"),
                "a key in a label: {name} {key}={value}"
            );
        }
    }
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(count)) => *count,
        None => 0,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

#[test]
fn an_operation_and_a_replica_going_down_and_back_move_the_named_metrics() {
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // The recorder is this thread's; the runtime runs every task here.
    metrics::with_local_recorder(&recorder, || runtime.block_on(scenario(&recorder)));
}

async fn scenario(recorder: &DebuggingRecorder) {
    let (nodes, handles): (Vec<_>, Vec<_>) = (0..3)
        .map(|i| {
            let (node, handle) =
                FaultyReplica::new(InMemoryReplica::new(format!("r{i}")), i as u64);
            (Arc::new(node) as Arc<dyn Replica>, handle)
        })
        .unzip();
    let config = ClusterConfig {
        request_timeout: Duration::from_millis(200),
        hedge_delay: None,
        read_order: ReadOrder::Configured,
        ..ClusterConfig::default()
    };
    let c = Coordinator::connect(config, nodes).await.unwrap();
    let now = c.now_ms();
    let create = || Mutation::create(now + 60_000, now + 3_600_000).set("user", "alice");

    c.write("s:{m0}", create()).await.unwrap();
    let s = snapshot(recorder);
    assert_labels_hold_no_key(&s);
    let ops = "quorum_sessions_operations_total";
    assert_eq!(
        counter(&s, ops, &[("op", "write"), ("outcome", "acknowledged")]),
        1
    );
    assert!(matches!(
        value(&s, "quorum_sessions_operation_duration_seconds", &[("op", "write")]),
        Some(DebugValue::Histogram(samples)) if samples.len() == 1
    ));
    assert!(matches!(
        value(&s, "quorum_sessions_replica_request_duration_seconds", &[("replica", "r0")]),
        Some(DebugValue::Histogram(samples)) if !samples.is_empty()
    ));

    // r2 goes down: 3 failed requests mark it Down, each leaves a hint.
    handles[2].down();
    for i in 1..=3 {
        c.write(&format!("s:{{m{i}}}"), create()).await.unwrap();
    }
    c.read("s:{m1}").await.unwrap().expect("found");
    let s = snapshot(recorder);
    assert_labels_hold_no_key(&s);
    let r2 = [("replica", "r2")];
    assert_eq!(
        counter(&s, ops, &[("op", "write"), ("outcome", "acknowledged")]),
        3
    );
    assert_eq!(counter(&s, ops, &[("op", "read"), ("outcome", "found")]), 1);
    // At least the writes' (a hint replay on the background tick may add one).
    assert!(counter(&s, "quorum_sessions_replica_failures_total", &r2) >= 3);
    let transitions = "quorum_sessions_replica_health_transitions_total";
    assert_eq!(
        counter(&s, transitions, &[("replica", "r2"), ("to", "down")]),
        1
    );
    assert_eq!(counter(&s, "quorum_sessions_hints_queued_total", &r2), 3);
    assert_eq!(
        value(&s, "quorum_sessions_hints_pending", &r2),
        Some(&DebugValue::Gauge(3.0.into()))
    );

    // Back: the probe finds it, the hints are replayed.
    handles[2].heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = snapshot(recorder);
    assert_labels_hold_no_key(&s);
    assert_eq!(
        counter(&s, transitions, &[("replica", "r2"), ("to", "up")]),
        1
    );
    assert_eq!(counter(&s, "quorum_sessions_hints_replayed_total", &r2), 3);
    assert_eq!(
        value(&s, "quorum_sessions_hints_pending", &r2),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    // r1 restarts empty: a new epoch, then a pass refills it.
    let nodes: Vec<_> = c.replicas().to_vec();
    nodes[1].wipe().await.unwrap();
    c.write("s:{m4}", create()).await.unwrap();
    c.anti_entropy().await.expect("no other pass");
    let s = snapshot(recorder);
    let r1 = [("replica", "r1")];
    assert_eq!(counter(&s, "quorum_sessions_epoch_changes_total", &r1), 1);
    assert_eq!(
        counter(&s, "quorum_sessions_anti_entropy_passes_total", &[]),
        1
    );
    assert!(counter(&s, "quorum_sessions_anti_entropy_keys_compared_total", &[]) >= 5);
    assert!(counter(&s, "quorum_sessions_anti_entropy_keys_repaired_total", &[]) >= 4);
    assert_labels_hold_no_key(&s);

    // A server whose clock is a second behind updates a field of a record
    // the first one wrote: its stamp is below what the ackers hold, so the
    // update is stamped again, and counted.
    let behind = Coordinator::builder(c.config().clone(), c.replicas().to_vec())
        .wall_clock(Arc::new(|| {
            quorum_sessions::coordinator::system_clock()() - 1_000
        }))
        .connect()
        .await
        .unwrap();
    let now = c.now_ms();
    c.write("s:{m5}", create()).await.unwrap();
    let update = Mutation::update(now + 60_000, now + 3_600_000).set("theme", "dark");
    behind.write("s:{m5}", update).await.unwrap();
    let s = snapshot(recorder);
    assert_eq!(
        counter(&s, "quorum_sessions_restamped_writes_total", &[]),
        1
    );
    assert_labels_hold_no_key(&s);
}
