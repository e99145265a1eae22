//! `qs-admin`: the operator's tool for a quorum-sessions cluster, over the
//! same Redis URLs as the application (`--redis`, repeated, or the variable
//! `QS_REDIS_URLS`).
//!
//! - `status`: each replica's health, epoch (complete or refilling), keys,
//!   memory and eviction policy, and whether reads and writes are served.
//! - `inspect <session-id>`: the record on every replica side by side, the
//!   merged view, and what differs (values hidden unless `--show-values`).
//! - `repair [--dry-run]`: one anti-entropy pass with a progress line and a
//!   report (a dry run compares and writes nothing).
//! - `accept-data-loss`: the operator's decision when more replicas lost
//!   their data than anti-entropy can refill (reads answer 503 until then).
//! - `chaos [--scenario a,c,...]`: the test suite's fault scenarios (kill,
//!   2 of 3 down, pause, restart empty, partition, old snapshot, concurrent
//!   field updates) on a local cluster it starts itself (3 `redis-server`
//!   processes on 127.0.0.1, never a remote address), with a live progress
//!   line; prints the fault table and every claim that broke.
//!
//! Built with the `cli` feature: `cargo run --features cli --bin qs-admin --
//! status`. Exit status: 0 when the command did what it says, 1 on an error
//! (and when a `chaos` scenario broke a claim), 2 when `status` finds the
//! cluster not ready (scriptable).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use quorum_sessions::chaos::local::LocalCluster;
use quorum_sessions::chaos::{Scenario, ScenarioReport, TABLE_HEADER};
use quorum_sessions::coordinator::{NotReadyReason, Readiness};
use quorum_sessions::recovery::PassStats;
use quorum_sessions::session::keys::session_key;
use quorum_sessions::{
    AntiEntropyOptions, ClusterConfig, Coordinator, ReadRepair, Record, SessionId, SessionStore,
    StoredFormat,
};

#[derive(Parser, Debug)]
#[command(
    name = "qs-admin",
    version,
    about = "Operate a quorum-sessions cluster"
)]
struct Cli {
    /// A replica's Redis URL, in the application's order (repeat the flag);
    /// default: the URLs in the variable named by --redis-env.
    #[arg(long = "redis", value_name = "URL", global = true)]
    redis: Vec<String>,
    /// The variable holding the URLs (separated by commas or spaces) when
    /// no --redis is given.
    #[arg(long, default_value = "QS_REDIS_URLS", global = true)]
    redis_env: String,
    /// W, as the application sets it (default: a majority).
    #[arg(short = 'w', long, global = true)]
    write_quorum: Option<usize>,
    /// R, as the application sets it (default: a majority).
    #[arg(short = 'r', long, global = true)]
    read_quorum: Option<usize>,
    /// Per-request deadline, in milliseconds.
    #[arg(long, default_value_t = 2_000, global = true)]
    timeout_ms: u64,
    /// A replica the application holds write-only (joining or leaving,
    /// docs/membership.md), by name (host:port); repeat the flag.
    #[arg(long = "write-only", value_name = "NAME", global = true)]
    write_only: Vec<String>,
    /// The stored format the application writes (docs/upgrades.md): 1
    /// while a previous build still runs, else 2.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2), global = true)]
    stored_format: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Each replica's health, epoch, keys, memory and eviction policy.
    Status,
    /// One session's record on every replica, merged, and what differs.
    Inspect {
        /// The session id (32 hex characters, as in the cookie).
        session_id: String,
        /// Print the values too (they are session data: hidden by default).
        #[arg(long)]
        show_values: bool,
    },
    /// One anti-entropy pass: compare every key, repair what differs.
    Repair {
        /// Compare and report only: nothing is written.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark replicas that lost their data complete, when too many did for
    /// anti-entropy to refill them (the data they lost stays lost).
    AcceptDataLoss {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run the test suite's fault scenarios on a local cluster of 3
    /// `redis-server` processes (127.0.0.1 only) and print the fault table.
    Chaos {
        /// The scenarios, by letter, comma-separated (default: all): a
        /// SIGKILL, b 2 of 3 down, c pause, d restart empty, e partition,
        /// f old snapshot after deletes, g concurrent field updates.
        #[arg(long, value_name = "LETTERS", value_delimiter = ',')]
        scenario: Vec<String>,
        /// The redis-server program (a path, or a name looked up in PATH).
        #[arg(long, value_name = "PATH", default_value = "redis-server")]
        redis_server: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The scenarios run app servers and their workload on two threads, as
    // the test suite does; the other commands are sequential.
    let runtime = match cli.command {
        Command::Chaos { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => Err(error.into()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("qs-admin: {error}");
            ExitCode::from(1)
        }
    }
}

type Failure = Box<dyn std::error::Error>;

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Chaos {
        ref scenario,
        ref redis_server,
    } = cli.command
    {
        // Options that would not apply: refused rather than ignored.
        if !cli.redis.is_empty() {
            return Err("chaos starts its own local cluster: it takes no --redis".into());
        }
        if cli.write_quorum.is_some() || cli.read_quorum.is_some() {
            return Err(
                "chaos runs the test suite's scenarios: W = R = 2 of 3, no -w or -r".into(),
            );
        }
        return chaos(scenario, redis_server).await;
    }
    let decides = matches!(
        cli.command,
        Command::Repair { .. } | Command::AcceptDataLoss { .. }
    );
    if decides && (cli.write_quorum.is_none() || cli.read_quorum.is_none()) {
        // A refill is proven complete from N - W + 1 sources: a guessed W
        // could mark a replica complete that lacks acknowledged writes.
        return Err(
            "repair and accept-data-loss decide with the application's quorums: \
                    give -w and -r as the application sets them"
                .into(),
        );
    }
    let coordinator = connect(&cli).await?;
    let code = match cli.command {
        Command::Status => status(&coordinator).await,
        Command::Inspect {
            ref session_id,
            show_values,
        } => inspect(&coordinator, session_id, show_values).await?,
        Command::Repair { dry_run } => repair(&coordinator, dry_run).await?,
        Command::AcceptDataLoss { yes } => accept_data_loss(&coordinator, yes).await?,
        Command::Chaos { .. } => unreachable!("chaos connects to no cluster"),
    };
    coordinator.shutdown(Duration::from_secs(5)).await;
    Ok(code)
}

/// A coordinator over the application's replicas that starts no repair by
/// itself and reads without repairing: only `repair` and
/// `accept-data-loss` write.
async fn connect(cli: &Cli) -> Result<Coordinator, Failure> {
    let mut config = ClusterConfig {
        request_timeout: Duration::from_millis(cli.timeout_ms),
        read_repair: ReadRepair::Off,
        ..ClusterConfig::default()
    };
    config.anti_entropy.on_rejoin = false;
    config.anti_entropy.interval = None;
    // Pointed at a subset of the replicas, a bootstrap would mark them
    // complete: looking must never decide.
    config.bootstrap_new_cluster = false;
    config.write_only = cli.write_only.clone();
    let format = match cli.stored_format {
        1 => StoredFormat::V1,
        _ => StoredFormat::V2,
    };
    let builder = SessionStore::builder()
        .cluster_config(config)
        .stored_format(format);
    let builder = if cli.redis.is_empty() {
        builder.redis_from_env(&cli.redis_env)
    } else {
        builder.redis(&cli.redis)
    };
    // Both or neither: a default for one would need N, which only the
    // builder knows (it parses the URLs).
    let builder = match (cli.write_quorum, cli.read_quorum) {
        (None, None) => builder,
        (Some(w), Some(r)) => builder.quorum(w, r),
        _ => return Err("give both -w and -r, or neither (majorities)".into()),
    };
    Ok(builder.connect_coordinator().await?)
}

async fn status(coordinator: &Coordinator) -> ExitCode {
    let states = coordinator.replica_states();
    let infos =
        futures::future::join_all(coordinator.replicas().iter().map(|r| r.describe())).await;
    let config = coordinator.config();
    println!(
        "{} replicas, W = {}, R = {}",
        coordinator.replica_count(),
        config.write_quorum,
        config.read_quorum
    );
    println!(
        "{:<24} {:<9} {:<20} {:<10} {:>10} {:>12}  eviction",
        "replica", "health", "epoch", "data", "keys", "memory"
    );
    for (state, info) in states.iter().zip(infos) {
        let (epoch, data) = match state.epoch {
            Some(epoch) if state.write_only => (format!("{:016x}", epoch.id), "write-only"),
            Some(epoch) if epoch.complete => (format!("{:016x}", epoch.id), "complete"),
            Some(epoch) => (format!("{:016x}", epoch.id), "refilling"),
            None => ("-".to_owned(), "unknown"),
        };
        let (keys, memory, policy) = match info {
            Ok(info) => (
                info.keys.map_or("-".to_owned(), |k| k.to_string()),
                info.used_memory_bytes.map_or("-".to_owned(), bytes),
                match info.eviction_policy.as_deref() {
                    Some("noeviction") => "noeviction".to_owned(),
                    Some(other) => format!("{other} (UNSAFE: may evict sessions)"),
                    None => "-".to_owned(),
                },
            ),
            Err(error) => ("-".to_owned(), "-".to_owned(), format!("({error})")),
        };
        println!(
            "{:<24} {:<9} {:<20} {:<10} {:>10} {:>12}  {}",
            state.name,
            format!("{:?}", state.health),
            epoch,
            data,
            keys,
            memory,
            policy
        );
        if state.pending_hints > 0 {
            println!("{:<24} {} hinted writes waiting", "", state.pending_hints);
        }
    }
    match coordinator.readiness() {
        Readiness::Ready => {
            println!("ready: reads and writes are served");
            ExitCode::SUCCESS
        }
        Readiness::NotReady(not_ready) => {
            println!(
                "NOT READY: {:?}: {} reachable, {} readable; writes need {}, reads need {} readable",
                not_ready.reason,
                not_ready.reachable,
                not_ready.readable,
                not_ready.write_quorum,
                not_ready.read_quorum
            );
            if not_ready.reason == NotReadyReason::OperatorNeeded {
                println!(
                    "more replicas lost their data than anti-entropy can refill: \
                     see `qs-admin accept-data-loss`"
                );
            }
            ExitCode::from(2)
        }
    }
}

async fn inspect(
    coordinator: &Coordinator,
    session_id: &str,
    show_values: bool,
) -> Result<ExitCode, Failure> {
    let id = SessionId::parse(session_id.trim())?;
    let key = session_key(&id);
    let now_ms = coordinator.now_ms();
    let replicas = coordinator.replicas();
    let reads = futures::future::join_all(replicas.iter().map(|r| r.read(&key))).await;
    let mut merged: Option<Record> = None;
    let mut copies = Vec::new();
    println!("session {}", id.redacted());
    for (replica, reply) in replicas.iter().zip(reads) {
        match reply {
            Ok(reply) => {
                let epoch = if reply.epoch.complete {
                    "complete"
                } else {
                    "refilling: a miss proves nothing"
                };
                match &reply.record {
                    None => println!("  {:<24} no record ({epoch})", replica.name()),
                    Some(record) => {
                        println!(
                            "  {:<24} {} ({epoch})",
                            replica.name(),
                            describe_record(record, now_ms)
                        );
                        merged = Some(match merged {
                            None => record.clone(),
                            Some(acc) => Record::merge(&acc, record, now_ms),
                        });
                    }
                }
                copies.push((replica.name().to_owned(), reply.record));
            }
            Err(error) => println!("  {:<24} unreadable: {error}", replica.name()),
        }
    }
    let Some(merged) = merged else {
        println!("no replica holds this session");
        return Ok(ExitCode::SUCCESS);
    };
    println!("merged: {}", describe_record(&merged, now_ms));
    println!(
        "  {:<28} {:<34} {}",
        "field",
        "stamp (ms ago, counter, writer)",
        copies
            .iter()
            .map(|(name, _)| format!("{name:<16}"))
            .collect::<String>()
    );
    let mut differs = 0;
    for (name, entry) in &merged.fields {
        let stamp = format!(
            "{} ms, {}, {:012x}",
            now_ms.saturating_sub(entry.stamp.physical_ms),
            entry.stamp.logical,
            entry.stamp.writer
        );
        let mut cells = String::new();
        let mut same = true;
        for (_, copy) in &copies {
            let cell = match copy.as_ref().and_then(|c| c.fields.get(name)) {
                Some(held) if held == entry => "=".to_owned(),
                Some(held) if held.stamp < entry.stamp => {
                    same = false;
                    "older".to_owned()
                }
                Some(_) => {
                    same = false;
                    "other".to_owned()
                }
                None => {
                    same = false;
                    "missing".to_owned()
                }
            };
            cells.push_str(&format!("{cell:<16}"));
        }
        differs += usize::from(!same);
        let value = match &entry.value {
            None => "removed".to_owned(),
            Some(value) if show_values => format!("{:?}", String::from_utf8_lossy(value)),
            Some(value) => format!("{} bytes", value.len()),
        };
        println!("  {name:<28} {stamp:<34} {cells}{value}");
    }
    if differs == 0 {
        println!("every replica that holds it agrees on every field");
    } else {
        println!(
            "{differs} field(s) differ: a read at R or `qs-admin repair` brings the copies together"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_record(record: &Record, now_ms: u64) -> String {
    let state = if record.is_tombstone() {
        "tombstone (logged out / deleted)".to_owned()
    } else {
        format!("{} fields", record.fields.len())
    };
    let expiry = record.effective_expiry_ms();
    let expiry = if expiry <= now_ms {
        "expired".to_owned()
    } else {
        format!("expires in {} s", (expiry - now_ms) / 1000)
    };
    format!("{state}, {expiry}, format {}", record.format)
}

async fn repair(coordinator: &Coordinator, dry_run: bool) -> Result<ExitCode, Failure> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}")?);
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress_bar = bar.clone();
    let options = AntiEntropyOptions {
        dry_run,
        progress: Some(Arc::new(move |stats: &PassStats| {
            progress_bar.set_message(format!(
                "{} pages, {} keys compared, {} differ",
                stats.pages_scanned, stats.keys_compared, stats.keys_repaired
            ));
        })),
    };
    let report = coordinator.anti_entropy_with(options).await;
    bar.finish_and_clear();
    let Some(report) = report else {
        return Err("no pass ran: another server holds the anti-entropy lease \
                    (its pass is running), or a majority of the replicas is unreachable; \
                    try again later"
            .into());
    };
    let verb = if report.dry_run { "to send" } else { "sent" };
    println!(
        "{}: {} keys compared, {} differed, {} records {verb}, {} pages, in {:.1} s ({:.0} keys/s)",
        if report.dry_run { "dry run" } else { "repair" },
        report.stats.keys_compared,
        report.stats.keys_repaired,
        report.stats.records_sent,
        report.stats.pages_scanned,
        report.elapsed.as_secs_f64(),
        report.keys_per_sec()
    );
    for (name, count) in &report.sent_to {
        println!("  {name}: {count} records {verb}");
    }
    println!("covered: {}", report.covered.join(", "));
    if !report.marked_complete.is_empty() {
        println!(
            "refilled and marked complete: {}",
            report.marked_complete.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn accept_data_loss(coordinator: &Coordinator, yes: bool) -> Result<ExitCode, Failure> {
    let states = coordinator.replica_states();
    let lost: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, state)| !state.write_only && state.epoch.is_some_and(|e| !e.complete))
        .map(|(index, _)| index)
        .collect();
    let unreachable: Vec<&str> = states
        .iter()
        .filter(|state| state.epoch.is_none())
        .map(|state| state.name.as_str())
        .collect();
    if !unreachable.is_empty() {
        return Err(format!(
            "unreachable: {}; bring every replica back first, so that nothing is decided without it",
            unreachable.join(", ")
        )
        .into());
    }
    if lost.is_empty() {
        println!("every replica is complete: nothing to accept");
        return Ok(ExitCode::SUCCESS);
    }
    if let Readiness::NotReady(not_ready) = coordinator.readiness() {
        if not_ready.reason != NotReadyReason::OperatorNeeded {
            return Err(format!(
                "the cluster is not ready for another reason ({:?}): nothing to accept; \
                 see `qs-admin status`",
                not_ready.reason
            )
            .into());
        }
    } else {
        return Err(format!(
            "{} refilling, but enough replicas are complete for anti-entropy to refill them: \
             run `qs-admin repair` instead (it loses nothing)",
            lost.iter()
                .map(|&i| states[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into());
    }
    println!("These replicas restarted without their data (or from an older snapshot):");
    for &index in &lost {
        println!("  {}", states[index].name);
    }
    for line in [
        "Too few replicas kept their data to refill them. Accepting first copies what the",
        "others hold into them (one repair pass), then marks them complete:",
        "  - writes acknowledged only by replicas that lost them are lost (sessions",
        "    created, data saved), and sessions may read older values;",
        "  - logouts and deletions newer than their snapshot may be undone.",
        "The alternative is to empty every replica (every user logs in again).",
    ] {
        println!("{line}");
    }
    if !yes {
        print!("Type 'accept' to mark them complete: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "accept" {
            println!("nothing changed");
            return Ok(ExitCode::from(1));
        }
    }
    // What survives anywhere reaches every replica before any is trusted:
    // marked complete first, two replicas that both lost a session would
    // answer "not found" for it although a third holds it.
    let Some(pass) = coordinator.anti_entropy().await else {
        return Err(
            "the repair pass could not run (another server holds the anti-entropy \
                    lease, or a majority is unreachable): nothing marked; try again"
                .into(),
        );
    };
    println!(
        "repair pass: {} keys compared, {} records copied",
        pass.stats.keys_compared, pass.stats.records_sent
    );
    if pass.covered.len() != states.len() {
        return Err(format!(
            "the repair pass covered only {}: nothing marked; try again",
            pass.covered.join(", ")
        )
        .into());
    }
    for index in lost {
        let name = &states[index].name;
        // The epoch the pass refilled: one that restarted since is refused.
        let epoch = states[index].epoch.expect("lost replicas have an epoch").id;
        match coordinator.accept_data_loss_of(index, epoch).await {
            Ok(true) => println!("{name}: marked complete"),
            Ok(false) => println!("{name}: its epoch changed meanwhile; run the command again"),
            Err(error) => println!("{name}: {error}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the chosen scenarios one after the other, each on a fresh local
/// cluster (a scenario assumes empty nodes, and a broken one must not leave
/// its fault to the next), then prints the table and what broke.
async fn chaos(letters: &[String], redis_server: &Path) -> Result<ExitCode, Failure> {
    let mut chosen = Vec::new();
    for letter in letters {
        let letter = letter.trim();
        match Scenario::from_letter(letter) {
            Some(scenario) => chosen.push(scenario),
            None => return Err(format!("no scenario {letter:?}: the scenarios are a to g").into()),
        }
    }
    if chosen.is_empty() {
        chosen = Scenario::ALL.to_vec();
    }
    chosen.sort();
    chosen.dedup();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}")?);
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for scenario in chosen {
        let name = scenario.name();
        bar.set_message(format!("{name}: starting 3 redis-server"));
        let cluster = Arc::new(LocalCluster::start(3, redis_server).await?);
        // A task of its own: a panic ends the scenario, not the run, and
        // the cluster is dropped (its processes killed) either way.
        let mut task = tokio::spawn({
            let (cluster, bar, name) = (cluster.clone(), bar.clone(), name.clone());
            async move {
                let progress = move |message: &str| bar.set_message(format!("{name}: {message}"));
                scenario.run(cluster.as_ref(), &progress).await
            }
        });
        let outcome = tokio::select! {
            outcome = &mut task => outcome,
            () = interrupted() => {
                task.abort();
                let _ = task.await; // its clone of the cluster is dropped
                drop(cluster);
                bar.finish_and_clear();
                return Err("interrupted: the local cluster is stopped".into());
            }
        };
        drop(cluster);
        let rows = match outcome {
            Ok(rows) => rows,
            Err(error) => {
                let why = match error.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a panic".to_owned()),
                    Err(_) => "cancelled".to_owned(),
                };
                vec![ScenarioReport::did_not_finish(
                    &name,
                    format!("panicked: {why}"),
                )]
            }
        };
        let broken: usize = rows.iter().map(|row| row.failures().len()).sum();
        let checked: usize = rows.iter().map(|row| row.claims.len()).sum();
        bar.suspend(|| {
            eprintln!(
                "{name}: {} claims checked, {}",
                checked,
                if broken == 0 {
                    "all held".to_owned()
                } else {
                    format!("{broken} broken")
                }
            )
        });
        reports.extend(rows);
    }
    bar.finish_and_clear();
    print!("{TABLE_HEADER}");
    for report in &reports {
        print!("{}", report.table_row());
    }
    let mut broken = 0;
    for report in &reports {
        for claim in report.failures() {
            if broken == 0 {
                println!();
                println!("broken claims:");
            }
            broken += 1;
            println!("  {}: {claim}", report.name);
        }
    }
    if broken > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Ctrl-C or SIGTERM (a terminal closed, a supervisor stopping the run):
/// either way the local cluster's processes are stopped.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
