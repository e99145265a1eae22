//! The example app's operations endpoints (`examples/app/routes.rs`), served
//! over HTTP on 127.0.0.1 with the Prometheus exporter installed, on three
//! real Redis servers (testcontainers), while nodes are cut off. What it
//! proves, through `GET /metrics` and `GET /health/ready` only (each point
//! asserted):
//!
//! 1. With every node up: ready (200), and the write counter moves.
//! 2. One node cut off under traffic: `/metrics` shows its transition to
//!    Down and its hint counters moving (queued, pending > 0), while
//!    `/health/ready` stays 200 (two of three serve W = R = 2).
//! 3. A second node cut off: `/health/ready` answers 503 with the reason
//!    (a write quorum is unreachable) and names the Down replicas.
//! 4. Both back: `/health/ready` is 200 again, `/metrics` shows their
//!    transitions back up, the hints replayed and none pending.
//!
//! Its own test binary: the Prometheus recorder is process-wide. Runtime:
//! about 10 s. Needs Docker (see `tests/support`).
#![cfg(all(feature = "redis", feature = "metrics"))]

mod support;

#[path = "../examples/app/routes.rs"]
#[allow(dead_code)]
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::replica::Replica;
use quorum_sessions::session::{Csrf, NewSession, SessionConfig};
use quorum_sessions::{Coordinator, SessionStore};
use support::RedisNodes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How long a node may take to be marked Down, or the cluster to serve again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// `GET path`: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an HTTP answer within 10 s");
    let status = raw[9..12].parse().expect("a status code");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The value of the sample of `name` whose labels include every one of
/// `labels` (0 when there is none: a counter not moved yet).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates sessions until `done` holds for the scraped metrics and readiness
/// (writes may fail meanwhile: the point is to make the coordinator notice).
async fn traffic_until(
    store: &SessionStore,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&str, u16, &str) -> bool,
) -> (String, u16, String) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let _ = store.create(NewSession::for_user("ops")).await;
        let (_, metrics) = get(addr, "/metrics").await;
        let (ready, reason) = get(addr, "/health/ready").await;
        if done(&metrics, ready, &reason) {
            return (metrics, ready, reason);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {RECOVERY_TIMEOUT:?}; ready {ready} {reason}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_follow_nodes_leaving_and_returning() {
    let prometheus = routes::prometheus();
    let nodes = RedisNodes::start(3).await;
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for node in nodes.nodes() {
        replicas.push(Arc::new(node.replica().await));
    }
    let mut config = support::fault_test_config();
    config.handoff_interval = Duration::from_millis(100);
    let coordinator = Coordinator::connect(config, replicas).await.unwrap();
    let store = SessionStore::new(coordinator, SessionConfig::default()).unwrap();
    let state = routes::AppState {
        store: store.clone(),
        csrf: Csrf::new(&rand::random::<[u8; 32]>()).unwrap(),
        users: Arc::new(routes::demo_users()),
        secure_cookies: false,
        metrics: Some(prometheus),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (cut, second) = (nodes.node(2), nodes.node(1));
    let (cut_name, second_name) = (cut.replica_name(), second.replica_name());

    // 1. All up.
    let (metrics, ready, _) = traffic_until(&store, addr, "the first writes", |m, _, _| {
        sample(
            m,
            "quorum_sessions_operations_total",
            &[("op", "write"), ("outcome", "acknowledged")],
        ) >= 1.0
    })
    .await;
    assert_eq!(ready, 200);
    assert_eq!(
        sample(
            &metrics,
            "quorum_sessions_replica_health_transitions_total",
            &[("to", "down")]
        ),
        0.0,
        "no node down yet"
    );

    // 2. One node cut off: Down, hints queue up, still ready.
    cut.disconnect().await;
    let down = [("replica", cut_name.as_str()), ("to", "down")];
    let hinted = [("replica", cut_name.as_str())];
    let (metrics, ready, reason) = traffic_until(&store, addr, "node 2 down, hinted", |m, _, _| {
        sample(m, "quorum_sessions_replica_health_transitions_total", &down) >= 1.0
            && sample(m, "quorum_sessions_hints_queued_total", &hinted) >= 1.0
    })
    .await;
    assert_eq!(ready, 200, "two of three serve: {reason}");
    assert!(
        sample(&metrics, "quorum_sessions_hints_pending", &hinted) >= 1.0,
        "{metrics}"
    );

    // 3. A second node cut off: not ready, with the reason.
    second.disconnect().await;
    let (_, _, reason) = traffic_until(&store, addr, "not ready", |_, ready, _| ready == 503).await;
    assert!(reason.contains("write_quorum_unreachable"), "{reason}");
    assert!(
        reason.contains(&cut_name) && reason.contains(&second_name),
        "{reason}"
    );

    // 4. Both back: ready, up again, hints replayed.
    cut.reconnect().await;
    second.reconnect().await;
    let up = [("replica", cut_name.as_str()), ("to", "up")];
    let second_up = [("replica", second_name.as_str()), ("to", "up")];
    let second_hinted = [("replica", second_name.as_str())];
    let (metrics, ready, _) = traffic_until(&store, addr, "recovery", |m, ready, _| {
        let transitions = "quorum_sessions_replica_health_transitions_total";
        ready == 200
            && sample(m, transitions, &up) >= 1.0
            && sample(m, transitions, &second_up) >= 1.0
            && sample(m, "quorum_sessions_hints_pending", &hinted) == 0.0
            && sample(m, "quorum_sessions_hints_pending", &second_hinted) == 0.0
    })
    .await;
    assert_eq!(ready, 200);
    assert!(
        sample(&metrics, "quorum_sessions_hints_replayed_total", &hinted) >= 1.0,
        "{metrics}"
    );
    store.coordinator().shutdown(Duration::from_secs(5)).await;
}
