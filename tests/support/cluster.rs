//! Local Redis Clusters for the Cluster-mode tests: `redis-server`
//! processes on free 127.0.0.1 ports, no Docker.
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster_support;
//! let cluster = cluster_support::RedisCluster::start(3);
//! let seed = cluster.seed_port();               // any node, for ServerConfig::new_clustered
//! cluster.flush_all();                          // FLUSHALL on every primary
//! ```
//!
//! Each node runs `--cluster-enabled yes --save "" --appendonly no
//! --maxmemory-policy noeviction` in its own directory under the system
//! temp dir. Both of its ports (client and cluster bus, set with
//! `--cluster-port`) come from binding port 0: the default bus port
//! (port + 10000) could be taken, or above 65535, for an ephemeral port.
//! Dropping [`RedisCluster`] kills the processes and removes the
//! directories (also while a test panics). Not in `support/mod.rs`: the
//! container harness would then be compiled into every test (and this one
//! needs only `redis-server` and `redis-cli` on the PATH).

#![allow(dead_code)] // each test file uses part of the harness

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to answer PING after its start.
const NODE_START_BOUND: Duration = Duration::from_secs(10);
/// How long every node may take to report `cluster_state:ok` after the
/// `redis-cli --cluster create`.
const CLUSTER_OK_BOUND: Duration = Duration::from_secs(30);
/// Starts of one node with new ports when the first ones were taken by
/// someone else between our probe and the server's bind.
const NODE_START_ATTEMPTS: usize = 4;
/// How long a manual failover may take, all attempts together.
const FAILOVER_BOUND: Duration = Duration::from_secs(60);
/// When a manual failover is sent again (Redis gives up on one after 5 s).
const FAILOVER_RETRY_AFTER: Duration = Duration::from_secs(6);
/// The nodes' `cluster-node-timeout` (Redis's default is 15 s): a node
/// votes for one failover of a primary per twice this, so a failover sent
/// again after a failed election waits less.
const NODE_TIMEOUT_MS: &str = "5000";
/// Pause between two polls of a node.
const POLL: Duration = Duration::from_millis(50);

static CLUSTER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One `redis-server` process of a cluster.
struct Node {
    port: u16,
    bus: u16,
    dir: PathBuf,
    child: Child,
}

/// A Redis Cluster of `primaries` primaries (no Cluster replicas), all slots
/// covered, every node reporting `cluster_state:ok`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// Two distinct free ports (client, bus), both bound at once so the
/// operating system hands out different ones; released just before the
/// server binds them (a race with other processes, retried by the caller).
fn free_port_pair() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let ports = (
        a.local_addr().expect("local address").port(),
        b.local_addr().expect("local address").port(),
    );
    drop((a, b));
    ports
}

/// A free port (bound to port 0, then released: a race with other
/// processes, which a start that fails would show).
pub fn free_port() -> u16 {
    free_port_pair().0
}

/// `redis-cli -p <port> <args…>`: its standard output, trimmed, or `None`
/// when the node does not answer.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (is redis-tools installed?)");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // redis-cli exits 0 and prints on stderr when it cannot connect.
    (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// Runs `redis-server` for a node in `dir` on `port` and `bus`.
fn spawn(dir: &Path, port: u16, bus: u16) -> Child {
    Command::new("redis-server")
        .current_dir(dir)
        .args(["--port", &port.to_string()])
        .args(["--cluster-port", &bus.to_string()])
        .args(["--bind", "127.0.0.1"])
        // A node learns its address from the first MEET: a one-node
        // cluster never has one, and announces an empty host without this.
        .args(["--cluster-announce-ip", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--dir", &dir.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-server (is it installed?)")
}

/// Waits (bounded) until the server at `port` answers as `child`; `false` when
/// it exited or did not answer in time (then it is killed).
fn answers(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + NODE_START_BOUND;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            // It exited: most likely a port taken meanwhile.
            return false;
        }
        // Our process, not another one that took the port first (then
        // ours exits, seen above).
        let pid = format!("process_id:{}", child.id());
        let info = cli(port, &["INFO", "server"]).unwrap_or_default();
        if info.lines().any(|line| line.trim() == pid) {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(POLL);
    }
}

impl Node {
    /// Starts one node in `dir`, with new ports per attempt, and waits for
    /// PING.
    fn start(dir: &Path) -> Node {
        std::fs::create_dir_all(dir).expect("create the node directory");
        for _attempt in 0..NODE_START_ATTEMPTS {
            let (port, bus) = free_port_pair();
            let mut child = spawn(dir, port, bus);
            if answers(&mut child, port) {
                let dir = dir.to_owned();
                return Node {
                    port,
                    bus,
                    dir,
                    child,
                };
            }
            let _ = std::fs::remove_file(dir.join("nodes.conf"));
        }
        panic!("redis-server did not start in {NODE_START_ATTEMPTS} attempts in {dir:?}");
    }
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3, what `redis-cli --cluster
    /// create` accepts), joins them into one cluster covering every slot
    /// and waits until each reports `cluster_state:ok` and sees them all.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing, a node does not
    /// start, the create fails, or the cluster is not ok within
    /// [`CLUSTER_OK_BOUND`].
    pub fn start(primaries: usize) -> RedisCluster {
        RedisCluster::start_with_replicas(primaries, 0)
    }

    /// [`start`](Self::start) with `replicas` Cluster replicas per primary
    /// (`--cluster-replicas`), each following its primary.
    pub fn start_with_replicas(primaries: usize, replicas: usize) -> RedisCluster {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "qs-cluster-{}-{}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Built node by node into `cluster`, so that a panic part way still
        // kills the nodes already started (Drop).
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for index in 0..primaries * (1 + replicas) {
            let node = Node::start(&cluster.dir.join(format!("node-{index}")));
            cluster.nodes.push(node);
        }
        if primaries == 1 && replicas == 0 {
            // `--cluster create` wants three primaries: one node takes every
            // slot itself.
            let port = cluster.nodes[0].port;
            assert_eq!(
                cli(port, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]).as_deref(),
                Some("OK"),
                "CLUSTER ADDSLOTSRANGE on {port}"
            );
            cluster.wait_ok();
            return cluster;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_ok();
        println!(
            "cluster of {primaries} primaries, {replicas} replicas each, ready in {:?}",
            started.elapsed()
        );
        cluster
    }

    /// Waits (bounded) until every node reports `cluster_state:ok` and
    /// knows every other node, and every Cluster replica's link to its
    /// primary is up (a `CLUSTER FAILOVER` before the first sync times out
    /// and changes nothing).
    fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_OK_BOUND;
        let count = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let info = cli(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info
                        .lines()
                        .any(|l| l.trim() == format!("cluster_known_nodes:{count}"))
                    && (role(node.port).as_deref() == Some("master")
                        || cli(node.port, &["INFO", "replication"]).is_some_and(|r| {
                            r.lines().any(|l| l.trim() == "master_link_status:up")
                        }));
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not cluster_state:ok within {CLUSTER_OK_BOUND:?}",
                    node.port
                );
                std::thread::sleep(POLL);
            }
        }
    }

    /// The process id of every node.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|node| node.child.id()).collect()
    }

    /// The client port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The client ports of the nodes that are primaries right now.
    pub fn primary_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|port| role(*port).as_deref() == Some("master"))
            .collect()
    }

    /// A node to give a cluster client as its seed.
    pub fn seed_port(&self) -> u16 {
        self.nodes[0].port
    }

    /// A manual `CLUSTER FAILOVER` through the replica at `port`: it waits
    /// for its primary to be caught up, then takes its place (no write
    /// lost). Returns once the replica reports itself primary and every
    /// node is `cluster_state:ok` again (bounded). Redis drops a manual
    /// failover that did not finish within 5 s (a slow election on a
    /// loaded machine: CI once saw one never finish), so the command is
    /// sent again every [`FAILOVER_RETRY_AFTER`], within
    /// [`FAILOVER_BOUND`].
    pub fn failover(&self, port: u16) {
        let deadline = Instant::now() + FAILOVER_BOUND;
        let mut attempts = 0;
        'attempts: loop {
            attempts += 1;
            assert_eq!(
                cli(port, &["CLUSTER", "FAILOVER"]).as_deref(),
                Some("OK"),
                "CLUSTER FAILOVER on {port}"
            );
            let retry_at = Instant::now() + FAILOVER_RETRY_AFTER;
            while role(port).as_deref() != Some("master") {
                assert!(
                    Instant::now() < deadline,
                    "node {port} not primary within {FAILOVER_BOUND:?} ({attempts} attempts)"
                );
                if Instant::now() > retry_at {
                    continue 'attempts;
                }
                std::thread::sleep(POLL);
            }
            break;
        }
        self.wait_ok();
    }

    /// SIGKILL of the node at `port` (its data is gone: no persistence).
    pub fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        let _ = node.child.kill();
        let _ = node.child.wait();
    }

    /// Starts the node at `port` again after [`kill`](Self::kill), on the
    /// same ports and `nodes.conf` (so it rejoins with its identity and
    /// slots, empty), and waits until the cluster is ok again (bounded).
    pub fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.child = spawn(&node.dir, node.port, node.bus);
        assert!(
            answers(&mut node.child, port),
            "node {port} did not come back"
        );
        self.wait_ok();
    }

    /// The Cluster replica following the primary at `port`, if any (`ROLE`
    /// on a replica: `slave`, then its primary's host and port).
    pub fn follower_of(&self, port: u16) -> Option<u16> {
        self.ports().into_iter().find(|candidate| {
            let role = cli(*candidate, &["ROLE"]).unwrap_or_default();
            let lines: Vec<&str> = role.lines().collect();
            lines.first() == Some(&"slave") && lines.get(2) == Some(&port.to_string().as_str())
        })
    }

    /// Waits (bounded) until the node at `port` reports itself primary
    /// (a Cluster replica promoted after its primary died), then until the
    /// cluster is ok.
    pub fn wait_primary(&self, port: u16) {
        let deadline = Instant::now() + FAILOVER_BOUND;
        while role(port).as_deref() != Some("master") {
            assert!(
                Instant::now() < deadline,
                "node {port} not promoted within {FAILOVER_BOUND:?}"
            );
            std::thread::sleep(POLL);
        }
        self.wait_ok_live();
    }

    /// [`wait_ok`](Self::wait_ok) over the nodes that run (a killed one
    /// is skipped).
    fn wait_ok_live(&self) {
        let deadline = Instant::now() + CLUSTER_OK_BOUND;
        for port in self.ports() {
            if cli(port, &["PING"]).is_none() {
                continue;
            }
            while !cli(port, &["CLUSTER", "INFO"])
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == "cluster_state:ok")
            {
                assert!(
                    Instant::now() < deadline,
                    "node {port} not cluster_state:ok within {CLUSTER_OK_BOUND:?}"
                );
                std::thread::sleep(POLL);
            }
        }
    }

    /// Moves `slots` hash slots from the primary at `from` to the one at
    /// `to` with `redis-cli --cluster reshard` (keys migrated with
    /// `MIGRATE`, clients redirected by `ASK`, then `MOVED`).
    pub fn reshard(&self, from: u16, to: u16, slots: usize) {
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID answers");
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &id(from)])
            .args(["--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.wait_ok();
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node of this cluster")
    }

    /// `FLUSHALL` on every primary: the whole dataset gone, as a cluster
    /// restarted empty would be (the topology stays).
    pub fn flush_all(&self) {
        for port in self.primary_ports() {
            assert_eq!(
                cli(port, &["FLUSHALL"]).as_deref(),
                Some("OK"),
                "FLUSHALL on node {port}"
            );
        }
    }

    /// The keys matching the glob `pattern`, on every primary, with the
    /// port of the primary holding each.
    pub fn keys_matching(&self, pattern: &str) -> Vec<(u16, String)> {
        let mut keys = Vec::new();
        for port in self.primary_ports() {
            let listed = cli(port, &["--scan", "--pattern", pattern]).expect("SCAN answers");
            keys.extend(
                listed
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|key| (port, key.to_owned())),
            );
        }
        keys
    }

    /// `DEL` of each key on its primary (one command per key: no CROSSSLOT),
    /// through one `redis-cli` per primary fed on its standard input.
    pub fn delete_keys(&self, keys: &[(u16, String)]) {
        use std::io::Write;
        for port in self.primary_ports() {
            let mut commands = String::new();
            for (_, key) in keys.iter().filter(|(on, _)| *on == port) {
                commands.push_str(&format!("DEL {key}\n"));
            }
            let mut child = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("run redis-cli");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(commands.as_bytes())
                .expect("feed redis-cli");
            assert!(child.wait().expect("redis-cli ends").success());
        }
    }

    /// Keys held by every primary together.
    pub fn dbsize(&self) -> u64 {
        self.primary_ports()
            .into_iter()
            .map(|port| {
                cli(port, &["DBSIZE"])
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("DBSIZE answers")
            })
            .sum()
    }
}

/// The first line of `ROLE`: `master` or `slave` (`None`: no answer).
pub fn role(port: u16) -> Option<String> {
    cli(port, &["ROLE"]).and_then(|text| text.lines().next().map(str::to_owned))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
