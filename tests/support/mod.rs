//! Container harness for the integration tests: starts N Redis containers
//! with testcontainers and injects real faults into them.
//!
//! ```ignore
//! mod support;
//! let nodes = support::RedisNodes::start(3).await;
//! let replica = nodes.node(0).replica().await;   // RedisReplica, short timeout
//! nodes.node(1).kill().await;                   // SIGKILL
//! nodes.node(1).start().await;                  // back, empty, PING answered
//! ```
//!
//! Each container runs `--save "" --appendonly no --dir /data --dbfilename
//! dump.rdb --maxmemory-policy noeviction` on a pinned free host port, in a
//! per-harness Docker network (for `disconnect`), with a unique name and the
//! labels the leftover sweep reads. Dropping [`RedisNodes`] removes the
//! containers (also while a test panics).

#![allow(dead_code)] // each test file uses part of the harness

mod image;
mod node;

use std::sync::atomic::{AtomicUsize, Ordering};

#[allow(unused_imports)] // used by some test files only
pub use image::{docker, redis_image, ImageRef};
pub use node::RedisNode;

static NETWORK_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// N Redis containers on one Docker network.
pub struct RedisNodes {
    nodes: Vec<RedisNode>,
    network: String,
}

impl RedisNodes {
    /// Starts `count` Redis containers in parallel and waits until each
    /// answers PING.
    ///
    /// # Panics
    ///
    /// With one clear line when no Docker engine answers or no Redis image
    /// can be found or built; when a container does not start.
    pub async fn start(count: usize) -> RedisNodes {
        let image = redis_image().await;
        let network = format!(
            "qs-net-{}-{}",
            std::process::id(),
            NETWORK_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let starts = (0..count).map(|index| RedisNode::launch_new(index, image, &network));
        let nodes = futures::future::join_all(starts).await;
        RedisNodes { nodes, network }
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &RedisNode {
        &self.nodes[index]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The Docker network the nodes share.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// A `RedisReplica` for every node (see [`RedisNode::replica`]).
    pub async fn replicas(&self) -> Vec<quorum_sessions::replica::redis::RedisReplica> {
        futures::future::join_all(self.nodes.iter().map(RedisNode::replica)).await
    }
}

/// The coordinator settings of the fault tests: W = R = 2, a 300 ms request
/// deadline, hedged reads after 50 ms, a Down replica probed at least every
/// 500 ms, so that a fault shows within a second or two.
pub fn fault_test_config() -> quorum_sessions::ClusterConfig {
    let mut config = quorum_sessions::ClusterConfig {
        write_quorum: 2,
        read_quorum: 2,
        request_timeout: std::time::Duration::from_millis(300),
        hedge_delay: Some(std::time::Duration::from_millis(50)),
        ..quorum_sessions::ClusterConfig::default()
    };
    config.health.probe_interval_max = std::time::Duration::from_millis(500);
    config
}
