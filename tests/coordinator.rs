//! Coordinator behaviour on in-memory replicas wrapped in `FaultyReplica`,
//! under tokio's paused clock (timeouts and delays are virtual, so the
//! latency assertions are exact and not at the mercy of a noisy machine).
//!
//! Proves: writes survive one replica down and fail with a typed error within
//! the timeout when W cannot be reached; a hung replica does not slow writes
//! past the W-th fastest replica; hedged reads; read-repair; wiped replicas
//! never make a record read as "not found"; deletes never come back; two
//! coordinators' concurrent updates of different fields both survive; bad
//! input is refused before any replica is contacted; readiness follows
//! replicas going down and coming back; shutdown waits for the writes past W
//! and reports what a hung replica left.

use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::coordinator::{NotReadyReason, Readiness};
use quorum_sessions::replica::faulty::{FaultHandle, FaultyReplica};
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::Health;
use quorum_sessions::{ClusterConfig, Coordinator, Error, InvalidInput, Mutation, ReadOrder};
use tokio::time::Instant;

type Node = Arc<FaultyReplica<InMemoryReplica>>;

struct Cluster {
    coordinator: Coordinator,
    handles: Vec<FaultHandle>,
    nodes: Vec<Node>,
}

fn nodes(n: usize) -> (Vec<Node>, Vec<FaultHandle>) {
    (0..n)
        .map(|i| {
            let (node, handle) =
                FaultyReplica::new(InMemoryReplica::new(format!("r{i}")), i as u64);
            (Arc::new(node), handle)
        })
        .unzip()
}

fn as_replicas(nodes: &[Node]) -> Vec<Arc<dyn Replica>> {
    nodes
        .iter()
        .map(|n| n.clone() as Arc<dyn Replica>)
        .collect()
}

fn config(w: usize, r: usize) -> ClusterConfig {
    ClusterConfig {
        write_quorum: w,
        read_quorum: r,
        request_timeout: Duration::from_millis(200),
        hedge_delay: None,
        read_order: ReadOrder::Configured,
        ..ClusterConfig::default()
    }
}

async fn cluster(n: usize, config: ClusterConfig) -> Cluster {
    let (nodes, handles) = nodes(n);
    let coordinator = Coordinator::connect(config, as_replicas(&nodes))
        .await
        .unwrap();
    assert!(
        coordinator.replica_states().iter().all(|s| s.readable),
        "fresh cluster bootstrapped"
    );
    Cluster {
        coordinator,
        handles,
        nodes,
    }
}

fn create(c: &Coordinator) -> Mutation {
    let now = c.now_ms();
    Mutation::create(now + 60_000, now + 3_600_000)
}

fn update(c: &Coordinator) -> Mutation {
    let now = c.now_ms();
    Mutation::update(now + 60_000, now + 3_600_000)
}

#[tokio::test(start_paused = true)]
async fn one_of_three_down_every_write_succeeds_two_down_fails_within_the_timeout() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    cluster.handles[2].down();
    for i in 0..50 {
        let key = format!("s:{{k{i}}}");
        let ack = c
            .write(&key, create(c).set("user", "u"))
            .await
            .expect("1 of 3 down: W=2 holds");
        assert!(ack.acked >= 2);
    }
    cluster.handles[1].hang();
    let started = Instant::now();
    let err = c
        .write("s:{k0}", update(c).set("x", "1"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match err {
        Error::QuorumNotReached {
            needed,
            acked,
            failures,
        } => {
            assert_eq!((needed, acked), (2, 1));
            assert_eq!(failures.len(), 2, "each failed replica's error is kept");
        }
        other => panic!("expected QuorumNotReached, got {other:?}"),
    }
    assert!(
        elapsed <= Duration::from_millis(210),
        "failed after {elapsed:?}, timeout is 200 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_replica_does_not_slow_writes_past_the_w_th_fastest() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    cluster.handles[0].hang();
    cluster.handles[1].delay(Duration::from_millis(10));
    cluster.handles[2].delay(Duration::from_millis(30));
    let started = Instant::now();
    c.write("s:{slow}", create(c).set("a", "1")).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(30),
        "answered before the 2nd ack: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(35),
        "waited on the hung replica: {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hedged_read_is_answered_by_the_next_replica_when_the_first_hangs() {
    let mut cfg = config(2, 1);
    cfg.hedge_delay = Some(Duration::from_millis(20));
    let cluster = cluster(3, cfg).await;
    let c = &cluster.coordinator;
    c.write("s:{h}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[0].hang();
    let started = Instant::now();
    let record = c
        .read("s:{h}")
        .await
        .unwrap()
        .expect("found through the hedge");
    assert_eq!(record.get("a"), Some(&b"1"[..]));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(25),
        "hedge fired late: {elapsed:?}"
    );
}

/// The slowest read of 64 keys in the last of 8 rounds after replica 0
/// turned 30 ms slow, with reads spread over the replicas
/// (`ReadOrder::PerKey`).
async fn slowest_read_with_one_slow_replica(hedge_percentile: Option<f64>) -> Duration {
    let mut cfg = config(2, 1);
    cfg.read_order = ReadOrder::PerKey;
    cfg.hedge_delay = Some(Duration::from_millis(50));
    cfg.hedge_percentile = hedge_percentile;
    let cluster = cluster(3, cfg).await;
    let c = &cluster.coordinator;
    let keys: Vec<String> = (0..64).map(|i| format!("s:{{slow{i}}}")).collect();
    for key in &keys {
        c.write(key, create(c).set("a", "1")).await.unwrap();
    }
    // Every replica learns its latencies (a few µs here: 1 ms after the
    // floor).
    for _ in 0..3 {
        for key in &keys {
            c.read(key).await.unwrap().expect("written");
        }
    }
    cluster.handles[0].delay(Duration::from_millis(30));
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        slowest = Duration::ZERO;
        for key in &keys {
            let started = Instant::now();
            c.read(key).await.unwrap().expect("written");
            slowest = slowest.max(started.elapsed());
        }
    }
    slowest
}

/// A replica that turns slow is hedged after the fast replicas' p99 (here
/// the 1 ms floor), not after the fixed cap nor after its own p99 once its
/// window is full of slow answers: no read waits for it. With the fixed
/// delay (50 ms) the keys it leads wait its 30 ms, which shows the reads do
/// reach it first.
#[tokio::test(start_paused = true)]
async fn the_hedge_delay_follows_the_fast_replicas_latencies() {
    let adaptive = slowest_read_with_one_slow_replica(Some(0.99)).await;
    assert!(
        adaptive <= Duration::from_millis(2),
        "hedged late: {adaptive:?}"
    );
    let fixed = slowest_read_with_one_slow_replica(None).await;
    assert!(fixed >= Duration::from_millis(30), "{fixed:?}");
}

#[tokio::test(start_paused = true)]
async fn read_repair_makes_a_stale_replica_equal_to_the_merged_record() {
    let cluster = cluster(3, config(2, 3)).await;
    let c = &cluster.coordinator;
    c.write("s:{r}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[2].down();
    c.write("s:{r}", update(c).set("b", "2")).await.unwrap();
    cluster.handles[2].heal();
    let stale = cluster.nodes[2].inner().get("s:{r}").unwrap();
    assert_eq!(stale.get("b"), None, "replica 2 missed the update");
    let merged = c.read("s:{r}").await.unwrap().unwrap();
    assert_eq!(merged.get("b"), Some(&b"2"[..]));
    // Two of the three answers held the record (W): the read answered at
    // once, and the stale replica's repair finishes in the background.
    tokio::time::sleep(Duration::from_millis(1)).await;
    for node in &cluster.nodes {
        assert_eq!(
            node.inner().get("s:{r}").as_ref(),
            Some(&merged),
            "{node:?} repaired"
        );
    }
    assert!(c.stats().read_repairs >= 1);
}

/// A write that reached one replica and failed, then read: the read must
/// not return it before W replicas are known to hold it (B4), or a later
/// read asking the other replicas would not see it.
#[tokio::test(start_paused = true)]
async fn blocking_read_repair_writes_a_value_seen_once_back_to_w_before_answering() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    c.write("s:{m}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[1].down();
    cluster.handles[2].down();
    let failed = c.write("s:{m}", update(c).set("b", "2")).await;
    assert!(matches!(failed, Err(Error::QuorumNotReached { .. })));
    cluster.handles[2].heal();
    // Replica 1 answers reads, applies merges, and loses their replies: its
    // repair does not count, so replica 2 (not asked) is written.
    cluster.handles[1].drop_ack();
    let record = c.read("s:{m}").await.unwrap().unwrap();
    assert_eq!(record.get("b"), Some(&b"2"[..]), "replicas 0 and 1 asked");
    let written = cluster.nodes[2].inner().get("s:{m}").unwrap();
    assert_eq!(
        written.get("b"),
        Some(&b"2"[..]),
        "written back before the read answered"
    );
    assert_eq!(c.stats().read_repairs, 2);
    assert_eq!(c.stats().read_repairs_short, 0);
    // A later read that asks replica 2 sees it.
    cluster.handles[0].down();
    cluster.handles[1].heal();
    let later = c.read("s:{m}").await.unwrap().unwrap();
    assert_eq!(later.get("b"), Some(&b"2"[..]));
}

/// When W cannot be reached, the read still answers with what it merged,
/// and counts it.
#[tokio::test(start_paused = true)]
async fn blocking_read_repair_short_of_w_still_answers_and_is_counted() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    c.write("s:{n}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[1].down();
    cluster.handles[2].down();
    assert!(c.write("s:{n}", update(c).set("b", "2")).await.is_err());
    cluster.handles[1].drop_ack();
    let started = Instant::now();
    let record = c.read("s:{n}").await.unwrap().unwrap();
    assert_eq!(record.get("b"), Some(&b"2"[..]));
    assert!(
        started.elapsed() <= Duration::from_millis(200),
        "bounded by request_timeout"
    );
    assert_eq!(c.stats().read_repairs_short, 1);
}

/// A cluster of 4 (W=3, R=2) whose replicas 2 and 3 hang and are seen
/// Down, holding `s:{n}` (written before), probes far apart (so that only
/// read-repair can bring a replica back), hedge delay `hedge`.
async fn two_down_of_four(hedge: Duration) -> Cluster {
    let mut config = ClusterConfig {
        request_timeout: Duration::from_millis(500),
        hedge_delay: Some(hedge),
        hedge_percentile: None,
        ..config(3, 2)
    };
    config.health.probe_interval_min = Duration::from_secs(30);
    config.health.probe_interval_max = Duration::from_secs(60);
    let cluster = cluster(4, config).await;
    let c = &cluster.coordinator;
    c.write("s:{n}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[2].hang();
    cluster.handles[3].hang();
    // Writes fail (W = 3 out of reach) and mark replicas 2 and 3 Down.
    for _ in 0..5 {
        assert!(c.write("s:{m}", create(c).set("a", "1")).await.is_err());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let states = c.replica_states();
    assert!(
        states[2..].iter().all(|s| s.health == Health::Down),
        "replicas 2 and 3 are Down: {states:?}"
    );
    cluster
}

/// A repair that cannot reach W without the replicas this coordinator sees
/// Down tries them (they may be back: `down` in `ReadPlan::repair_plan`),
/// but waits for them two hedge delays at most: replicas that really do not
/// answer must not make every read pay the request timeout (N=4 W=3 R=2,
/// two of them hung: reads answer short of W after two hedge delays).
#[tokio::test(start_paused = true)]
async fn a_repair_waits_for_replicas_seen_down_at_most_two_hedge_delays() {
    let hedge = Duration::from_millis(50);
    let cluster = two_down_of_four(hedge).await;
    let c = &cluster.coordinator;
    for _ in 0..5 {
        let started = Instant::now();
        let record = c.read("s:{n}").await.unwrap().unwrap();
        assert_eq!(record.get("a"), Some(&b"1"[..]));
        let took = started.elapsed();
        assert!(
            took <= 2 * hedge + Duration::from_millis(10),
            "a read waited {took:?} for replicas seen Down (hedge delay {hedge:?})"
        );
    }
    assert_eq!(c.stats().read_repairs_short, 5, "each read answered short");
}

/// Of two replicas seen Down, the one that is back is repaired (and so
/// brought back Up, long before its probe) even though the other, tried
/// first, hangs: the read reaches W instead of answering short.
#[tokio::test(start_paused = true)]
async fn a_down_replica_that_is_back_is_not_held_up_by_one_that_hangs() {
    let hedge = Duration::from_millis(50);
    let cluster = two_down_of_four(hedge).await;
    let c = &cluster.coordinator;
    cluster.handles[3].heal();
    for _ in 0..5 {
        let record = c.read("s:{n}").await.unwrap().unwrap();
        assert_eq!(record.get("a"), Some(&b"1"[..]));
    }
    assert_eq!(
        c.stats().read_repairs_short,
        0,
        "W reached through replica 3"
    );
    let states = c.replica_states();
    assert_eq!(states[3].health, Health::Up, "{states:?}");
    assert_eq!(states[2].health, Health::Down, "{states:?}");
}

#[tokio::test(start_paused = true)]
async fn wiped_replicas_never_make_a_record_read_as_not_found() {
    let cluster = cluster(3, config(2, 1)).await;
    let c = &cluster.coordinator;
    c.write("s:{w}", create(c).set("a", "1")).await.unwrap();
    // A wiped replica first in read order: its miss does not count.
    cluster.handles[0].wipe().await.unwrap();
    let record = c.read("s:{w}").await.unwrap();
    assert!(record.is_some(), "found on the next replica");
    assert!(
        !c.replica_states()[0].readable,
        "the wiped replica is write-only"
    );
    // A record only two replicas hold, both wiped: Unavailable, never None.
    cluster.handles[2].down();
    c.write("s:{only01}", create(c).set("a", "1"))
        .await
        .unwrap();
    cluster.handles[2].heal();
    cluster.handles[0].wipe().await.unwrap();
    cluster.handles[1].wipe().await.unwrap();
    c.read("s:{w}").await.ok(); // lets the coordinator see the new epochs
    match c.read("s:{only01}").await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("two wiped replicas must give Unavailable, got {other:?}"),
    }
    match c.read("s:{never-written}").await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("absence cannot be proven by one complete replica: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_deleted_session_never_comes_back_and_the_stale_replica_gets_the_tombstone() {
    // R=3 so that every read also asks the stale replica.
    let cluster = cluster(3, config(2, 3)).await;
    let c = &cluster.coordinator;
    c.write("s:{d}", create(c).set("user", "u")).await.unwrap();
    cluster.handles[0].down();
    let now = c.now_ms();
    c.write("s:{d}", Mutation::delete(now + 3_600_000))
        .await
        .unwrap();
    cluster.handles[0].heal();
    assert!(
        !cluster.nodes[0]
            .inner()
            .get("s:{d}")
            .unwrap()
            .is_tombstone(),
        "replica 0 is stale"
    );
    for _ in 0..5 {
        assert_eq!(c.read("s:{d}").await.unwrap(), None, "the delete holds");
    }
    tokio::time::sleep(Duration::from_millis(10)).await; // late answers are repaired in the background
    assert!(
        cluster.nodes[0]
            .inner()
            .get("s:{d}")
            .unwrap()
            .is_tombstone(),
        "read-repaired"
    );
    match c.write("s:{d}", update(c).set("late", "touch")).await {
        Err(Error::Gone) => {}
        other => panic!("a write to a deleted session is Gone: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn two_coordinators_updating_different_fields_concurrently_both_survive() {
    let (nodes, _handles) = nodes(3);
    let build = |writer| {
        Coordinator::builder(config(2, 2), as_replicas(&nodes))
            .writer_id(writer)
            .connect()
    };
    let (c1, c2) = (build(1).await.unwrap(), build(2).await.unwrap());
    c1.write("s:{both}", create(&c1).set("init", "1"))
        .await
        .unwrap();
    let writes = (0..50).flat_map(|i| {
        let (c1, c2) = (c1.clone(), c2.clone());
        [
            tokio::spawn(async move {
                c1.write("s:{both}", update(&c1).set(format!("a{i}"), "x"))
                    .await
            }),
            tokio::spawn(async move {
                c2.write("s:{both}", update(&c2).set(format!("b{i}"), "y"))
                    .await
            }),
        ]
    });
    for write in futures::future::join_all(writes).await {
        write.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // background merges finish
    for node in &nodes {
        let record = node.inner().get("s:{both}").unwrap();
        assert_eq!(
            record.values().count(),
            101,
            "{node:?}: every field survives"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_below_quorum_errors_and_may_surface_later() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    cluster.handles[1].down();
    cluster.handles[2].down();
    let err = c
        .write("s:{dynamo}", create(c).set("a", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::QuorumNotReached { acked: 1, .. }),
        "{err:?}"
    );
    cluster.handles[1].heal();
    cluster.handles[2].heal();
    // Documented behaviour: replica 0 applied it, so a later read may return it.
    let surfaced = c.read("s:{dynamo}").await.unwrap();
    assert!(
        surfaced.is_some(),
        "the failed write surfaced, as the docs warn"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_before_any_replica_is_contacted() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    for handle in &cluster.handles {
        handle.hang(); // any contact would take the full timeout
    }
    let started = Instant::now();
    let big = vec![0u8; c.config().limits.max_value_bytes + 1];
    let cases = [
        ("s:{ok}", create(c).set("a", big)),
        ("s:{ok}", create(c).set("", "x")),
        ("", create(c).set("a", "x")),
        ("s:{*}", create(c).set("a", "x")),
        ("s:{ok}", Mutation::update(1, 1).set("a", "x")),
    ];
    for (key, mutation) in cases {
        let err = c.write(key, mutation).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
    assert!(matches!(
        c.read("bad key").await,
        Err(Error::Invalid(InvalidInput::Key(_)))
    ));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no replica was contacted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_corrupt_data_counts_as_failed_and_the_read_goes_on() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    c.write("s:{c}", create(c).set("a", "1")).await.unwrap();
    cluster.handles[0].set(quorum_sessions::replica::faulty::Fault::Corrupt);
    let record = c
        .read("s:{c}")
        .await
        .unwrap()
        .expect("found on the other two");
    assert_eq!(record.get("a"), Some(&b"1"[..]));
}

#[tokio::test(start_paused = true)]
async fn invalid_configuration_names_the_field() {
    let (nodes, _) = nodes(3);
    let err = Coordinator::builder(config(4, 2), as_replicas(&nodes))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "write_quorum");
    let twice = vec![nodes[0].clone() as Arc<dyn Replica>, nodes[0].clone()];
    let err = Coordinator::builder(config(1, 1), twice)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "replicas");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_cluster_proves_absence_and_a_collision_is_refused() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    assert_eq!(c.read("s:{nobody}").await.unwrap(), None);
    c.write("s:{dup}", create(c).set("a", "1")).await.unwrap();
    let err = c
        .write("s:{dup}", create(c).set("a", "2"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Collision), "{err:?}");
    let record = c.read("s:{dup}").await.unwrap().unwrap();
    assert_eq!(
        record.get("a"),
        Some(&b"1"[..]),
        "the first session was not overwritten"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stamp_from_a_clock_far_ahead_is_refused_and_counted() {
    let (nodes, _handles) = nodes(3);
    let ahead: quorum_sessions::coordinator::WallClock = {
        let system = quorum_sessions::coordinator::system_clock();
        Arc::new(move || system() + 3_600_000) // one hour ahead: beyond max_clock_skew
    };
    let fast = Coordinator::builder(config(2, 2), as_replicas(&nodes))
        .wall_clock(ahead)
        .connect()
        .await
        .unwrap();
    let normal = Coordinator::builder(config(2, 2), as_replicas(&nodes))
        .connect()
        .await
        .unwrap();
    fast.write("s:{skew}", create(&fast).set("a", "1"))
        .await
        .unwrap();
    normal.read("s:{skew}").await.unwrap().expect("found");
    assert!(
        normal.stats().clock_skew_rejections >= 1,
        "{:?}",
        normal.stats()
    );
    let ack = normal
        .write("s:{skew}", update(&normal).set("b", "2"))
        .await
        .unwrap();
    assert!(
        ack.stamp.physical_ms < normal.now_ms() + 60_000,
        "the refused stamp did not drag this coordinator's clock into the future"
    );
}

/// Per-call quorums: a write can ask for more than W (every replica), never
/// for less; a read may ask any R in 1..=N. Proves the override is applied
/// (W = N fails with one replica down while the default W succeeds; R = 1
/// answers from one replica while R = 3 cannot with one down) and that
/// out-of-range values are typed errors before any replica is contacted.
#[tokio::test(start_paused = true)]
async fn per_call_quorums_are_applied_and_validated() {
    use quorum_sessions::{ReadOptions, WriteOptions};
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    let ack = c
        .write_with("s:{all}", create(c).set("user", "u"), WriteOptions::all())
        .await
        .expect("all three up");
    assert_eq!(ack.acked, 3, "W = N waited for every replica");

    cluster.handles[2].down();
    match c
        .write_with("s:{all}", update(c).set("x", "1"), WriteOptions::all())
        .await
    {
        Err(Error::QuorumNotReached { needed, .. }) => assert_eq!(needed, 3),
        other => panic!("W = N with one replica down must fail, got {other:?}"),
    }
    c.write("s:{all}", update(c).set("x", "2"))
        .await
        .expect("the configured W = 2 still holds");

    let one = c
        .read_with("s:{all}", ReadOptions::r(1))
        .await
        .expect("R = 1 answers");
    assert!(one.is_some());
    assert!(
        matches!(
            c.read_with("s:{all}", ReadOptions::all()).await,
            Err(Error::Unavailable { .. })
        ),
        "R = N with one replica down is unavailable"
    );

    for bad in [
        c.write_with("s:{all}", update(c).set("y", "1"), WriteOptions::w(1))
            .await
            .map(|_| ()),
        c.write_with("s:{all}", update(c).set("y", "1"), WriteOptions::w(4))
            .await
            .map(|_| ()),
        c.read_with("s:{all}", ReadOptions::r(0)).await.map(|_| ()),
        c.read_with("s:{all}", ReadOptions::r(4)).await.map(|_| ()),
    ] {
        assert!(
            matches!(bad, Err(Error::Invalid(InvalidInput::Quorum(_)))),
            "{bad:?}"
        );
    }
    let record = c.read("s:{all}").await.unwrap().expect("found");
    assert_eq!(record.get("y"), None, "a refused write wrote nothing");
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_two_of_three_replicas_going_down_and_coming_back() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    assert_eq!(c.readiness(), Readiness::Ready);
    cluster.handles[1].down();
    cluster.handles[2].down();
    // Health moves on failed requests: `down_after_failures` (3) writes.
    for i in 0..3 {
        let written = c
            .write(&format!("s:{{r{i}}}"), create(c).set("a", "1"))
            .await;
        assert!(matches!(written, Err(Error::QuorumNotReached { .. })));
    }
    let Readiness::NotReady(not_ready) = c.readiness() else {
        panic!("2 of 3 down with W = 2 is not ready");
    };
    assert_eq!(not_ready.reason, NotReadyReason::WriteQuorumUnreachable);
    assert_eq!(not_ready.down, ["r1", "r2"]);
    assert_eq!((not_ready.reachable, not_ready.write_quorum), (1, 2));

    cluster.handles[1].heal();
    cluster.handles[2].heal();
    // The background probes find them back (backoff from 100 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.readiness(), Readiness::Ready);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_slow_replicas_background_write_then_refuses_new_work() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    cluster.handles[2].delay(Duration::from_millis(100));
    let ack = c.write("s:{slow}", create(c).set("a", "1")).await.unwrap();
    assert_eq!(ack.acked, 2, "answered at W, the slow merge still running");

    let started = Instant::now();
    let report = c.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_complete(), "{report:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(95),
        "did not wait: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(110),
        "waited past the slow merge: {waited:?}"
    );
    let held = cluster.nodes[2].inner().read("s:{slow}").await.unwrap();
    assert!(
        held.record.is_some(),
        "the write past W landed before shutdown returned"
    );

    let Readiness::NotReady(not_ready) = c.readiness() else {
        panic!("a coordinator shut down is not ready");
    };
    assert_eq!(not_ready.reason, NotReadyReason::ShuttingDown);
    let write = c.write("s:{new}", create(c).set("a", "1")).await;
    assert!(matches!(write, Err(Error::ShuttingDown)), "{write:?}");
    let read = c.read("s:{slow}").await;
    assert!(matches!(read, Err(Error::ShuttingDown)), "{read:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_the_write_and_then_the_hint_a_hung_replica_left() {
    let cluster = cluster(3, config(2, 2)).await;
    let c = &cluster.coordinator;
    cluster.handles[2].hang();
    c.write("s:{hung}", create(c).set("a", "1")).await.unwrap();

    // Before `request_timeout` (200 ms) the merge on the hung replica runs.
    let report = c.shutdown(Duration::from_millis(50)).await;
    assert_eq!(report.background_writes_left, 1, "{report:?}");
    assert_eq!(report.hints_left, 0, "{report:?}");
    // Later it timed out and became a hint, which the replica never takes.
    let report = c.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.background_writes_left, 0, "{report:?}");
    assert_eq!(report.hints_left, 1, "{report:?}");
    assert!(!report.anti_entropy_running);
}
