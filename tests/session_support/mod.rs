//! Shared set-up of the session-layer tests: three in-memory replicas behind
//! `FaultyReplica`, W = R = 2, and a wall clock the test moves by hand (the
//! coordinator's `now_ms` is injected; tokio's clock is paused separately).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::replica::faulty::{FaultHandle, FaultyReplica};
use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::session::{SessionConfig, SessionStore};
use quorum_sessions::{ClusterConfig, Coordinator, ReadOrder};

pub type Node = Arc<FaultyReplica<InMemoryReplica>>;

/// 14 Nov 2023, in ms: any realistic time.
pub const START_MS: u64 = 1_700_000_000_000;
pub const MINUTE: u64 = 60_000;

pub struct Cluster {
    pub store: SessionStore,
    pub handles: Vec<FaultHandle>,
    pub nodes: Vec<Node>,
    pub clock: Arc<AtomicU64>,
    pub config: SessionConfig,
}

pub fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        request_timeout: Duration::from_millis(200),
        hedge_delay: None,
        read_order: ReadOrder::Configured,
        ..ClusterConfig::default()
    }
}

impl Cluster {
    pub async fn new(config: SessionConfig) -> Cluster {
        let (nodes, handles): (Vec<Node>, Vec<FaultHandle>) = (0..3)
            .map(|i| {
                let (node, handle) =
                    FaultyReplica::new(InMemoryReplica::new(format!("r{i}")), i as u64);
                (Arc::new(node), handle)
            })
            .unzip();
        let clock = Arc::new(AtomicU64::new(START_MS));
        let store = server(&nodes, &clock, &config, 1, 0).await;
        Cluster {
            store,
            handles,
            nodes,
            clock,
            config,
        }
    }

    /// Another app server on the same replicas: its own coordinator (writer
    /// id), its wall clock `skew_ms` ahead (negative: behind) of the shared one.
    pub async fn server(&self, writer_id: u64, skew_ms: i64) -> SessionStore {
        server(&self.nodes, &self.clock, &self.config, writer_id, skew_ms).await
    }

    /// Another app server with its own session configuration.
    pub async fn server_with(&self, writer_id: u64, config: &SessionConfig) -> SessionStore {
        server(&self.nodes, &self.clock, config, writer_id, 0).await
    }

    pub fn advance_ms(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn writes(&self) -> u64 {
        self.store.coordinator().stats().writes_acknowledged
    }
}

async fn server(
    nodes: &[Node],
    clock: &Arc<AtomicU64>,
    config: &SessionConfig,
    writer_id: u64,
    skew_ms: i64,
) -> SessionStore {
    let replicas: Vec<Arc<dyn Replica>> = nodes
        .iter()
        .map(|n| n.clone() as Arc<dyn Replica>)
        .collect();
    let clock = clock.clone();
    let coordinator = Coordinator::builder(cluster_config(), replicas)
        .writer_id(writer_id)
        .wall_clock(Arc::new(move || {
            clock.load(Ordering::SeqCst).saturating_add_signed(skew_ms)
        }))
        .connect()
        .await
        .unwrap();
    SessionStore::new(coordinator, config.clone()).unwrap()
}
