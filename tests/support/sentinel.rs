//! A local Sentinel group for the Sentinel fault test: a primary, one
//! replica and one Sentinel (quorum 1), `redis-server` processes on free
//! 127.0.0.1 ports, no Docker. Uses `cli` and `free_port` of
//! `support/cluster.rs` (include both).
//!
//! ```ignore
//! let group = sentinel_support::SentinelGroup::start();
//! let server = group.server_config();        // ServerConfig::Sentinel
//! group.failover();                          // SENTINEL FAILOVER, waited for
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::cluster_support::{cli, free_port};

/// The service name the Sentinel monitors.
pub const SERVICE: &str = "qs";
/// How long a process may take to answer, the replica to sync, the
/// Sentinel to see the replica, a failover to finish.
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

static GROUP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A primary, its replica and a Sentinel; killed (and their directory
/// removed) on drop.
pub struct SentinelGroup {
    pub primary: u16,
    pub replica: u16,
    pub sentinel: u16,
    children: Vec<Child>,
    dir: PathBuf,
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    std::fs::create_dir_all(dir).expect("create the node directory");
    Command::new("redis-server")
        .current_dir(dir)
        .args(args)
        .args(["--bind", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-server (is it installed?)")
}

/// Waits (bounded) until `check` holds; panics with `what` otherwise.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(Instant::now() < deadline, "{what} not within {BOUND:?}");
        std::thread::sleep(POLL);
    }
}

impl SentinelGroup {
    /// Starts the three processes and waits until the replica is in sync
    /// and the Sentinel knows it.
    pub fn start() -> SentinelGroup {
        let dir = std::env::temp_dir().join(format!(
            "qs-sentinel-{}-{}",
            std::process::id(),
            GROUP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (primary, replica, sentinel) = (free_port(), free_port(), free_port());
        let mut group = SentinelGroup {
            primary,
            replica,
            sentinel,
            children: Vec::new(),
            dir,
        };
        let data = ["--save", "", "--appendonly", "no"];
        let policy = ["--maxmemory-policy", "noeviction"];
        let port = primary.to_string();
        let mut args = vec!["--port", &port];
        args.extend(data);
        args.extend(policy);
        group
            .children
            .push(spawn(&group.dir.join("primary"), &args));
        let port = replica.to_string();
        let primary_port = primary.to_string();
        let mut args = vec!["--port", &port, "--replicaof", "127.0.0.1", &primary_port];
        args.extend(data);
        args.extend(policy);
        group
            .children
            .push(spawn(&group.dir.join("replica"), &args));
        wait_until("the replica in sync", || {
            cli(replica, &["INFO", "replication"])
                .is_some_and(|info| info.lines().any(|l| l.trim() == "master_link_status:up"))
        });
        let sentinel_dir = group.dir.join("sentinel");
        std::fs::create_dir_all(&sentinel_dir).expect("create the sentinel directory");
        let conf = sentinel_dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 10000\n",
                sentinel_dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let conf = conf.to_string_lossy().into_owned();
        group
            .children
            .push(spawn(&sentinel_dir, &[conf.as_str(), "--sentinel"]));
        wait_until("the Sentinel knows the replica", || {
            cli(sentinel, &["SENTINEL", "REPLICAS", SERVICE])
                .is_some_and(|replicas| replicas.contains(&replica.to_string()))
        });
        group
    }

    /// The fred server config of the group (through its Sentinel).
    pub fn server_config(&self) -> fred::prelude::ServerConfig {
        fred::prelude::ServerConfig::new_sentinel(vec![("127.0.0.1", self.sentinel)], SERVICE)
    }

    /// The port the Sentinel names as the primary now.
    pub fn current_primary(&self) -> Option<u16> {
        let answer = cli(
            self.sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE],
        )?;
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// `SENTINEL FAILOVER` (the replica promoted after it caught up, the old
    /// primary made its replica), waited for until the Sentinel names the
    /// replica and it reports itself primary.
    pub fn failover(&self) -> u16 {
        let before = self
            .current_primary()
            .expect("the Sentinel names a primary");
        let promoted = if before == self.primary {
            self.replica
        } else {
            self.primary
        };
        // NOGOODSLAVE until the Sentinel has refreshed what it knows of
        // the replica (its INFO, every few seconds): asked again.
        wait_until("SENTINEL FAILOVER accepted", || {
            cli(self.sentinel, &["SENTINEL", "FAILOVER", SERVICE]).as_deref() == Some("OK")
        });
        wait_until("the failover", || {
            self.current_primary() == Some(promoted)
                && cli(promoted, &["ROLE"]).is_some_and(|role| role.starts_with("master"))
        });
        promoted
    }
}

impl SentinelGroup {
    /// Waits (bounded) until the node at `port` reports itself a replica
    /// (the Sentinel reconfigures a demoted primary some seconds after a
    /// failover, and closes its clients' connections then).
    pub fn wait_demoted(&self, port: u16) {
        wait_until("the old primary demoted", || {
            cli(port, &["ROLE"]).is_some_and(|role| role.starts_with("slave"))
        });
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
