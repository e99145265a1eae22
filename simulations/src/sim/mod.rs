//! The simulator: the production [`Coordinator`] itself, K of them (app
//! servers with skewed wall clocks), over N simulated Redis servers, on
//! virtual time.
//!
//! Nothing here re-implements a decision of the library. Each app server is
//! a real `Coordinator` built with the public builder — its write path, read
//! path, read-repair, health probes, hint replay, anti-entropy scheduling,
//! lease, refill and bootstrap all run as they run in production — and
//! reaches its replicas through `net::SimLink`s, which implement the
//! crate's [`Replica`] trait over simulated servers (`net`). The runtime
//! is tokio's current-thread scheduler on its paused clock, with `LocalSet`
//! tasks for the clients: one thread, timers in a fixed order, one seeded
//! RNG for the workload and faults and one for the network, so the same
//! seed replays the same run.
//!
//! A run:
//!
//! 1. **Fault phase.** Client operations arrive as a Poisson process, each
//!    on a random app server (`client`); faults start at exponential
//!    intervals (`faults`); every server snapshots its data every second
//!    (a `Crash` restarts from the last one).
//! 2. **Heal and quiesce.** Every fault ends, the workload stops and the
//!    operations in flight finish; the coordinators' own background work
//!    (probes, hint replay, anti-entropy on rejoin and on schedule) brings
//!    the replicas level. If the cluster is quiet but still differs, an
//!    operator asks for an anti-entropy pass ([`Coordinator::anti_entropy`]).
//!    Convergence must happen within `quiesce_bound_ms`.
//! 3. **Audit.** Every created session is read once more, then the final
//!    server states are judged by the checker (`checker::Checker`).
//!
//! [`membership`] runs the same phases while the app servers are rolled
//! through `docs/membership.md`'s steps (a fourth replica added, then
//! removed), one slot at a time (`membership`).
//!
//! [`Coordinator`]: quorum_sessions::Coordinator
//! [`Coordinator::anti_entropy`]: quorum_sessions::Coordinator::anti_entropy
//! [`Replica`]: quorum_sessions::replica::Replica

mod client;
mod clock;
mod faults;
mod membership;
pub(crate) mod net;
mod store;

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use quorum_sessions::config::ReadRepair;
use quorum_sessions::core::hints::HintLimits;
use quorum_sessions::replica::Replica;
use quorum_sessions::{ClusterConfig, Coordinator};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{any_diverged, Checker};
use crate::config::SimConfig;
use crate::report::{Report, RunStats};
use crate::trace::{EventKind, Trace, TraceOptions};
use crate::workload::Workload;
use clock::VirtualClock;
pub use clock::START_UNIX_MS;
pub use membership::{membership, membership_observed, Procedure};
use net::{Net, ServerRules};

/// How often the quiesce phase checks for convergence.
const QUIESCE_CHECK: Duration = Duration::from_millis(50);
/// Audit reads in flight at once.
const AUDIT_CONCURRENCY: usize = 64;
/// Every server snapshots its data this often (a `Crash` restarts from the
/// last snapshot, as a Redis with RDB persistence does).
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Virtual time a run may take at most after the heal before it is
/// abandoned as hung (operations that never end are a liveness bug the
/// report shows).
const DRAIN_BOUND: Duration = Duration::from_secs(120);

/// What the caller wants to watch while a run goes.
#[derive(Default)]
pub struct Observer {
    /// Record a trace.
    pub trace: Option<TraceOptions>,
    /// Called with the number of client operations issued so far, every few
    /// thousand operations.
    pub progress: Option<Box<dyn FnMut(u64)>>,
}

/// Runs one simulation.
///
/// # Errors
///
/// An invalid configuration.
pub fn run(config: &SimConfig) -> anyhow::Result<Report> {
    run_observed(config, Observer::default()).map(|(report, _)| report)
}

/// Runs one simulation with a trace and/or a progress callback.
///
/// # Errors
///
/// An invalid configuration, or a runtime that cannot be built.
pub fn run_observed(
    config: &SimConfig,
    observer: Observer,
) -> anyhow::Result<(Report, Option<Trace>)> {
    config.validate()?;
    watch_panics();
    PANICKED.with(|p| p.set(false));
    let (runtime, local) = virtual_runtime()?;
    let config = config.clone();
    let outcome = local.block_on(&runtime, async move {
        let world = World::start(config, observer, None).await?;
        world.clone().run().await;
        Ok::<_, anyhow::Error>(world.finish())
    });
    drop(local);
    drop(runtime);
    if PANICKED.with(|p| p.replace(false)) {
        anyhow::bail!(
            "a task of the run panicked (see the message above): the library's own background tasks included"
        );
    }
    outcome
}

/// The run's runtime: tokio's current-thread scheduler on its paused clock,
/// and the `LocalSet` the driver's tasks run in.
fn virtual_runtime() -> std::io::Result<(tokio::runtime::Runtime, tokio::task::LocalSet)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    Ok((runtime, tokio::task::LocalSet::new()))
}

thread_local! {
    /// Set when a task on this thread panicked during a run (the library's
    /// background tasks, which tokio would otherwise swallow, included).
    static PANICKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs, once per process, a panic hook that marks the panicking
/// thread's run as failed before the usual report. A run is one thread,
/// so concurrent runs (tests) do not see each other's panics.
fn watch_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            previous(info);
        }));
    });
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Faults,
    Quiesce,
    Audit,
    Done,
}

/// One app server.
pub(crate) struct AppServer {
    pub(crate) coordinator: Coordinator,
    /// Its wall clock's offset from true time, ms.
    pub(crate) offset_ms: Arc<AtomicI64>,
}

/// What the driver's tasks share (never borrowed across an `.await`).
pub(crate) struct Driver {
    pub(crate) rng: ChaCha8Rng,
    pub(crate) workload: Workload,
    pub(crate) checker: Checker,
    pub(crate) stats: RunStats,
    pub(crate) trace: Option<Trace>,
    progress: Option<Box<dyn FnMut(u64)>>,
    pub(crate) phase: Phase,
    pub(crate) issued: u64,
    pub(crate) next_value: u64,
    /// Client operations not answered yet.
    pub(crate) in_flight: usize,
    pub(crate) faults: faults::Faults,
    heal_at_us: Option<u64>,
    converged_at_us: Option<u64>,
    end_us: u64,
}

/// The simulated cluster.
pub(crate) struct World {
    pub(crate) config: SimConfig,
    pub(crate) clock: VirtualClock,
    pub(crate) net: Net,
    /// The app servers by slot. A slot's server is replaced when the
    /// membership scenario rolls it; client operations clone the
    /// coordinator out and never hold the borrow across an `.await`.
    apps: RefCell<Vec<AppServer>>,
    /// Replicas that are not in the cluster (yet, or any more): the
    /// membership scenario's joining and leaving replica. Faults spare
    /// them and convergence and the final check ignore them; all `false`
    /// in every other run.
    retired: RefCell<Vec<bool>>,
    driver: RefCell<Driver>,
    /// The first panic of a task (a driver invariant broken): the run
    /// stops and the panic resumes in the caller.
    panic: RefCell<Option<Box<dyn std::any::Any + Send>>>,
}

/// The library's configuration for each app server: the run's cluster
/// settings, with the simulator's switches mapped onto real settings. "Hints
/// off" sets their age limit to zero: a hint is dropped unless replayed in
/// the millisecond it was queued, and a dropped hint marks its replica for
/// anti-entropy, so those runs lean on anti-entropy instead.
fn cluster_config(config: &SimConfig) -> ClusterConfig {
    let switches = config.switches;
    let mut cluster = config.cluster.clone();
    cluster.hints = if switches.hints {
        config.hints.clone()
    } else {
        // Every hint expires as soon as it is queued: none is replayed.
        HintLimits {
            age_max_ms: 0,
            ..config.hints.clone()
        }
    };
    cluster.handoff_interval = Duration::from_millis(config.tick_ms);
    cluster.anti_entropy.on_rejoin = switches.anti_entropy;
    cluster.anti_entropy.interval = switches
        .anti_entropy
        .then(|| Duration::from_millis(config.anti_entropy.interval_ms));
    cluster.anti_entropy.scan_batch = config.anti_entropy.page_keys;
    cluster
}

/// The replicas an app server runs on and its quorums: one step of a
/// membership change (every replica, with the run's quorums, elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Members {
    /// Replica indexes, in order.
    pub(crate) replicas: Vec<usize>,
    pub(crate) write_quorum: usize,
    pub(crate) read_quorum: usize,
    /// Replicas written to but never read nor marked complete
    /// (`ClusterConfig::write_only`).
    pub(crate) write_only: Vec<usize>,
}

impl Members {
    fn all(config: &SimConfig) -> Members {
        Members {
            replicas: (0..config.replicas).collect(),
            write_quorum: config.write_quorum(),
            read_quorum: config.read_quorum(),
            write_only: Vec::new(),
        }
    }
}

/// Connects one app server (slot `coord`) over `members`, with the
/// run's settings, a writer id and lease owner drawn from `rng`.
async fn connect_app(
    config: &SimConfig,
    net: &Net,
    clock: VirtualClock,
    coord: usize,
    members: &Members,
    offset_ms: &Arc<AtomicI64>,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Coordinator> {
    let mut cluster = cluster_config(config);
    cluster.write_quorum = members.write_quorum;
    cluster.read_quorum = members.read_quorum;
    cluster.write_only = members
        .write_only
        .iter()
        .map(|r| net::replica_name(*r))
        .collect();
    let replicas: Vec<Arc<dyn Replica>> = members
        .replicas
        .iter()
        .map(|&replica| Arc::new(net.link(coord, replica)) as Arc<dyn Replica>)
        .collect();
    Coordinator::builder(cluster, replicas)
        .writer_id(rng.random_range(1..=quorum_sessions::stamp::WRITER_MAX))
        .lease_owner(rng.random())
        .wall_clock(clock.wall_clock(offset_ms.clone()))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl World {
    /// Starts the cluster; the app servers run on `members` (every replica
    /// with the run's quorums when `None`).
    async fn start(
        config: SimConfig,
        observer: Observer,
        members: Option<Members>,
    ) -> anyhow::Result<Rc<World>> {
        let clock = VirtualClock::start();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let rules = ServerRules {
            tombstones: config.switches.tombstones,
            epochs: config.switches.epochs,
            held_stamps: config.switches.held_stamps,
            ttl_margin_ms: config.ttl_margin_ms,
        };
        let net = Net::new(
            &config,
            rules,
            clock,
            ChaCha8Rng::seed_from_u64(rng.random()),
        );
        net.lock().create_cluster();
        let members = members.unwrap_or_else(|| Members::all(&config));
        let skew = config.faults.skew_base_max_ms as i64;
        let mut apps = Vec::new();
        for coord in 0..config.workload.coordinators {
            let offset_ms = Arc::new(AtomicI64::new(rng.random_range(-skew..=skew)));
            let coordinator =
                connect_app(&config, &net, clock, coord, &members, &offset_ms, &mut rng).await?;
            apps.push(AppServer {
                coordinator,
                offset_ms,
            });
        }
        let driver = Driver {
            workload: Workload::new(&config.workload),
            checker: if config.cluster.read_repair == ReadRepair::Blocking {
                Checker::new()
            } else {
                Checker::without_monotonic_reads()
            },
            stats: RunStats::new(config.replicas),
            trace: observer.trace.map(Trace::new),
            progress: observer.progress,
            phase: Phase::Faults,
            issued: 0,
            next_value: 0,
            in_flight: 0,
            faults: faults::Faults::new(&config.faults),
            heal_at_us: None,
            converged_at_us: None,
            end_us: 0,
            rng,
        };
        let retired = RefCell::new(vec![false; config.replicas]);
        Ok(Rc::new(World {
            config,
            clock,
            net,
            apps: RefCell::new(apps),
            retired,
            driver: RefCell::new(driver),
            panic: RefCell::new(None),
        }))
    }

    pub(crate) fn driver(&self) -> RefMut<'_, Driver> {
        self.driver.borrow_mut()
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.clock.elapsed_us()
    }

    /// App server `coord`'s wall clock, ms.
    pub(crate) fn wall_ms(&self, coord: usize) -> u64 {
        self.apps.borrow()[coord].coordinator.now_ms()
    }

    /// The app server in slot `coord` now (a handle: cheap to clone).
    pub(crate) fn coordinator(&self, coord: usize) -> Coordinator {
        self.apps.borrow()[coord].coordinator.clone()
    }

    /// App servers (slots).
    pub(crate) fn app_count(&self) -> usize {
        self.apps.borrow().len()
    }

    /// Slot `coord`'s wall-clock offset (shared by every server the slot
    /// runs: the machine's clock, not the process's).
    pub(crate) fn app_offset(&self, coord: usize) -> Arc<AtomicI64> {
        self.apps.borrow()[coord].offset_ms.clone()
    }

    /// True when replica `replica` is not in the cluster now.
    pub(crate) fn is_retired(&self, replica: usize) -> bool {
        self.retired.borrow()[replica]
    }

    /// The data of the replicas in the cluster now, in replica order.
    fn member_maps<'a>(&self, net: &'a net::NetState) -> Vec<&'a store::RecordStore> {
        let retired = self.retired.borrow();
        net.servers
            .iter()
            .zip(retired.iter())
            .filter(|(_, &gone)| !gone)
            .map(|(s, _)| &s.records)
            .collect()
    }

    /// Adds a trace event about the whole cluster, its line built only when
    /// a trace is being recorded and wants it.
    pub(crate) fn trace(&self, line: impl FnOnce() -> String) {
        self.trace_event(None, EventKind::Cluster, line);
    }

    /// Adds a trace event of `kind` about `key` (`None`: the whole cluster),
    /// its line built only when a trace is being recorded and wants it.
    pub(crate) fn trace_event(
        &self,
        key: Option<&str>,
        kind: EventKind,
        line: impl FnOnce() -> String,
    ) {
        let now = self.now_us();
        let mut driver = self.driver();
        if let Some(trace) = &mut driver.trace {
            if trace.wants(key, kind, now) {
                trace.push(now, key, kind, line());
            }
        }
    }

    /// True when a trace is being recorded.
    pub(crate) fn tracing(&self) -> bool {
        self.driver().trace.is_some()
    }

    /// Runs `task` on the run's thread; a panic in it stops the run and is
    /// resumed by [`check_panic`](Self::check_panic).
    pub(crate) fn spawn(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        let world = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
                world.panic.borrow_mut().get_or_insert(panic);
            }
        });
    }

    /// Resumes the first panic of a task, if any.
    fn check_panic(&self) {
        if let Some(panic) = self.panic.borrow_mut().take() {
            std::panic::resume_unwind(panic);
        }
    }

    fn phase(&self) -> Phase {
        self.driver().phase
    }

    async fn run(self: Rc<Self>) {
        self.spawn(self.clone().snapshots());
        if !self.config.faults.kinds.is_empty() {
            self.spawn(self.clone().inject_faults());
        }
        self.clone().arrivals().await;
        self.heal().await;
        self.check_panic();
        self.quiesce().await;
        self.audit().await;
        self.check_panic();
        let mut driver = self.driver();
        driver.phase = Phase::Done;
        driver.end_us = self.now_us();
    }

    /// Client operations arrive as a Poisson process until `ops` were
    /// issued. Timers fire on whole milliseconds, so the arrivals due by
    /// the current millisecond are issued together.
    async fn arrivals(self: Rc<Self>) {
        let mut next_us = 5_000.0_f64;
        loop {
            tokio::time::sleep_until(self.clock.at_us(next_us as u64)).await;
            // The timer may fire at the start of the millisecond it is due in.
            let now = (self.now_us() as f64).max(next_us);
            while next_us <= now {
                let (coord, op, issued) = {
                    let mut driver = self.driver();
                    let driver = &mut *driver;
                    let coord = driver.rng.random_range(0..self.app_count());
                    let op = driver.workload.next_op(&mut driver.rng);
                    driver.issued += 1;
                    driver.in_flight += 1;
                    if driver.issued.is_multiple_of(4096) {
                        let issued = driver.issued;
                        if let Some(progress) = &mut driver.progress {
                            progress(issued);
                        }
                    }
                    let uniform = 1.0 - driver.rng.random::<f64>();
                    next_us += -uniform.ln() * 1e6 / self.config.workload.ops_per_sec;
                    (coord, op, driver.issued)
                };
                self.spawn(client::issue(self.clone(), coord, op, false));
                if issued >= self.config.ops {
                    return;
                }
            }
        }
    }

    /// Every server snapshots its data every second during the fault phase.
    async fn snapshots(self: Rc<Self>) {
        while self.phase() == Phase::Faults {
            self.net.lock().snapshot_all();
            tokio::time::sleep(SNAPSHOT_INTERVAL).await;
        }
    }

    /// Every fault ends; the workload has stopped. Waits for the
    /// operations in flight (bounded).
    async fn heal(&self) {
        let now = self.now_us();
        {
            let mut driver = self.driver();
            driver.phase = Phase::Quiesce;
            driver.heal_at_us = Some(now);
        }
        self.end_all_faults();
        self.trace(|| "heal: every fault ends, the workload stops".to_owned());
        let started = tokio::time::Instant::now();
        while self.driver().in_flight > 0
            && started.elapsed() < DRAIN_BOUND
            && self.panic.borrow().is_none()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The latest clock any coordinator may read: copies expired by it are
    /// treated as absent when comparing replicas.
    fn expired_before_ms(&self) -> u64 {
        let faults = &self.config.faults;
        self.clock.true_ms() + faults.skew_base_max_ms + faults.skew_jump_max_ms
    }

    fn hints_pending(&self) -> u64 {
        self.apps
            .borrow()
            .iter()
            .map(|app| app.coordinator.stats().hints_pending)
            .sum()
    }

    /// True when the replicas hold the same live data, every server's epoch
    /// is complete (with anti-entropy on) and no hint waits.
    fn converged(&self) -> (bool, bool) {
        let quiet = self.hints_pending() == 0;
        let net = self.net.lock();
        let refilling =
            (0..self.config.replicas).any(|r| !self.is_retired(r) && !net.is_complete(r));
        let maps = self.member_maps(&net);
        let diverged = any_diverged(
            &maps,
            net.server_ms(),
            self.config.ttl_margin_ms,
            self.expired_before_ms(),
        );
        let done = quiet && !diverged && !(self.config.switches.anti_entropy && refilling);
        (done, quiet && (diverged || refilling))
    }

    /// Waits for convergence within the bound. An operator runs a pass
    /// when everything is quiet but the replicas still differ.
    async fn quiesce(self: &Rc<Self>) {
        let heal_at = self.driver().heal_at_us.expect("quiesce follows the heal");
        let bound_us = self.config.quiesce_bound_ms * 1000;
        let operator_pass: Rc<RefCell<bool>> = Rc::new(RefCell::new(false));
        loop {
            tokio::time::sleep(QUIESCE_CHECK).await;
            let (done, needs_pass) = self.converged();
            let now = self.now_us();
            if done {
                self.driver().converged_at_us = Some(now);
                let after = (now - heal_at) / 1000;
                self.trace(|| format!("converged {after} ms after the heal"));
                return;
            }
            if now - heal_at >= bound_us {
                self.trace(|| "not converged within the bound".to_owned());
                return;
            }
            if needs_pass && self.config.switches.anti_entropy && !*operator_pass.borrow() {
                *operator_pass.borrow_mut() = true;
                self.trace(|| "operator asks for an anti-entropy pass".to_owned());
                let (world, running) = (self.clone(), operator_pass.clone());
                self.spawn(async move {
                    let _ = world.coordinator(0).anti_entropy().await;
                    *running.borrow_mut() = false;
                });
            }
        }
    }

    /// Reads every created session once more through the normal read path.
    async fn audit(self: &Rc<Self>) {
        if !self.config.audit_reads {
            return;
        }
        self.driver().phase = Phase::Audit;
        let sessions: Vec<u32> = {
            let driver = self.driver();
            (0..driver.workload.sessions.len() as u32)
                .filter(|&s| driver.workload.sessions[s as usize].created)
                .collect()
        };
        futures::stream::iter(sessions)
            .for_each_concurrent(AUDIT_CONCURRENCY, |session| {
                let coord = session as usize % self.app_count();
                client::read(self.clone(), coord, session, true)
            })
            .await;
    }

    /// Judges the final states and assembles the report.
    fn finish(self: Rc<Self>) -> (Report, Option<Trace>) {
        let expired_before = self.expired_before_ms();
        let mut stats = {
            let net = self.net.lock();
            let maps = self.member_maps(&net);
            let mut driver = self.driver();
            driver.checker.final_check(
                &maps,
                net.server_ms(),
                self.config.ttl_margin_ms,
                expired_before,
            );
            let mut stats = driver.stats.clone();
            stats.messages_sent = net.stats.messages_sent;
            stats.messages_lost = net.stats.messages_lost;
            stats.epochs_refilled = net.stats.epochs_refilled;
            stats
        };
        let mut hints_dropped = 0;
        for app in self.apps.borrow().iter() {
            let s = app.coordinator.stats();
            stats.timeouts += s.replica_failures;
            stats.read_repairs += s.read_repairs;
            stats.read_repairs_short += s.read_repairs_short;
            stats.hints_queued += s.hints_queued;
            stats.hints_replayed += s.hints_replayed;
            hints_dropped += s.hints_dropped;
            stats.hlc_rejections += s.clock_skew_rejections;
            stats.epoch_changes_seen += s.epochs_changed;
            stats.stale_epoch_replies += s.stale_epoch_replies;
            stats.anti_entropy_passes += s.anti_entropy_passes;
            stats.anti_entropy_records_sent += s.anti_entropy_records_sent;
        }
        let mut driver = self.driver();
        let mut trace = driver.trace.take();
        if let Some(trace) = &mut trace {
            trace.flag_keys(driver.checker.final_flagged().iter().map(String::as_str));
        }
        let report = Report::build(
            &self.config,
            driver.issued,
            stats,
            &driver.checker,
            hints_dropped,
            driver.faults.started_counts(),
            driver.heal_at_us,
            driver.converged_at_us,
            driver.end_us,
        );
        (report, trace)
    }
}

/// What [`full_cluster_restart`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FullRestartReport {
    /// Sessions created (and read back) in the run.
    pub sessions: u64,
    /// Writes acknowledged after the servers' last snapshot, which the
    /// restart therefore lost.
    pub writes_after_snapshot: u64,
    /// Reads after the restart, before the operator's decision, that
    /// answered (found, or proven absent by a tombstone or a past expiry).
    pub answered_before_decision: u64,
    /// Of those, answers that contradict what a quorum read returned just
    /// before the power cycle: a logout undone or a live session "not
    /// found" (what the snapshots lack, served as the truth).
    pub wrong_before_decision: u64,
    /// Reads after the operator's decision that were still `Unavailable`.
    pub unavailable_after_decision: u64,
}

/// The whole cluster restarts from its snapshots (every Redis reloads its
/// RDB file, as after a power cycle): runs a fault-free workload, waits for
/// convergence, takes a snapshot, writes more (creates and deletes the
/// snapshot will lack), stops every server and starts every one from its
/// snapshot, in new epochs. The production coordinators must then answer
/// every read `Unavailable` until the operator decides; the operator runs
/// the README's runbook (one anti-entropy pass, then
/// [`accept_data_loss`](quorum_sessions::Coordinator::accept_data_loss) on
/// every replica), and reads answer again.
///
/// # Errors
///
/// An invalid configuration, or a runtime that cannot be built.
pub fn full_cluster_restart(config: &SimConfig) -> anyhow::Result<FullRestartReport> {
    let mut config = config.clone();
    config.faults.kinds.clear();
    config.validate()?;
    let (runtime, local) = virtual_runtime()?;
    local.block_on(&runtime, async move {
        let world = World::start(config, Observer::default(), None).await?;
        world.clone().arrivals().await;
        world.heal().await;
        world.quiesce().await;
        world.check_panic();
        world.net.lock().snapshot_all();
        // Writes the snapshot will lack: new sessions and logouts.
        let sessions: Vec<u32> = {
            let driver = world.driver();
            (0..driver.workload.sessions.len() as u32)
                .filter(|&s| driver.workload.sessions[s as usize].created)
                .collect()
        };
        let mut report = FullRestartReport {
            sessions: sessions.len() as u64,
            ..FullRestartReport::default()
        };
        let coordinator = &world.coordinator(0);
        for &session in sessions.iter().step_by(7) {
            let (key, cap) = {
                let driver = world.driver();
                let info = driver.workload.session(session);
                (info.key.clone(), info.cap_ms)
            };
            if coordinator
                .write(&key, quorum_sessions::Mutation::delete(cap))
                .await
                .is_ok()
            {
                report.writes_after_snapshot += 1;
            }
        }
        // What a quorum read returns before the power cycle: the truth.
        let mut truth = Vec::with_capacity(sessions.len());
        for &session in &sessions {
            let key = world.driver().workload.session(session).key.clone();
            let found = coordinator.read(&key).await.map(|r| r.is_some()).ok();
            truth.push(found);
        }
        // The power cycle: every server stops, then starts from its snapshot.
        {
            let mut net = world.net.lock();
            for replica in 0..world.config.replicas {
                net.stop(replica);
            }
            for replica in 0..world.config.replicas {
                net.start(replica, true);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // background ticks see it
        for (&session, truth) in sessions.iter().zip(&truth) {
            let key = world.driver().workload.session(session).key.clone();
            for coord in 0..world.app_count() {
                if let Ok(answer) = world.coordinator(coord).read(&key).await {
                    report.answered_before_decision += 1;
                    if truth.is_some_and(|found| found != answer.is_some()) {
                        report.wrong_before_decision += 1;
                    }
                }
            }
        }
        // The operator's decision (README runbook): one pass merges every
        // snapshot into the others (a logout in any snapshot wins), then
        // the loss is accepted on every replica.
        let _ = coordinator.anti_entropy().await;
        for replica in 0..world.config.replicas {
            coordinator
                .accept_data_loss(replica)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // every app server learns it
        for &session in &sessions {
            let key = world.driver().workload.session(session).key.clone();
            for coord in 0..world.app_count() {
                if world.coordinator(coord).read(&key).await.is_err() {
                    report.unavailable_after_decision += 1;
                }
            }
        }
        world.check_panic();
        Ok(report)
    })
}
