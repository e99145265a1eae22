//! A local cluster for the scenarios: `redis-server` processes on
//! 127.0.0.1, each behind a small TCP proxy of its own (the replicas connect
//! to the proxy, so that a node can be cut off without touching the
//! process). Used by `qs-admin chaos`; it never connects anywhere but
//! 127.0.0.1.
//!
//! Faults: kill is SIGKILL, stop SIGTERM (nothing is saved: `--save ""`),
//! pause and unpause SIGSTOP and SIGCONT, disconnect drops every proxied
//! connection and closes new ones at once. Dropping the cluster kills the
//! processes and removes their directories (also when a scenario panics).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ChaosNodes;
use crate::replica::redis::{RedisReplica, RedisReplicaConfig};

/// How long a node may take to answer PING after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of the cluster's own commands (PING, SAVE, DBSIZE) and of the
/// proxy's connection to its node.
const RAW_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections one proxy carries at once (more are closed at once):
/// a client that reconnects in a loop cannot make it spawn without end.
pub const PROXY_CONNECTIONS_MAX: usize = 1_024;
/// Tries, each on a new free port, before a node's start is given up (a
/// free port can be taken by another process between the check and the
/// bind).
const PORT_TRIES: usize = 3;
/// Request timeout of the replicas made by [`LocalCluster`] (like the
/// test harness's).
pub const REPLICA_TIMEOUT: Duration = Duration::from_millis(300);

static CLUSTER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `redis-server` processes on 127.0.0.1 behind proxies, in a temporary
/// directory; see the module documentation.
pub struct LocalCluster {
    nodes: Vec<LocalNode>,
    root: PathBuf,
    proxies: ProxyRuntime,
}

/// The proxies' own runtime, on a thread of its own: forwarding is then not
/// slowed by the workload's tasks (the containers' port forwarding is a
/// process of its own too), and outlives a scenario that panicked.
struct ProxyRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyRuntime {
    fn start() -> io::Result<ProxyRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("qs-chaos-proxies".to_owned())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
                // Dropping the runtime drops every proxy task.
            })?;
        Ok(ProxyRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct LocalNode {
    index: usize,
    redis_server: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    proxy: Proxy,
}

struct Proxy {
    port: u16,
    connected: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends one command in RESP to 127.0.0.1:`port` and returns the first line
/// of the reply (`+PONG`, `:3`, `-ERR …`).
async fn raw_command(port: u16, args: &[&str]) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(RAW_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no reply")))
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -{signal} {pid}: {status}")))
    }
}

/// A TCP proxy on a port of its own to 127.0.0.1:`target`, its tasks on
/// `runtime`.
fn start_proxy(runtime: &tokio::runtime::Handle, target: u16) -> io::Result<Proxy> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let (connected, watch) = watch::channel(true);
    let live = Arc::new(AtomicUsize::new(0));
    let accept = runtime.spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                // Out of descriptors, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if !*watch.borrow() || live.load(Ordering::Acquire) >= PROXY_CONNECTIONS_MAX {
                continue; // dropped: the client sees the connection close
            }
            live.fetch_add(1, Ordering::AcqRel);
            let (mut cut, live) = (watch.clone(), live.clone());
            tokio::spawn(async move {
                let upstream =
                    tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(("127.0.0.1", target)))
                        .await;
                if let Ok(Ok(mut upstream)) = upstream {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.wait_for(|connected| !connected) => {}
                    }
                }
                live.fetch_sub(1, Ordering::AcqRel);
            });
        }
    });
    Ok(Proxy {
        port,
        connected,
        accept,
    })
}

impl LocalNode {
    fn spawn(&self) -> io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let port = self.port.to_string();
        Command::new(&self.redis_server)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--dbfilename", "dump.rdb"])
            .args(["--maxmemory-policy", "noeviction"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "start {}: {error} (install Redis, or give its path with --redis-server)",
                        self.redis_server.display()
                    ),
                )
            })
    }

    /// Starts the process and waits until it answers PING.
    async fn launch(&self) -> io::Result<()> {
        let child = self.spawn()?;
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match self.child.lock().unwrap().as_mut() {
                Some(child) => child.try_wait()?,
                None => return Err(io::Error::other("not started")),
            };
            if let Some(status) = exited {
                return Err(io::Error::other(format!(
                    "redis node {} exited ({status}); see {}",
                    self.index,
                    self.dir.join("redis.log").display()
                )));
            }
            let reply = raw_command(self.port, &["PING"]).await;
            if matches!(reply.as_deref(), Ok("+PONG")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "redis node {} not ready after {READY_TIMEOUT:?}: {reply:?}",
                    self.index
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .unwrap_or_else(|| panic!("redis node {} is not running", self.index))
            .id()
    }

    fn kill_now(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn stop(&self) {
        let pid = self.pid();
        signal(pid, "TERM").unwrap_or_else(|e| panic!("stop redis node {}: {e}", self.index));
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let exited = match self.child.lock().unwrap().as_mut() {
                Some(child) => child.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if exited {
                self.child.lock().unwrap().take();
                return;
            }
            if Instant::now() >= deadline {
                self.kill_now();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(&self) {
        self.launch()
            .await
            .unwrap_or_else(|e| panic!("start redis node {}: {e}", self.index));
    }

    async fn command(&self, args: &[&str]) -> String {
        raw_command(self.port, args)
            .await
            .unwrap_or_else(|e| panic!("redis node {}: {e}", self.index))
    }
}

impl LocalCluster {
    /// Starts `count` `redis-server` processes (the program `redis_server`,
    /// a path or a name looked up in PATH) on free 127.0.0.1 ports, each in
    /// a directory of its own under the system's temporary directory, with
    /// `--save "" --appendonly no --maxmemory-policy noeviction`; and a
    /// proxy for each. Waits until every node answers PING.
    ///
    /// # Errors
    ///
    /// When `redis-server` cannot be started (not installed, say) or a node
    /// does not answer.
    pub async fn start(count: usize, redis_server: &Path) -> io::Result<LocalCluster> {
        let root = std::env::temp_dir().join(format!(
            "qs-chaos-{}-{}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root)?;
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            root,
            proxies: ProxyRuntime::start()?,
        };
        for index in 0..count {
            let dir = cluster.root.join(format!("node-{index}"));
            std::fs::create_dir_all(&dir)?;
            let mut last_error = None;
            for _ in 0..PORT_TRIES {
                let port = free_port()?;
                let node = LocalNode {
                    index,
                    redis_server: redis_server.to_owned(),
                    dir: dir.clone(),
                    port,
                    child: Mutex::new(None),
                    proxy: start_proxy(&cluster.proxies.handle, port)?,
                };
                match node.launch().await {
                    Ok(()) => {
                        cluster.nodes.push(node);
                        last_error = None;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(error),
                    Err(error) => {
                        drop(node); // its process and proxy end
                        last_error = Some(error);
                    }
                }
            }
            if let Some(error) = last_error {
                return Err(error);
            }
        }
        Ok(cluster)
    }

    /// The port the replicas connect to (the proxy) of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].proxy.port
    }

    /// `redis://127.0.0.1:<proxy port>` of node `index`.
    pub fn url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.port(index))
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill_now();
        self.proxy.connected.send_replace(false);
        self.proxy.accept.abort();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.nodes.clear(); // the processes end first: then the files go
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[async_trait]
impl ChaosNodes for LocalCluster {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    async fn replica(&self, index: usize) -> RedisReplica {
        let mut config = RedisReplicaConfig::from_url(self.replica_name(index), self.url(index));
        config.request_timeout = REPLICA_TIMEOUT;
        config.connect_timeout = Duration::from_secs(2);
        config.reconnect_delay_min = Duration::from_millis(50);
        config.reconnect_delay_max = Duration::from_millis(500);
        RedisReplica::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect to redis node {index}: {e}"))
    }

    async fn kill(&self, index: usize) {
        self.nodes[index].kill_now();
    }

    async fn stop(&self, index: usize) {
        self.nodes[index].stop().await;
    }

    async fn start(&self, index: usize) {
        self.nodes[index].start().await;
    }

    async fn pause(&self, index: usize) {
        let node = &self.nodes[index];
        signal(node.pid(), "STOP").unwrap_or_else(|e| panic!("pause redis node {index}: {e}"));
    }

    async fn unpause(&self, index: usize) {
        let node = &self.nodes[index];
        signal(node.pid(), "CONT").unwrap_or_else(|e| panic!("unpause redis node {index}: {e}"));
    }

    async fn disconnect(&self, index: usize) {
        self.nodes[index].proxy.connected.send_replace(false);
    }

    async fn reconnect(&self, index: usize) {
        let node = &self.nodes[index];
        node.proxy.connected.send_replace(true);
        let ping = raw_command(node.proxy.port, &["PING"]).await;
        assert!(
            matches!(ping.as_deref(), Ok("+PONG")),
            "redis node {index} not reachable after reconnect: {ping:?}"
        );
    }

    async fn restart_empty(&self, index: usize) {
        let node = &self.nodes[index];
        node.stop().await;
        match std::fs::remove_file(node.dir.join("dump.rdb")) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                panic!("remove the dump of redis node {index}: {error}")
            }
            _ => {}
        }
        node.start().await;
        let keys = node.command(&["DBSIZE"]).await;
        assert_eq!(
            keys, ":0",
            "redis node {index} kept keys across restart_empty"
        );
    }

    async fn save(&self, index: usize) {
        let reply = self.nodes[index].command(&["SAVE"]).await;
        assert_eq!(reply, "+OK", "SAVE on redis node {index}");
    }
}
