//! A coordinator on the three Redis nodes of `docker-compose.yml`, saying
//! what it does: connects, writes a few sessions, reads them back, shows
//! each replica's state and the coordinator's counters, runs one
//! anti-entropy pass — and with `--watch`, keeps a little traffic going and
//! prints the replicas' states every second, so that you can stop and start
//! a node and watch it go Down, come back empty (new epoch, "refilling"),
//! get its hints replayed and be refilled by anti-entropy.
//!
//! ```text
//! docker-compose up -d                    # QS_REDIS_IMAGE=redis:7.0.15-local with no registry
//! cargo run --example cluster             # one pass, then exit
//! cargo run --example cluster -- --watch  # then, in another terminal:
//! docker-compose stop redis-2             #   redis-2: Up -> Suspect -> Down, hints queue up
//! docker-compose start redis-2            #   back EMPTY: new epoch, refilled, readable again
//! ```
//!
//! Options: `--watch`, `--url URL` (repeat it, one per node; replaces the
//! default `redis://127.0.0.1:6381`, `:6382`, `:6383`), `--sessions COUNT`
//! (default 3). The `QS_REDIS_URLS` environment variable (comma-separated
//! URLs) also replaces the defaults; `--url` wins over it. With N nodes the
//! quorums are majorities: W = R = N/2 + 1 (2 of 3). Logs: `RUST_LOG`
//! (default `warn,fred=error`).

use std::sync::Arc;
use std::time::Duration;

use quorum_sessions::replica::redis::{RedisReplica, RedisReplicaConfig};
use quorum_sessions::replica::Replica;
use quorum_sessions::session::{ClientInfo, NewSession, SessionId};
use quorum_sessions::Health;
use quorum_sessions::{
    ClusterConfig, Coordinator, CoordinatorStats, ReplicaState, SessionConfig, SessionStore,
};

const DEFAULT_URLS: [&str; 3] = [
    "redis://127.0.0.1:6381",
    "redis://127.0.0.1:6382",
    "redis://127.0.0.1:6383",
];
const CART: &str = "cart";

struct Options {
    urls: Vec<String>,
    watch: bool,
    sessions: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut urls: Vec<String> = Vec::new();
    let mut options = Options {
        urls: Vec::new(),
        watch: false,
        sessions: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--watch" => options.watch = true,
            "--url" => urls.push(args.next().ok_or("--url needs a redis:// URL")?),
            "--sessions" => {
                let value = args.next().ok_or("--sessions needs a number")?;
                options.sessions = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("--sessions: 1 to 100, not {value:?}"))?;
            }
            "-h" | "--help" => {
                println!("usage: cargo run --example cluster -- [--watch] [--url URL]... [--sessions COUNT]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if urls.is_empty() {
        if let Ok(list) = std::env::var("QS_REDIS_URLS") {
            urls = list
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }
    if urls.is_empty() {
        urls = DEFAULT_URLS.iter().map(|url| (*url).to_owned()).collect();
    }
    options.urls = urls;
    Ok(options)
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn display_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) => {
            let credentials = &rest[..at - scheme.len() - 3];
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***{}", &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn short_epoch(state: &ReplicaState) -> String {
    match state.epoch {
        Some(epoch) => format!(
            "{:08x}{}",
            epoch.id >> 32,
            if epoch.complete { "" } else { " (new)" }
        ),
        None => "unknown".to_owned(),
    }
}

fn describe(state: &ReplicaState) -> String {
    let role = if state.readable {
        "readable"
    } else {
        "refilling (write-only)"
    };
    let mut text = format!(
        "{:<8} {:<7} {:<22} epoch {:<16} hints {}",
        state.name,
        format!("{:?}", state.health),
        role,
        short_epoch(state),
        state.pending_hints
    );
    if state.needs_anti_entropy {
        text.push_str("  (hints overflowed: needs anti-entropy)");
    }
    text
}

fn print_states(coordinator: &Coordinator) {
    for state in coordinator.replica_states() {
        println!("  {}", describe(&state));
    }
}

fn print_stats(stats: &CoordinatorStats) {
    println!(
        "  writes: {} acknowledged, {} failed | reads: {} conclusive, {} unavailable, {} read-repairs",
        stats.writes_acknowledged,
        stats.writes_failed,
        stats.reads_conclusive,
        stats.reads_unavailable,
        stats.read_repairs
    );
    println!(
        "  replica failures: {} | epoch changes: {} | misses not counted (incomplete epoch): {}",
        stats.replica_failures, stats.epochs_changed, stats.inconclusive_misses
    );
    println!(
        "  hints: {} queued, {} replayed, {} pending, {} dropped | anti-entropy: {} passes, {} records sent",
        stats.hints_queued,
        stats.hints_replayed,
        stats.hints_pending,
        stats.hints_dropped,
        stats.anti_entropy_passes,
        stats.anti_entropy_records_sent
    );
}

async fn connect(options: &Options) -> Coordinator {
    let mut replicas: Vec<Arc<dyn Replica>> = Vec::new();
    for (index, url) in options.urls.iter().enumerate() {
        let name = format!("redis-{}", index + 1);
        let mut config = RedisReplicaConfig::from_url(name.clone(), url.clone());
        config.request_timeout = Duration::from_millis(300);
        config.connect_timeout = Duration::from_secs(1);
        config.reconnect_delay_min = Duration::from_millis(50);
        config.reconnect_delay_max = Duration::from_millis(1000);
        match RedisReplica::connect(config).await {
            Ok(replica) => {
                let status = match replica.ping().await {
                    Ok(epoch) => format!(
                        "answers (epoch {:08x}, {})",
                        epoch.id >> 32,
                        if epoch.complete { "complete" } else { "new" }
                    ),
                    Err(error) => format!("NOT answering ({error}): retried in the background"),
                };
                println!("  {name:<8} {}  {status}", display_url(url));
                replicas.push(Arc::new(replica));
            }
            Err(error) => {
                eprintln!("error: {name} ({}): {error}", display_url(url));
                std::process::exit(1);
            }
        }
    }
    let majority = replicas.len() / 2 + 1;
    let mut config = ClusterConfig {
        write_quorum: majority,
        read_quorum: majority,
        request_timeout: Duration::from_millis(300),
        ..ClusterConfig::default()
    };
    config.health.probe_interval_max = Duration::from_secs(1);
    let n = replicas.len();
    match Coordinator::connect(config, replicas).await {
        Ok(coordinator) => {
            println!("coordinator: N = {n}, W = {majority}, R = {majority}");
            coordinator
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}

fn client() -> ClientInfo {
    ClientInfo::default().user_agent("cluster-example/1.0")
}

/// Creates `count` sessions (users `demo-1`, …), each with a cart of two items.
async fn write_sessions(store: &SessionStore, count: usize) -> Result<Vec<SessionId>, String> {
    let mut ids = Vec::new();
    for i in 1..=count {
        let user = format!("demo-{i}");
        let new = NewSession::for_user(&user)
            .role("user")
            .data("email", format!("{user}@example.com"))
            .client(client());
        let mut session = store
            .create(new)
            .await
            .map_err(|e| format!("create a session for {user}: {e}"))?;
        for (sku, price) in [("sku-1", 499), ("sku-2", 1250)] {
            session
                .add_item(
                    CART,
                    sku,
                    serde_json::json!({ "quantity": i, "price_cents": price }),
                )
                .map_err(|e| e.to_string())?;
        }
        store
            .save(&mut session)
            .await
            .map_err(|e| format!("save the cart of {user}: {e}"))?;
        println!(
            "  created session {} for {user}, cart of {} items",
            session.id().redacted(),
            session.items(CART).len()
        );
        ids.push(*session.id());
    }
    Ok(ids)
}

async fn read_sessions(store: &SessionStore, ids: &[SessionId]) -> Result<(), String> {
    for id in ids {
        match store.get(id, &client()).await {
            Ok(Some(session)) => println!(
                "  read session {}: user {}, email {}, cart {:?}",
                id.redacted(),
                session.user().unwrap_or("-"),
                session.get("email").and_then(|v| v.as_str()).unwrap_or("-"),
                session.items(CART).keys().collect::<Vec<_>>()
            ),
            Ok(None) => return Err(format!("session {} not found", id.redacted())),
            Err(error) => return Err(format!("read session {}: {error}", id.redacted())),
        }
    }
    Ok(())
}

/// One round of traffic: load every demo session and save a `tick` value in
/// it. Returns (succeeded, failed).
async fn traffic(store: &SessionStore, ids: &[SessionId], tick: u64) -> (usize, usize) {
    let mut ok = 0;
    let mut failed = 0;
    for id in ids {
        let result = async {
            let mut session = store
                .get(id, &client())
                .await?
                .ok_or_else(|| quorum_sessions::SessionError::Corrupt("demo session vanished"))?;
            session.set("tick", tick)?;
            store.save(&mut session).await
        }
        .await;
        match result {
            Ok(()) => ok += 1,
            Err(error) => {
                failed += 1;
                if !error.is_unavailable() {
                    println!("  !! session {}: {error}", id.redacted());
                }
            }
        }
    }
    (ok, failed)
}

/// What changed between two snapshots of the replica states, in words.
fn transitions(before: &[ReplicaState], after: &[ReplicaState]) -> Vec<String> {
    let mut events = Vec::new();
    for (old, new) in before.iter().zip(after) {
        if old.health != new.health {
            let note = match new.health {
                Health::Down => ": skipped by writes and reads, probed; missed writes become hints",
                Health::Up if old.health == Health::Down => ": answering again",
                _ => "",
            };
            events.push(format!(
                "{}: {:?} -> {:?}{note}",
                new.name, old.health, new.health
            ));
        }
        let (old_id, new_id) = (old.epoch.map(|e| e.id), new.epoch.map(|e| e.id));
        let new_epoch = old_id.is_some() && new_id.is_some() && old_id != new_id;
        if new_epoch {
            events.push(format!(
                "{}: new epoch {}: it restarted empty (or from an old snapshot), so its misses stop counting",
                new.name,
                short_epoch(new)
            ));
        }
        if (old.readable || new_epoch) && !new.readable {
            events.push(format!(
                "{}: write-only until anti-entropy refills it",
                new.name
            ));
        }
        if (!old.readable || new_epoch) && new.readable {
            events.push(format!(
                "{}: refilled by anti-entropy (hints replayed too) and marked complete: readable again",
                new.name
            ));
        }
    }
    events
}

async fn watch(coordinator: &Coordinator, store: &SessionStore, ids: &[SessionId]) {
    println!();
    println!("watching (Ctrl-C to stop): try `docker-compose stop redis-2`, then `docker-compose start redis-2`");
    let mut states = coordinator.replica_states();
    let mut stats = coordinator.stats();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    for tick in 1u64.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let (ok, failed) = traffic(store, ids, tick).await;
        let now_states = coordinator.replica_states();
        let now_stats = coordinator.stats();
        let summary: Vec<String> = now_states
            .iter()
            .map(|s| {
                let role = if s.readable { "" } else { ",refilling" };
                format!("{} {:?}{role} hints={}", s.name, s.health, s.pending_hints)
            })
            .collect();
        println!(
            "[{:>4}s] {} | traffic {ok} ok, {failed} unavailable | hints +{} queued +{} replayed | anti-entropy +{} passes +{} records",
            started.elapsed().as_secs(),
            summary.join(" | "),
            now_stats.hints_queued - stats.hints_queued,
            now_stats.hints_replayed - stats.hints_replayed,
            now_stats.anti_entropy_passes - stats.anti_entropy_passes,
            now_stats.anti_entropy_records_sent - stats.anti_entropy_records_sent,
        );
        for event in transitions(&states, &now_states) {
            println!("         * {event}");
        }
        states = now_states;
        stats = now_stats;
    }
    println!();
    println!("final state:");
    print_states(coordinator);
    print_stats(&coordinator.stats());
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fred=error".into()),
        )
        .init();
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };

    println!("connecting to {} Redis nodes:", options.urls.len());
    let coordinator = connect(&options).await;
    print_states(&coordinator);
    let store = SessionStore::new(coordinator.clone(), SessionConfig::default())
        .expect("valid session configuration");

    println!();
    println!(
        "writing {} sessions (each write is acknowledged by W replicas):",
        options.sessions
    );
    let ids = match write_sessions(&store, options.sessions).await {
        Ok(ids) => ids,
        Err(message) => {
            eprintln!("error: {message}");
            let (up, lost) =
                coordinator
                    .replica_states()
                    .iter()
                    .fold((0, 0), |(up, lost), state| {
                        let answering = state.health != Health::Down;
                        (
                            up + usize::from(answering),
                            lost + usize::from(answering && !state.readable),
                        )
                    });
            if up < coordinator.config().write_quorum {
                eprintln!("(fewer than W nodes answer: is the cluster up? `docker-compose up -d`)");
            } else if lost > 0 {
                eprintln!(
                    "({lost} node(s) answer but lost their data and are not refilled yet; \
                     if more than N - W did, an operator must accept the loss: README, \"Operating it\")"
                );
            }
            print_states(&coordinator);
            std::process::exit(1);
        }
    };

    println!();
    println!("reading them back (each read merges R replicas' answers):");
    if let Err(message) = read_sessions(&store, &ids).await {
        eprintln!("error: {message}");
        std::process::exit(1);
    }

    println!();
    println!("replica states:");
    print_states(&coordinator);
    println!("coordinator stats:");
    print_stats(&coordinator.stats());

    println!();
    println!("one anti-entropy pass (compares every key's copies, repairs the ones that differ):");
    match coordinator.anti_entropy().await {
        Some(report) => println!(
            "  {} keys compared, {} repaired, {} records sent, {} pages, in {:?}; covered {:?}; refilled {:?}",
            report.stats.keys_compared,
            report.stats.keys_repaired,
            report.stats.records_sent,
            report.stats.pages_scanned,
            report.elapsed,
            report.covered,
            report.marked_complete
        ),
        None => println!("  a pass is already running in this coordinator"),
    }

    if options.watch {
        watch(&coordinator, &store, &ids).await;
    }
}
