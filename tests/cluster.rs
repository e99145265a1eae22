//! Cluster mode on real Redis Clusters (issue 16, part 2): `RedisReplica`
//! with `ServerConfig::Clustered` on local 3-primary clusters
//! (`support/cluster.rs`: `redis-server` processes, no Docker).

#[path = "support/cluster.rs"]
mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::RedisCluster;
use fred::prelude::ServerConfig;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::testing::run_conformance;

/// Request deadline of the cluster replicas: generous, two cores run
/// several clusters at once.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// A replica on `cluster`, seeded with one node (fred learns the others
/// from `CLUSTER SLOTS`).
async fn cluster_replica(name: &str, cluster: &RedisCluster) -> RedisReplica {
    let server = ServerConfig::new_clustered(vec![("127.0.0.1", cluster.seed_port())]);
    let mut config = RedisReplicaConfig::from_server(name, server);
    config.request_timeout = REPLICA_TIMEOUT;
    config.connect_timeout = Duration::from_secs(5);
    RedisReplica::connect(config)
        .await
        .expect("connect a cluster RedisReplica")
}

/// The conformance suite passes on a `RedisReplica` in Cluster mode: merges,
/// reads, epochs, the lease, a scan across every primary, and `wipe`.
#[tokio::test]
async fn cluster_replica_conforms() {
    let cluster = RedisCluster::start(3);
    let replica = cluster_replica("cluster-conformance", &cluster).await;
    let started = Instant::now();
    run_conformance(&replica).await;
    println!("conformance on the cluster in {:?}", started.elapsed());
}
