//! A bare coordinator (records of your own, no session layer) over three
//! in-memory replicas: one write, one read.
//!
//! `cargo run --example coordinator`

use std::sync::Arc;

use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
use quorum_sessions::{ClusterConfig, Coordinator, Mutation};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
        .into_iter()
        .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
        .collect();
    let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await?;
    let now = coordinator.now_ms();
    let create = Mutation::create(now + 60_000, now + 3_600_000).set("user", "alice");
    coordinator.write("s:{demo}", create).await?;
    let record = coordinator.read("s:{demo}").await?.expect("found");
    assert_eq!(record.get("user"), Some(&b"alice"[..]));
    println!("{:?}", coordinator.replica_states());
    Ok(())
}
