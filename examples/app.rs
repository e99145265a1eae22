//! The seed tutorial's web app on replicated sessions (axum 0.8).
//!
//! ```text
//! cargo run --example app -- --memory                      # three in-memory replicas
//! cargo run --example app                                  # Redis at 127.0.0.1:6381-6383
//! cargo run --example app -- --memory --insecure-cookies   # plain-HTTP localhost only
//! ```
//!
//! `cargo run --example app --features metrics -- --memory` also fills
//! `GET /metrics` (Prometheus text) with the library's metrics.
//!
//! Options: `--addr HOST:PORT` (default `127.0.0.1:3000`), `--memory`,
//! `--insecure-cookies` (drops `Secure` from the cookie so a browser sends
//! it over plain HTTP; refused unless the address is loopback). The CSRF
//! secret comes from `APP_CSRF_SECRET` (64+ hex digits, the same on every
//! app server); without it a random one is made, valid for this process only.
//!
//! Demo users: `alice` / `demo123`, `admin` / `admin123`.
//!
//! ```text
//! curl -si -X POST localhost:3000/login -H 'content-type: application/json' \
//!      -d '{"username":"alice","password":"demo123"}'
//! ```

#[path = "app/routes.rs"]
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use quorum_sessions::replica::memory::InMemoryReplica;
use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::session::{Csrf, FingerprintConfig, SessionConfig, SessionStore};
use quorum_sessions::{ClusterConfig, Coordinator};

const REDIS_PORTS: [u16; 3] = [6381, 6382, 6383];

struct Options {
    addr: SocketAddr,
    memory: bool,
    insecure_cookies: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        addr: "127.0.0.1:3000".parse().expect("valid address"),
        memory: false,
        insecure_cookies: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--memory" => options.memory = true,
            "--insecure-cookies" => options.insecure_cookies = true,
            "--addr" => {
                let value = args.next().ok_or("--addr needs HOST:PORT")?;
                options.addr = value
                    .parse()
                    .map_err(|_| format!("bad address {value:?}"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.insecure_cookies && !options.addr.ip().is_loopback() {
        return Err("--insecure-cookies is only allowed on a loopback address".into());
    }
    Ok(options)
}

fn csrf_secret() -> Vec<u8> {
    if let Ok(hex) = std::env::var("APP_CSRF_SECRET") {
        let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        match bytes {
            Some(bytes) if bytes.len() >= 32 && hex.len() % 2 == 0 => return bytes,
            _ => tracing::warn!("APP_CSRF_SECRET is not 64+ hex digits: using a random secret"),
        }
    } else {
        tracing::warn!(
            "APP_CSRF_SECRET not set: a random CSRF secret, valid for this process only"
        );
    }
    rand::random::<[u8; 32]>().to_vec()
}

async fn replicas(memory: bool) -> Result<Vec<Arc<dyn Replica>>, String> {
    if memory {
        return Ok((1..=3)
            .map(|i| Arc::new(InMemoryReplica::new(format!("memory-{i}"))) as Arc<dyn Replica>)
            .collect());
    }
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for (i, port) in REDIS_PORTS.into_iter().enumerate() {
        let config = RedisReplicaConfig::from_url(
            format!("redis-{}", i + 1),
            format!("redis://127.0.0.1:{port}"),
        );
        let replica = RedisReplica::connect(config)
            .await
            .map_err(|error| format!("redis on port {port}: {error}"))?;
        replicas.push(Arc::new(replica));
    }
    Ok(replicas)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    if options.insecure_cookies {
        tracing::warn!("--insecure-cookies: the session cookie is sent over plain HTTP (localhost development only)");
    }
    let prometheus = routes::prometheus();
    let replicas = match replicas(options.memory).await {
        Ok(replicas) => replicas,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    };
    let coordinator = Coordinator::connect(ClusterConfig::default(), replicas)
        .await
        .expect("valid cluster configuration");
    let config = SessionConfig {
        fingerprint: Some(FingerprintConfig::default()),
        ..SessionConfig::default()
    };
    let store = SessionStore::new(coordinator, config).expect("valid session configuration");
    let state = routes::AppState {
        store: store.clone(),
        csrf: Csrf::new(&csrf_secret()).expect("32 bytes"),
        users: Arc::new(routes::demo_users()),
        secure_cookies: !options.insecure_cookies,
        metrics: Some(prometheus),
    };
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .unwrap_or_else(|error| panic!("cannot listen on {}: {error}", options.addr));
    tracing::info!(addr = %options.addr, memory = options.memory, "listening");
    let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .expect("server error");
    // The server took its last request: let the writes past W land and the
    // hints reach their replicas, so the others have less to repair.
    let report = store.coordinator().shutdown(SHUTDOWN_DEADLINE).await;
    tracing::info!(?report, "stopped");
}

/// How long the coordinator's shutdown may take (inside a typical
/// orchestrator's 30 s grace period, after the HTTP server's drain).
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Ctrl-C, or SIGTERM (what an orchestrator sends) on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "no SIGTERM handler: ctrl-c only");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: draining requests");
}
