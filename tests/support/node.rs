//! One Redis container and the faults it can suffer.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quorum_sessions::replica::faulty::{FaultHandle, FaultyReplica};
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use testcontainers::bollard::models::{NetworkConnectRequest, NetworkDisconnectRequest};
use testcontainers::bollard::query_parameters::KillContainerOptionsBuilder;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::Mutex;

use super::image::{docker, ImageRef, HARNESS_LABEL, NAME_PREFIX, PID_LABEL};

/// Deadline of the harness's own commands (PING, SAVE, DBSIZE).
const RAW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `start` waits for PING to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Request timeout of the replicas made by [`RedisNode::replica`].
pub const REPLICA_TIMEOUT: Duration = Duration::from_millis(300);

static NAME_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Arguments of redis-server: no persistence unless `save` is called, a dump
/// file where `save` writes and a start reads, no eviction.
const REDIS_ARGS: [&str; 14] = [
    "--bind",
    "0.0.0.0",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/data",
    "--dbfilename",
    "dump.rdb",
    "--maxmemory-policy",
    "noeviction",
];

/// One Redis container with a pinned host port.
pub struct RedisNode {
    index: usize,
    port: u16,
    network: String,
    image: &'static ImageRef,
    name: std::sync::Mutex<String>,
    container: Mutex<Option<ContainerAsync<GenericImage>>>,
    saved: AtomicBool,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn container_name(index: usize) -> String {
    format!(
        "{NAME_PREFIX}{}-{}-{index}",
        std::process::id(),
        NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn launch(
    image: &ImageRef,
    name: &str,
    port: u16,
    network: &str,
) -> testcontainers::core::error::Result<ContainerAsync<GenericImage>> {
    GenericImage::new(image.name.as_str(), image.tag.as_str())
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(REDIS_ARGS)
        .with_mapped_port(port, 6379.tcp())
        .with_network(network)
        .with_container_name(name)
        .with_label(HARNESS_LABEL, "1")
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(READY_TIMEOUT)
        .start()
        .await
}

/// Sends one command in RESP and returns the first line of the reply.
fn raw_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, RAW_TIMEOUT)?;
    stream.set_read_timeout(Some(RAW_TIMEOUT))?;
    stream.set_write_timeout(Some(RAW_TIMEOUT))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

impl RedisNode {
    /// Starts node `index` on a free port (three tries with new ports).
    pub(super) async fn launch_new(
        index: usize,
        image: &'static ImageRef,
        network: &str,
    ) -> RedisNode {
        let mut last_error = String::new();
        for _ in 0..3 {
            let (name, port) = (container_name(index), free_port());
            match launch(image, &name, port, network).await {
                Ok(container) => {
                    let node = RedisNode {
                        index,
                        port,
                        network: network.to_owned(),
                        image,
                        name: std::sync::Mutex::new(name),
                        container: Mutex::new(Some(container)),
                        saved: AtomicBool::new(false),
                    };
                    node.wait_ready().await;
                    return node;
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        panic!("redis node {index} did not start: {last_error}");
    }

    /// The node's index in its [`super::RedisNodes`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The pinned host port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The replica name used by [`RedisNode::replica`]: `redis-<index>`.
    pub fn replica_name(&self) -> String {
        format!("redis-{}", self.index)
    }

    /// The Docker container name (changes when `restart_empty` recreates it).
    pub fn container_name(&self) -> String {
        self.name.lock().unwrap().clone()
    }

    async fn id(&self) -> String {
        let guard = self.container.lock().await;
        guard.as_ref().expect("container present").id().to_owned()
    }

    /// A replica configuration for this node: short timeouts, fast reconnects.
    pub fn replica_config(&self) -> RedisReplicaConfig {
        let mut config = RedisReplicaConfig::from_url(self.replica_name(), self.url());
        config.request_timeout = REPLICA_TIMEOUT;
        config.connect_timeout = Duration::from_secs(2);
        config.reconnect_delay_min = Duration::from_millis(50);
        config.reconnect_delay_max = Duration::from_millis(500);
        config
    }

    /// A `RedisReplica` on this node with [`RedisNode::replica_config`].
    pub async fn replica(&self) -> RedisReplica {
        RedisReplica::connect(self.replica_config())
            .await
            .expect("connect a RedisReplica")
    }

    /// A replica on this node wrapped in a `FaultyReplica` that delays every
    /// call by `delay` (a slow node).
    pub async fn slow_replica(
        &self,
        delay: Duration,
    ) -> (FaultyReplica<RedisReplica>, FaultHandle) {
        let (replica, handle) = FaultyReplica::new(self.replica().await, self.index as u64);
        handle.delay(delay);
        (replica, handle)
    }

    /// Sends one command and returns the first line of the reply
    /// (`+PONG`, `:3`, `-ERR …`).
    ///
    /// # Panics
    ///
    /// When the node cannot be reached.
    pub async fn command(&self, args: &[&str]) -> String {
        let port = self.port;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            raw_command(port, &refs)
        })
        .await
        .expect("raw command task")
        .unwrap_or_else(|e| panic!("redis node {}: {e}", self.index))
    }

    /// Number of keys (`DBSIZE`).
    pub async fn dbsize(&self) -> u64 {
        let reply = self.command(&["DBSIZE"]).await;
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {reply:?}"))
    }

    /// Waits until the node answers PING.
    ///
    /// # Panics
    ///
    /// When it does not within 20 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.port;
        loop {
            let reply = tokio::task::spawn_blocking(move || raw_command(port, &["PING"]))
                .await
                .expect("ping task");
            if matches!(reply.as_deref(), Ok("+PONG")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis node {} not ready after {READY_TIMEOUT:?}: {reply:?}",
                self.index
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: the process dies at once, its memory is lost.
    pub async fn kill(&self) {
        let id = self.id().await;
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        docker()
            .await
            .kill_container(&id, Some(options))
            .await
            .expect("kill container");
        self.wait_not_running().await;
    }

    async fn wait_not_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let running = {
                let guard = self.container.lock().await;
                let container = guard.as_ref().expect("container present");
                container.is_running().await.unwrap_or(false)
            };
            if !running {
                return;
            }
            assert!(Instant::now() < deadline, "container still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop (SIGTERM). With `--save ""` nothing is written.
    pub async fn stop(&self) {
        let guard = self.container.lock().await;
        guard
            .as_ref()
            .expect("container present")
            .stop()
            .await
            .expect("stop container");
    }

    /// Starts a stopped or killed node and waits until it answers PING (a
    /// start after a stop does not re-run testcontainers' wait).
    pub async fn start(&self) {
        {
            let guard = self.container.lock().await;
            guard
                .as_ref()
                .expect("container present")
                .start()
                .await
                .expect("start container");
        }
        self.wait_ready().await;
    }

    /// `SAVE`: writes the dump that the next start loads.
    pub async fn save(&self) {
        let reply = self.command(&["SAVE"]).await;
        assert_eq!(reply, "+OK", "SAVE on node {}", self.index);
        self.saved.store(true, Ordering::Relaxed);
    }

    /// Restarts the node with nothing: stop + start (no persistence), or,
    /// when a dump was saved, a new container on the same port and network.
    ///
    /// # Panics
    ///
    /// When the node still holds keys afterwards.
    pub async fn restart_empty(&self) {
        if self.saved.swap(false, Ordering::Relaxed) {
            self.recreate().await;
        } else {
            self.stop().await;
            self.start().await;
        }
        let keys = self.dbsize().await;
        assert_eq!(
            keys, 0,
            "node {} kept {keys} keys across restart_empty",
            self.index
        );
    }

    async fn recreate(&self) {
        let mut guard = self.container.lock().await;
        if let Some(old) = guard.take() {
            old.rm().await.expect("remove container");
        }
        let name = container_name(self.index);
        let container = launch(self.image, &name, self.port, &self.network)
            .await
            .unwrap_or_else(|e| panic!("recreate node {}: {e}", self.index));
        *self.name.lock().unwrap() = name;
        *guard = Some(container);
        drop(guard);
        self.wait_ready().await;
    }

    /// `SAVE`, stop, start: the node comes back with the saved data (a
    /// restart from a snapshot when writes happened after an earlier `save`:
    /// call `save`, write, then `stop` and `start`).
    ///
    /// # Panics
    ///
    /// When the key count differs after the restart.
    pub async fn restart_with_data(&self) {
        self.save().await;
        let keys = self.dbsize().await;
        self.stop().await;
        self.start().await;
        let after = self.dbsize().await;
        assert_eq!(
            after, keys,
            "node {} lost data across restart_with_data",
            self.index
        );
    }

    /// Freezes the process (SIGSTOP via cgroups): connections stay open, no
    /// reply comes.
    pub async fn pause(&self) {
        let guard = self.container.lock().await;
        guard
            .as_ref()
            .expect("container present")
            .pause()
            .await
            .expect("pause");
    }

    /// Thaws a paused node.
    pub async fn unpause(&self) {
        let guard = self.container.lock().await;
        guard
            .as_ref()
            .expect("container present")
            .unpause()
            .await
            .expect("unpause");
    }

    /// Cuts the node from its network; its host port refuses connections.
    pub async fn disconnect(&self) {
        let request = NetworkDisconnectRequest {
            container: self.id().await,
            force: Some(true),
        };
        docker()
            .await
            .disconnect_network(&self.network, request)
            .await
            .expect("disconnect network");
    }

    /// Reconnects a disconnected node and waits until it answers PING.
    pub async fn reconnect(&self) {
        let request = NetworkConnectRequest {
            container: self.id().await,
            endpoint_config: None,
        };
        docker()
            .await
            .connect_network(&self.network, request)
            .await
            .expect("connect network");
        self.wait_ready().await;
    }
}
