//! Local `redis-server` processes for the benchmarks: 127.0.0.1 only, a free
//! port, no persistence, a private working directory; killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fred::prelude::*;

/// The benchmarks run on mimalloc, as we recommend for app servers: with
/// glibc's allocator, allocation dominates the client's CPU in a refill
/// (BENCHMARKS.md, refill section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a benchmark waits for a started server to accept connections
/// (30 s: a server under valgrind takes seconds to start on a busy machine).
const START_ATTEMPTS: u32 = 1_200;
const START_POLL: Duration = Duration::from_millis(25);

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// Its working directory (a replica writes the synced dump there).
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` with `extra` arguments after the defaults.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(&[], extra)
    }

    /// Starts `redis-server` under callgrind (`valgrind --tool=callgrind`),
    /// its profile dumps (`callgrind_control --dump`) going to
    /// `out_dir/cg.<pid>.out.<n>`.
    #[allow(dead_code)] // the replication bench only
    pub fn start_callgrind(out_dir: &std::path::Path) -> Self {
        let out = format!("--callgrind-out-file={}/cg.%p.out", out_dir.display());
        Self::start_with(&["valgrind", "--tool=callgrind", "--quiet", &out], &[])
    }

    /// Starts `redis-server` behind the `wrapper` command (e.g. valgrind)
    /// when there is one.
    fn start_with(wrapper: &[&str], extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("qs-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("server directory");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("redis-server");
                command
            }
            None => Command::new("redis-server"),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (and valgrind for --instructions) must be installed");
        RedisServer { child, port, dir }
    }

    /// The server's process id (valgrind's, which is the server's, under
    /// callgrind).
    #[allow(dead_code)] // the replication bench only
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server has used so far (Linux; `None` elsewhere).
    #[allow(dead_code)] // the replication bench only
    pub fn cpu(&self) -> Option<Duration> {
        process_cpu(self.child.id())
    }
}

/// CPU time used by every thread of process `pid`, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU); `None` where
/// there is no such file (not Linux).
#[allow(dead_code)] // the replication bench only
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain fred client for any Redis-protocol endpoint (`redis://host:port`).
#[allow(dead_code)] // the replication bench only
pub async fn client_url(url: &str) -> Client {
    let config = Config::from_url(url).unwrap_or_else(|e| panic!("bad url {url:?}: {e}"));
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(600))
        // fred leaves TCP_NODELAY off by default; the library's replica
        // turns it on, and so do these clients (the same floor).
        .with_connection_config(|c| c.tcp.nodelay = Some(true))
        .build()
        .expect("client");
    client
        .init()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    client
}

/// A plain fred client, once the server accepts connections (a fred client
/// whose first `init` failed can hang on the next one, so connect once).
pub async fn client(port: u16) -> Client {
    let mut attempts = 0;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        attempts += 1;
        assert!(
            attempts < START_ATTEMPTS,
            "redis-server on port {port} did not start"
        );
        tokio::time::sleep(START_POLL).await;
    }
    client_url(&format!("redis://127.0.0.1:{port}")).await
}

/// The environment variable `name` parsed as a `T`, if set and valid.
pub fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}
