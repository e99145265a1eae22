//! The discrete-event simulator.
//!
//! One seeded RNG ([`ChaCha8Rng`]), one virtual clock (µs), one event queue
//! ordered by `(time, sequence number)`: the same seed replays the same run,
//! event for event. Nothing reads the wall clock or iterates a `HashMap`.
//!
//! The world holds N simulated replicas (records by session key, updated
//! with the crate's [`apply_merge`], plus an [`Epoch`]) and K coordinators
//! (app servers). Each coordinator owns the crate's pure core pieces — an
//! [`Hlc`], a [`HealthTracker`], an [`EpochTable`], [`HintQueues`] — and runs
//! every request through the core's [`WriteTally`] and [`ReadPlan`], exactly
//! as the async coordinator does, but on virtual time.
//!
//! Messages travel over per-link FIFO channels (one connection per
//! coordinator and replica, as with a pipelined Redis client), with latencies
//! drawn from [`LatencyModel`] mixtures; faults drop, delay or reorder
//! nothing else. Module map:
//!
//! - `mod.rs`: the world, the event loop, message transport, replica side;
//! - `write.rs`: the write path; `read.rs`: the read path;
//! - `repair.rs`: ticks (probes, hint replay), anti-entropy, heal, quiesce,
//!   audit reads; `faults.rs`: fault injection.
//!
//! [`apply_merge`]: quorum_sessions::replica::apply_merge
//! [`Epoch`]: quorum_sessions::replica::Epoch
//! [`Hlc`]: quorum_sessions::stamp::Hlc
//! [`HealthTracker`]: quorum_sessions::core::health::HealthTracker
//! [`EpochTable`]: quorum_sessions::core::epoch::EpochTable
//! [`HintQueues`]: quorum_sessions::core::hints::HintQueues
//! [`WriteTally`]: quorum_sessions::core::quorum::WriteTally
//! [`ReadPlan`]: quorum_sessions::core::read::ReadPlan
//! [`LatencyModel`]: crate::latency::LatencyModel

mod faults;
mod read;
mod repair;
mod store;
mod write;

use std::rc::Rc;

use quorum_sessions::core::anti_entropy::AntiEntropyPass;
use quorum_sessions::core::epoch::{EpochChange, EpochTable};
use quorum_sessions::core::health::HealthTracker;
use quorum_sessions::core::hints::{Hint, HintQueues};
use quorum_sessions::core::quorum::WriteTally;
use quorum_sessions::core::read::{ReadPlan, ReadResult};
use quorum_sessions::replica::{apply_merge, apply_merge_in_place, Epoch, MergeMode, MergeStatus};
use quorum_sessions::stamp::Hlc;
use quorum_sessions::{Record, Stamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{Checker, ReadToken, WriteInfo};
use crate::config::{duration_us, FaultKind, SimConfig};
use crate::latency::{LatencyModel, Mixture};
use crate::queue::EventQueue;
use crate::report::{Report, RunStats};
use crate::slab::{Slab, SlabKey};
use crate::trace::{Trace, TraceOptions};
use crate::workload::{SessionIndex, SessionKey, Workload};
use store::RecordStore;

/// Virtual time, µs since the start of the run.
pub use crate::queue::Time;

/// Event queue lanes (see [`crate::queue`]): events already in time order
/// when scheduled. Hedge timers and deadlines armed at send time are always
/// the same delay ahead; a link's deliveries, replies and the deadlines armed
/// when its requests arrive follow the link's FIFO order.
const HEDGE_LANE: usize = 0;
const SEND_DEADLINE_LANE: usize = 1;

fn deliver_lane(link: usize) -> usize {
    2 + 3 * link
}

fn reply_lane(link: usize) -> usize {
    3 + 3 * link
}

fn deliver_deadline_lane(link: usize) -> usize {
    4 + 3 * link
}

fn lane_count(links: usize) -> usize {
    2 + 3 * links
}

/// The Unix time (ms) at which every run starts.
pub const START_UNIX_MS: u64 = 1_700_000_000_000;
/// No single message takes longer than this (µs).
const LATENCY_CAP_US: u64 = 2_000_000;
/// How often the quiesce phase checks for convergence (µs).
const QUIESCE_CHECK_US: u64 = 50_000;
/// Audit reads in flight at once.
const AUDIT_CONCURRENCY: usize = 64;

type OpId = SlabKey;
type RequestId = SlabKey;

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
/// An invalid configuration.
pub fn run_observed(
    config: &SimConfig,
    observer: Observer,
) -> anyhow::Result<(Report, Option<Trace>)> {
    config.validate()?;
    let mut world = World::new(config.clone(), observer);
    world.run_to_end();
    let trace = world.trace.take();
    Ok((world.into_report(), trace))
}

#[derive(Debug)]
enum Event {
    /// The next client operation arrives.
    Arrival,
    /// A request reaches its replica.
    Deliver(Request),
    /// A reply reaches its coordinator.
    Reply(Reply),
    /// A request's deadline.
    Timeout { coord: usize, request: RequestId },
    /// A read's hedge timer.
    Hedge { op: OpId },
    /// A coordinator's periodic work: probes, hint replay.
    Tick { coord: usize },
    /// Draw the next fault.
    NextFault,
    /// A fault ends.
    FaultEnd { fault: usize },
    /// The periodic anti-entropy timer.
    AntiEntropyTimer,
    /// One page of the running anti-entropy pass.
    AntiEntropyStep,
    /// Every fault ends; the workload has stopped.
    Heal,
    /// Has repair converged yet?
    QuiesceCheck,
}

#[derive(Debug)]
struct Request {
    coord: usize,
    replica: usize,
    id: RequestId,
    key: Rc<str>,
    body: RequestBody,
    /// The coordinator's clock when it sent the request (the merge's `now`).
    now_ms: u64,
    /// When the coordinator gives up on the request.
    deadline: Time,
    /// The deadline event is already scheduled (the request itself arrives
    /// after it).
    deadline_armed: bool,
}

#[derive(Debug)]
enum RequestBody {
    Read,
    Merge {
        delta: Rc<Record>,
        mode: MergeMode,
    },
    /// Tombstones off: remove the key.
    Remove,
    Ping,
}

#[derive(Debug)]
struct Reply {
    coord: usize,
    replica: usize,
    id: RequestId,
    body: ReplyBody,
}

#[derive(Debug)]
enum ReplyBody {
    Read {
        record: Option<Record>,
        epoch: Epoch,
    },
    Merge {
        status: MergeStatus,
        epoch: Epoch,
        held_max: Option<Stamp>,
    },
    Ping {
        epoch: Epoch,
    },
}

impl ReplyBody {
    fn epoch(&self) -> Epoch {
        match self {
            ReplyBody::Read { epoch, .. }
            | ReplyBody::Merge { epoch, .. }
            | ReplyBody::Ping { epoch } => *epoch,
        }
    }
}

/// Why a coordinator sent a request.
#[derive(Debug)]
enum Purpose {
    Write(OpId),
    Read(OpId),
    /// Read-repair; `Some` when the read waits for it (blocking mode).
    Repair(Option<OpId>),
    /// Hint replay; the hint is rebuilt from these if the replay fails.
    Hint {
        delta: Rc<Record>,
        enqueued_at_ms: u64,
    },
    Probe,
}

#[derive(Debug)]
struct PendingRequest {
    replica: usize,
    key: Rc<str>,
    purpose: Purpose,
}

/// One app server.
#[derive(Debug)]
struct Coordinator {
    hlc: Hlc,
    health: HealthTracker,
    epochs: EpochTable,
    hints: HintQueues,
    /// Offset of this server's wall clock from true time, ms.
    offset_ms: i64,
    pending: Slab<PendingRequest>,
}

/// One Redis server.
#[derive(Debug)]
struct SimReplica {
    /// Records by key (a slot per session: a lookup compares no keys).
    records: RecordStore,
    epoch: Epoch,
    crashed: bool,
    /// Active `Slow` faults.
    slow: u32,
    /// Loss probability of messages to and from it.
    loss: f64,
}

/// True while Redis keeps `record`: until its effective expiry plus the
/// `PEXPIREAT` margin, on the replica's clock.
fn alive(record: &Record, now_ms: u64, margin_ms: u64) -> bool {
    record.effective_expiry_ms().saturating_add(margin_ms) > now_ms
}

impl SimReplica {
    /// The record under `key` unless Redis would have dropped it by now.
    fn live(&self, key: SessionKey, now_ms: u64, margin_ms: u64) -> Option<&Record> {
        self.records
            .get(key)
            .filter(|r| alive(r, now_ms, margin_ms))
    }

    /// Drops `key` if its TTL passed (what Redis does lazily on access).
    fn expire(&mut self, key: SessionKey, now_ms: u64, margin_ms: u64) {
        if self.live(key, now_ms, margin_ms).is_none() {
            self.records.remove(key);
        }
    }
}

#[derive(Debug)]
struct WriteOp {
    coord: usize,
    session: SessionIndex,
    key: Rc<str>,
    /// `None` for a key removal (tombstones off).
    delta: Option<Rc<Record>>,
    info: WriteInfo,
    tally: WriteTally,
    /// The client has its answer.
    answered: bool,
    acked: bool,
    outstanding: usize,
    invoked_at: Time,
}

#[derive(Debug)]
enum ReadState {
    Planning,
    /// Blocking read-repair: waiting for the merged record to be on W replicas.
    Repairing {
        result: ReadResult,
        holding: usize,
        pending: usize,
    },
    Answered,
}

#[derive(Debug)]
struct ReadOp {
    coord: usize,
    key: Rc<str>,
    plan: ReadPlan,
    token: ReadToken,
    state: ReadState,
    outstanding: usize,
    invoked_at: Time,
    audit: bool,
}

#[derive(Debug)]
enum Op {
    Write(WriteOp),
    /// Boxed: a read carries its plan, its checker token and its result.
    Read(Box<ReadOp>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Quiesce,
    Audit,
    Done,
}

#[derive(Debug)]
struct AntiEntropyRun {
    pass: AntiEntropyPass,
    /// `(coordinator, replica)` hint-drop flags set when the pass began.
    flags: Vec<(usize, usize)>,
}

/// The simulated cluster and everything that happens to it.
pub(crate) struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: EventQueue<Event>,
    replicas: Vec<SimReplica>,
    coords: Vec<Coordinator>,
    /// Active partitions per link (`coord * N + replica`).
    partitions: Vec<u32>,
    /// Last arrival time per link and direction (FIFO channels).
    fifo_to_replica: Vec<Time>,
    fifo_to_coord: Vec<Time>,
    slow_latency: LatencyModel,
    ops: Slab<Op>,
    workload: Workload,
    checker: Checker,
    stats: RunStats,
    trace: Option<Trace>,
    progress: Option<Box<dyn FnMut(u64)>>,
    phase: Phase,
    issued: u64,
    next_value: u64,
    faults: faults::Faults,
    anti_entropy: Option<AntiEntropyRun>,
    anti_entropy_due: bool,
    heal_at: Option<Time>,
    converged_at: Option<Time>,
    audit_next: usize,
    audit_in_flight: usize,
    in_audit_loop: bool,
    /// Changes applied to any replica (for cheap convergence checks).
    mutations: u64,
    /// `mutations` when a convergence check last found divergence.
    diverged_at_mutations: Option<u64>,
    request_timeout_us: u64,
    hedge_delay_us: Option<u64>,
}

impl World {
    fn new(config: SimConfig, observer: Observer) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let n = config.replicas;
        let k = config.workload.coordinators;
        let replicas = (0..n)
            .map(|_| SimReplica {
                records: RecordStore::default(),
                // Created with the cluster: complete from the start.
                epoch: Epoch {
                    id: rng.random(),
                    complete: true,
                },
                crashed: false,
                slow: 0,
                loss: 0.0,
            })
            .collect();
        let skew = config.faults.skew_base_max_ms as i64;
        let coords = (0..k)
            .map(|_| Coordinator {
                hlc: Hlc::new(
                    rng.random_range(1..=quorum_sessions::stamp::WRITER_MAX),
                    crate::config::duration_ms(config.cluster.max_clock_skew),
                ),
                health: HealthTracker::new(n, &config.cluster.health),
                epochs: EpochTable::new(n),
                hints: HintQueues::new(n, config.hints.clone()),
                offset_ms: rng.random_range(-skew..=skew),
                pending: Slab::default(),
            })
            .collect();
        let blend = |leg: &Mixture| leg.blended(&config.slow_component, config.slow_weight);
        let slow_latency = LatencyModel {
            write: config.latency.write.clone(),
            ack: blend(&config.latency.ack),
            read: config.latency.read.clone(),
            response: blend(&config.latency.response),
        };
        let faults = faults::Faults::new(&config.faults);
        World {
            request_timeout_us: duration_us(config.cluster.request_timeout),
            hedge_delay_us: config.cluster.hedge_delay.map(duration_us),
            workload: Workload::new(&config.workload),
            rng,
            now: 0,
            queue: EventQueue::new(lane_count(n * k)),
            replicas,
            coords,
            partitions: vec![0; n * k],
            fifo_to_replica: vec![0; n * k],
            fifo_to_coord: vec![0; n * k],
            slow_latency,
            ops: Slab::default(),
            checker: Checker::new(),
            stats: RunStats::new(n),
            trace: observer.trace.map(Trace::new),
            progress: observer.progress,
            phase: Phase::Faults,
            issued: 0,
            next_value: 0,
            faults,
            anti_entropy: None,
            anti_entropy_due: false,
            heal_at: None,
            converged_at: None,
            audit_next: 0,
            audit_in_flight: 0,
            in_audit_loop: false,
            mutations: 0,
            diverged_at_mutations: None,
            config,
        }
    }

    fn run_to_end(&mut self) {
        // Every coordinator learns the replicas' epochs first.
        for coord in 0..self.coords.len() {
            for replica in 0..self.replicas.len() {
                self.send(
                    coord,
                    replica,
                    Purpose::Probe,
                    Rc::from(""),
                    RequestBody::Ping,
                );
            }
            let stagger = self.rng.random_range(0..self.config.tick_ms * 1000);
            self.schedule(stagger, Event::Tick { coord });
        }
        self.schedule(5_000, Event::Arrival);
        if !self.config.faults.kinds.is_empty() {
            let first = self.fault_interval_us();
            self.schedule(first, Event::NextFault);
        }
        if self.config.switches.anti_entropy {
            self.schedule(
                self.config.anti_entropy.interval_ms * 1000,
                Event::AntiEntropyTimer,
            );
        }
        while self.phase != Phase::Done {
            let Some((at, event)) = self.queue.pop() else {
                panic!("the event queue ran dry before the run ended");
            };
            assert!(at >= self.now, "time never goes back");
            self.now = at;
            self.dispatch(event);
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Arrival => self.on_arrival(),
            Event::Deliver(request) => self.on_deliver(request),
            Event::Reply(reply) => self.on_reply(reply),
            Event::Timeout { coord, request } => self.on_timeout(coord, request),
            Event::Hedge { op } => self.on_hedge(op),
            Event::Tick { coord } => self.on_tick(coord),
            Event::NextFault => self.on_next_fault(),
            Event::FaultEnd { fault } => self.on_fault_end(fault),
            Event::AntiEntropyTimer => self.on_anti_entropy_timer(),
            Event::AntiEntropyStep => self.on_anti_entropy_step(),
            Event::Heal => self.on_heal(),
            Event::QuiesceCheck => self.on_quiesce_check(),
        }
    }

    fn schedule(&mut self, delay: Time, event: Event) {
        self.queue.push(self.now + delay, event);
    }

    /// Schedules a hedge timer: always the same delay ahead, so the timers
    /// wait in a FIFO lane rather than in the heap.
    fn schedule_hedge(&mut self, delay: Time, op: OpId) {
        self.queue
            .push_lane(HEDGE_LANE, self.now + delay, Event::Hedge { op });
    }

    /// The true Unix time, ms: the replicas' clock.
    fn replica_ms(&self) -> u64 {
        START_UNIX_MS + self.now / 1000
    }

    /// Coordinator `coord`'s wall clock, ms.
    fn wall_ms(&self, coord: usize) -> u64 {
        let true_ms = self.replica_ms() as i64;
        u64::try_from(true_ms + self.coords[coord].offset_ms).expect("clocks stay after 1970")
    }

    fn link(&self, coord: usize, replica: usize) -> usize {
        coord * self.replicas.len() + replica
    }

    /// Adds a trace line about `key` (`None`: the whole cluster), built only
    /// when a trace is being recorded and wants it.
    fn trace(&mut self, key: Option<&str>, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            if trace.wants(key, self.now) {
                trace.push(self.now, line());
            }
        }
    }

    fn fault_interval_us(&mut self) -> Time {
        let uniform = 1.0 - self.rng.random::<f64>();
        let ms = -uniform.ln() * self.config.faults.mean_interval_ms;
        (ms * 1000.0) as Time + 1
    }

    /// True when a message on this link is lost (partition or loss draw).
    fn lost(&mut self, coord: usize, replica: usize) -> bool {
        if self.partitions[self.link(coord, replica)] > 0 {
            return true;
        }
        let loss = self.replicas[replica].loss;
        loss > 0.0 && self.rng.random_bool(loss)
    }

    /// Sends a request and arms its deadline.
    fn send(
        &mut self,
        coord: usize,
        replica: usize,
        purpose: Purpose,
        key: Rc<str>,
        body: RequestBody,
    ) -> RequestId {
        let id = self.coords[coord].pending.insert(PendingRequest {
            replica,
            key: key.clone(),
            purpose,
        });
        // The deadline event is scheduled only once the simulator knows the
        // reply will miss it (lost, dropped, or late): a deadline that finds
        // its request answered does nothing, so skipping it changes nothing
        // but the size of the event queue.
        let timeout = self.request_timeout_us;
        let deadline = self.now + timeout;
        if self.lost(coord, replica) {
            self.stats.messages_lost += 1;
            let at = self.now + timeout;
            self.queue.push_lane(
                SEND_DEADLINE_LANE,
                at,
                Event::Timeout { coord, request: id },
            );
            self.trace(Some(&key), || {
                format!("c{coord} -> r{replica} {} {key}: lost", body_name(&body))
            });
            return id;
        }
        let leg = match body {
            RequestBody::Read | RequestBody::Ping => &self.config.latency.read,
            RequestBody::Merge { .. } | RequestBody::Remove => &self.config.latency.write,
        };
        let latency = leg.sample_us(&mut self.rng, LATENCY_CAP_US);
        let link = self.link(coord, replica);
        let arrival = (self.now + latency).max(self.fifo_to_replica[link] + 1);
        self.fifo_to_replica[link] = arrival;
        let now_ms = self.wall_ms(coord);
        self.stats.messages_sent += 1;
        let deadline_armed = arrival >= deadline;
        if deadline_armed {
            let at = self.now + timeout;
            self.queue.push_lane(
                SEND_DEADLINE_LANE,
                at,
                Event::Timeout { coord, request: id },
            );
        }
        let request = Request {
            coord,
            replica,
            id,
            key,
            body,
            now_ms,
            deadline,
            deadline_armed,
        };
        // Arrivals on a link are in time order (FIFO): a lane of their own.
        self.queue
            .push_lane(deliver_lane(link), arrival, Event::Deliver(request));
        id
    }

    /// The replica side: applies the request and sends the reply back.
    fn on_deliver(&mut self, request: Request) {
        let Request {
            coord,
            replica: index,
            id,
            key,
            body,
            now_ms,
            deadline,
            deadline_armed,
        } = request;
        let arm_deadline = |world: &mut World| {
            if !deadline_armed {
                // Deliveries on a link come in send order, so their
                // deadlines do too: a lane per link.
                let lane = deliver_deadline_lane(world.link(coord, index));
                world
                    .queue
                    .push_lane(lane, deadline, Event::Timeout { coord, request: id });
            }
        };
        if self.replicas[index].crashed {
            arm_deadline(self);
            self.trace(Some(&key), || {
                format!("r{index} is down: {} {key} dropped", body_name(&body))
            });
            return;
        }
        let replica_ms = self.replica_ms();
        let margin = self.config.ttl_margin_ms;
        let replica = &mut self.replicas[index];
        let epoch = replica.epoch;
        // Every request but a ping is about a session's record.
        let record_key = || SessionKey::parse(&key).expect("requests name session keys");
        let reply = match body {
            RequestBody::Ping => ReplyBody::Ping { epoch },
            RequestBody::Read => {
                let record_key = record_key();
                let record = match replica.records.get(record_key) {
                    Some(stored) if alive(stored, replica_ms, margin) => Some(stored.clone()),
                    Some(_) => {
                        replica.records.remove(record_key); // Redis drops it on access
                        None
                    }
                    None => None,
                };
                ReplyBody::Read { record, epoch }
            }
            RequestBody::Merge { delta, mode } => {
                // One lookup: a copy past its TTL is what Redis would have
                // dropped, so it merges as an absent key.
                let record_key = record_key();
                let (status, held_max) = match replica.records.get_mut(record_key) {
                    Some(slot) if alive(slot, replica_ms, margin) => {
                        let held_max = slot.max_stamp();
                        (apply_merge_in_place(slot, &delta, mode, now_ms), held_max)
                    }
                    slot => {
                        let (status, merged) = apply_merge(None, &delta, mode, now_ms);
                        let merged = merged.expect("a merge into an absent key applies");
                        match slot {
                            Some(slot) => *slot = merged,
                            None => {
                                replica.records.insert(record_key, merged);
                            }
                        }
                        (status, None)
                    }
                };
                if status == MergeStatus::Applied {
                    self.mutations += 1;
                }
                ReplyBody::Merge {
                    status,
                    epoch,
                    held_max,
                }
            }
            RequestBody::Remove => {
                self.mutations += 1;
                let held_max = replica
                    .records
                    .remove(record_key())
                    .and_then(|r| r.max_stamp());
                ReplyBody::Merge {
                    status: MergeStatus::Applied,
                    epoch,
                    held_max,
                }
            }
        };
        if self.lost(coord, index) {
            self.stats.messages_lost += 1;
            arm_deadline(self);
            self.trace(Some(&key), || {
                format!("r{index} -> c{coord} reply for {key}: lost")
            });
            return;
        }
        let slow = self.replicas[index].slow > 0;
        let model = if slow {
            &self.slow_latency
        } else {
            &self.config.latency
        };
        let leg = match reply {
            ReplyBody::Read { .. } | ReplyBody::Ping { .. } => &model.response,
            ReplyBody::Merge { .. } => &model.ack,
        };
        let latency = leg.sample_us(&mut self.rng, LATENCY_CAP_US);
        let link = self.link(coord, index);
        let arrival = (self.now + latency).max(self.fifo_to_coord[link] + 1);
        self.fifo_to_coord[link] = arrival;
        if arrival >= deadline {
            arm_deadline(self);
        }
        let reply = Reply {
            coord,
            replica: index,
            id,
            body: reply,
        };
        self.queue
            .push_lane(reply_lane(link), arrival, Event::Reply(reply));
    }

    /// A reply reached its coordinator: health, epoch, then the purpose.
    fn on_reply(&mut self, reply: Reply) {
        let Reply {
            coord,
            replica,
            id,
            body,
        } = reply;
        let Some(pending) = self.coords[coord].pending.remove(id) else {
            return; // already timed out
        };
        assert_eq!(
            pending.replica, replica,
            "a reply comes from the replica asked"
        );
        let key = pending.key;
        let epoch = body.epoch();
        let coordinator = &mut self.coords[coord];
        coordinator.health.on_success(replica);
        let change = coordinator.epochs.observe(replica, epoch);
        if change == EpochChange::Changed {
            self.stats.epoch_changes_seen += 1;
            self.anti_entropy_due = true;
            self.trace(None, || {
                format!(
                    "c{coord} sees r{replica} in a new epoch {:x} (complete: {})",
                    epoch.id, epoch.complete
                )
            });
        }
        match (pending.purpose, body) {
            (
                Purpose::Write(op),
                ReplyBody::Merge {
                    status, held_max, ..
                },
            ) => {
                self.observe_stamp(coord, held_max);
                self.on_write_reply(op, replica, Some(status));
                self.settle_write_request(op);
            }
            (Purpose::Read(op), ReplyBody::Read { record, epoch }) => {
                let seen = record.as_ref().and_then(|r| r.max_stamp());
                self.observe_stamp(coord, seen);
                self.on_read_answer(op, replica, record, epoch);
            }
            (
                Purpose::Repair(op),
                ReplyBody::Merge {
                    status, held_max, ..
                },
            ) => {
                self.observe_stamp(coord, held_max);
                if let Some(op) = op {
                    self.on_repair_reply(op, status == MergeStatus::Applied);
                }
            }
            (
                Purpose::Hint { .. },
                ReplyBody::Merge {
                    status, held_max, ..
                },
            ) => {
                self.observe_stamp(coord, held_max);
                self.stats.hints_replayed += 1;
                self.trace(Some(&key), || {
                    format!("c{coord} replayed a hint for {key} to r{replica}: {status:?}")
                });
            }
            (Purpose::Probe, ReplyBody::Ping { .. }) => {}
            (purpose, body) => panic!("reply {body:?} does not match {purpose:?}"),
        }
    }

    /// The HLC receive rule for a stamp seen in a reply.
    fn observe_stamp(&mut self, coord: usize, seen: Option<Stamp>) {
        if let Some(seen) = seen {
            let now_ms = self.wall_ms(coord);
            if self.coords[coord].hlc.observe(seen, now_ms).is_err() {
                self.stats.hlc_rejections += 1;
            }
        }
    }

    /// A request's deadline passed without a reply.
    fn on_timeout(&mut self, coord: usize, request: RequestId) {
        let Some(pending) = self.coords[coord].pending.remove(request) else {
            return; // answered in time
        };
        let now_ms = self.wall_ms(coord);
        let replica = pending.replica;
        let key = pending.key;
        if self.coords[coord].health.on_failure(replica, now_ms) {
            self.trace(None, || format!("c{coord} marks r{replica} down"));
        }
        self.stats.timeouts += 1;
        match pending.purpose {
            Purpose::Write(op) => {
                self.on_write_reply(op, replica, None);
                self.settle_write_request(op);
            }
            Purpose::Read(op) => self.on_read_failure(op, replica),
            Purpose::Repair(op) => {
                if let Some(op) = op {
                    self.on_repair_reply(op, false);
                }
            }
            Purpose::Hint {
                delta,
                enqueued_at_ms,
            } => {
                let hint = Hint {
                    key: key.to_string(),
                    delta: Rc::try_unwrap(delta).unwrap_or_else(|shared| (*shared).clone()),
                    enqueued_at_ms,
                };
                let now_ms = self.wall_ms(coord);
                self.coords[coord]
                    .hints
                    .restore(replica, vec![hint], now_ms);
            }
            Purpose::Probe => {}
        }
    }

    /// The next client operation (fault phase only).
    fn on_arrival(&mut self) {
        if self.phase != Phase::Faults {
            return;
        }
        let coord = self.rng.random_range(0..self.coords.len());
        let op = self.workload.next_op(&mut self.rng);
        self.issue_client_op(coord, op);
        self.issued += 1;
        if self.issued.is_multiple_of(4096) {
            if let Some(progress) = &mut self.progress {
                progress(self.issued);
            }
        }
        if self.issued >= self.config.ops {
            self.schedule(0, Event::Heal);
            return;
        }
        let uniform = 1.0 - self.rng.random::<f64>();
        let gap_us = -uniform.ln() * 1e6 / self.config.workload.ops_per_sec;
        self.schedule(gap_us as Time, Event::Arrival);
    }

    /// Frees an operation once its client has the answer and every request
    /// it sent has settled.
    fn release_if_done(&mut self, op: OpId) {
        let (done, audit) = match self.ops.get(op) {
            Some(Op::Write(write)) => (write.outstanding == 0 && write.answered, false),
            Some(Op::Read(read)) => (
                read.outstanding == 0 && matches!(read.state, ReadState::Answered),
                read.audit,
            ),
            None => (false, false),
        };
        if done {
            self.ops.free(op);
            if audit {
                self.audit_in_flight -= 1;
                self.maybe_continue_audit();
            }
        }
    }

    fn into_report(self) -> Report {
        let World {
            config,
            stats,
            checker,
            coords,
            faults,
            heal_at,
            converged_at,
            now,
            issued,
            ..
        } = self;
        let hint_stats = coords
            .iter()
            .flat_map(|c| (0..config.replicas).map(move |r| c.hints.stats(r)))
            .collect::<Vec<_>>();
        Report::build(
            &config,
            issued,
            stats,
            &checker,
            &hint_stats,
            faults.started_counts(),
            heal_at,
            converged_at,
            now,
        )
    }
}

fn body_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Read => "read",
        RequestBody::Merge {
            mode: MergeMode::Create,
            ..
        } => "create",
        RequestBody::Merge { .. } => "merge",
        RequestBody::Remove => "remove",
        RequestBody::Ping => "ping",
    }
}

/// Fault kinds in report order, with their counts.
pub type FaultCounts = Vec<(FaultKind, u64)>;
