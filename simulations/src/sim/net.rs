//! The simulated network and Redis servers, behind the crate's own
//! [`Replica`] trait: each app server's [`Coordinator`] talks to a
//! [`SimLink`] per replica exactly as it talks to a `RedisReplica`.
//!
//! - **Connections.** Each link has two connections, as `RedisReplica` has:
//!   the main one (reads, merges, pings, epoch marks, leases) and the bulk
//!   one (anti-entropy's scans, `read_many`, `merge_many`). Each connection
//!   is FIFO in both directions, like one pipelined TCP connection; the two
//!   reorder freely against each other, so a late anti-entropy reply can
//!   carry an epoch older than one the main connection already showed.
//! - **Latency** is drawn per message from the run's latency model (the
//!   slow model while a `Slow` fault is on). Virtual time is tokio's paused
//!   clock, whose timers fire on whole milliseconds: every message takes at
//!   least one.
//! - **Loss and partitions**: a lost request or reply is never answered; the
//!   coordinator's own deadline ends the call, as it would a real one.
//! - **A server that is down** answers nothing. One that restarts comes back
//!   with its data from its last snapshot (`Crash`) or empty
//!   (`RestartEmpty`), and in both cases in a new epoch that is not
//!   complete, as a Redis whose run id changed. `Flush` empties a running
//!   server (an operator's `FLUSHALL`): its epoch key goes with the data.
//! - **SCAN** pages are sometimes empty with a cursor that is not `"0"`,
//!   as Redis's are (empty hash buckets).
//!
//! Nothing here decides anything for the coordinator: it only delivers,
//! delays, loses and applies, with the crate's [`merge_stored`] (the merge
//! step `InMemoryReplica` uses too).
//!
//! [`Coordinator`]: quorum_sessions::Coordinator
//! [`merge_stored`]: quorum_sessions::replica::merge_stored

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use quorum_sessions::replica::{
    merge_stored, Epoch, MergeMode, MergeReply, MergeStatus, ReadReply, Replica, ScanPage,
};
use quorum_sessions::{Record, ReplicaError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::clock::VirtualClock;
use super::store::RecordStore;
use crate::config::SimConfig;
use crate::latency::{LatencyModel, Mixture};
use crate::workload::SessionKey;

/// No single message takes longer than this (µs).
const LATENCY_CAP_US: u64 = 2_000_000;
/// Probability that a SCAN call returns an empty page with a cursor that is
/// not `"0"` (Redis does so when the buckets it visited were empty).
const EMPTY_SCAN_PAGE_PROBABILITY: f64 = 0.2;

/// Which of a link's two connections a request travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Main = 0,
    Bulk = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Read,
    Write,
}

/// One simulated Redis server.
#[derive(Debug)]
pub(crate) struct Server {
    /// Records by session key.
    pub(crate) records: RecordStore,
    /// `None` when the epoch key is gone (restarted, flushed): the next
    /// request creates a new, incomplete epoch, as the scripts do.
    epoch: Option<Epoch>,
    /// The records as of the last snapshot (`Crash` restarts from them).
    snapshot: Option<RecordStore>,
    pub(crate) down: bool,
    /// Active `Slow` faults.
    pub(crate) slow: u32,
    /// Loss probability of messages to and from it.
    pub(crate) loss: f64,
    lease: Option<(u64, u64)>,
}

/// Switches that make the simulated servers behave like a naive store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerRules {
    /// Off: a tombstone delta removes the key instead (no delete-wins).
    pub(crate) tombstones: bool,
    /// Off: a server keeps one complete epoch whatever happens to its data
    /// (as if the epoch marker were stored apart from the data).
    pub(crate) epochs: bool,
    /// Off: merge replies carry no held stamp.
    pub(crate) held_stamps: bool,
    /// Redis drops a key this long after its effective expiry (ms).
    pub(crate) ttl_margin_ms: u64,
}

/// Counters of the network.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetStats {
    pub(crate) messages_sent: u64,
    pub(crate) messages_lost: u64,
    /// Epochs marked complete on a server (refills finished).
    pub(crate) epochs_refilled: u64,
}

/// Everything on the far side of the coordinators' replica links.
#[derive(Debug)]
pub(crate) struct NetState {
    rng: ChaCha8Rng,
    clock: VirtualClock,
    pub(crate) servers: Vec<Server>,
    /// Active partitions per link (`coord * N + replica`).
    pub(crate) partitions: Vec<u32>,
    /// Last arrival per link, connection and direction (FIFO), µs.
    fifo: Vec<u64>,
    latency: LatencyModel,
    slow_latency: LatencyModel,
    rules: ServerRules,
    pub(crate) stats: NetStats,
}

/// The shared network; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Net(Arc<Mutex<NetState>>);

impl Net {
    pub(crate) fn new(
        config: &SimConfig,
        rules: ServerRules,
        clock: VirtualClock,
        rng: ChaCha8Rng,
    ) -> Net {
        let n = config.replicas;
        let k = config.workload.coordinators;
        let blend = |leg: &Mixture| leg.blended(&config.slow_component, config.slow_weight);
        let slow_latency = LatencyModel {
            write: config.latency.write.clone(),
            ack: blend(&config.latency.ack),
            read: config.latency.read.clone(),
            response: blend(&config.latency.response),
        };
        let servers = (0..n)
            .map(|_| Server {
                records: RecordStore::default(),
                epoch: None,
                snapshot: None,
                down: false,
                slow: 0,
                loss: 0.0,
                lease: None,
            })
            .collect();
        Net(Arc::new(Mutex::new(NetState {
            rng,
            clock,
            servers,
            partitions: vec![0; n * k],
            fifo: vec![0; n * k * 4],
            latency: config.latency.clone(),
            slow_latency,
            rules,
            stats: NetStats::default(),
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, NetState> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The link coordinator `coord` uses to reach replica `replica`.
    pub(crate) fn link(&self, coord: usize, replica: usize) -> SimLink {
        SimLink {
            net: self.clone(),
            coord,
            replica,
            name: replica_name(replica),
        }
    }
}

/// Replica `replica`'s name, as the coordinators know it.
pub(crate) fn replica_name(replica: usize) -> String {
    format!("r{replica}")
}

impl NetState {
    fn replica_count(&self) -> usize {
        self.servers.len()
    }

    /// True time, ms: the servers' clock.
    pub(crate) fn server_ms(&self) -> u64 {
        self.clock.true_ms()
    }

    /// When a message sent now on one direction of one connection arrives,
    /// `None` when it is lost.
    fn travel(
        &mut self,
        coord: usize,
        replica: usize,
        conn: Conn,
        toward_server: bool,
        leg: Leg,
    ) -> Option<tokio::time::Instant> {
        let link = coord * self.replica_count() + replica;
        self.stats.messages_sent += 1;
        let loss = self.servers[replica].loss;
        if self.partitions[link] > 0 || (loss > 0.0 && self.rng.random_bool(loss)) {
            self.stats.messages_lost += 1;
            return None;
        }
        let model = if self.servers[replica].slow > 0 {
            &self.slow_latency
        } else {
            &self.latency
        };
        let mixture = match (toward_server, leg) {
            (true, Leg::Read) => &model.read,
            (true, Leg::Write) => &model.write,
            (false, Leg::Read) => &model.response,
            (false, Leg::Write) => &model.ack,
        };
        let latency = mixture.sample_us(&mut self.rng, LATENCY_CAP_US).max(1);
        let now = self.clock.elapsed_us();
        let slot = link * 4 + conn as usize * 2 + usize::from(toward_server);
        let arrival = (now + latency).max(self.fifo[slot] + 1);
        self.fifo[slot] = arrival;
        Some(self.clock.at_us(arrival))
    }

    /// The server's epoch, created (not complete) if its key is gone.
    fn epoch_of(&mut self, replica: usize) -> Epoch {
        let id: u64 = self.rng.random();
        *self.servers[replica].epoch.get_or_insert(Epoch {
            id,
            complete: false,
        })
    }

    /// The record under `key` unless Redis would have dropped it by now
    /// (dropping it, as Redis does on access).
    fn live(&mut self, replica: usize, key: SessionKey) -> Option<&mut Record> {
        let now_ms = self.server_ms();
        let margin = self.rules.ttl_margin_ms;
        let records = &mut self.servers[replica].records;
        let expired = records
            .get(key)
            .is_some_and(|r| r.effective_expiry_ms().saturating_add(margin) <= now_ms);
        if expired {
            records.remove(key);
        }
        records.get_mut(key)
    }

    fn read(&mut self, replica: usize, key: &str) -> ReadReply {
        let epoch = self.epoch_of(replica);
        let record = SessionKey::parse(key).and_then(|key| self.live(replica, key).cloned());
        ReadReply { record, epoch }
    }

    fn merge(
        &mut self,
        replica: usize,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> MergeReply {
        let epoch = self.epoch_of(replica);
        let key = SessionKey::parse(key).expect("the simulator writes session keys only");
        if delta.is_tombstone() && !self.rules.tombstones {
            let held_max = self.servers[replica]
                .records
                .remove(key)
                .and_then(|r| r.max_stamp());
            return MergeReply {
                status: MergeStatus::Applied,
                epoch,
                held_max,
            };
        }
        let (status, held_max, fresh) = merge_stored(self.live(replica, key), delta, mode, now_ms);
        if let Some(fresh) = fresh {
            self.servers[replica].records.insert(key, fresh);
        }
        MergeReply {
            status,
            epoch,
            held_max: held_max.filter(|_| self.rules.held_stamps),
        }
    }

    /// One SCAN call. The cursor is `"0"` to begin, else one more than the
    /// session index to resume at.
    fn scan(&mut self, replica: usize, cursor: &str, count: usize) -> ScanPage {
        let _ = self.epoch_of(replica);
        let start: u32 = if cursor == "0" {
            0
        } else {
            cursor.parse::<u32>().map_or(0, |c| c.saturating_sub(1))
        };
        if self.rng.random_bool(EMPTY_SCAN_PAGE_PROBABILITY) {
            return ScanPage {
                keys: Vec::new(),
                next_cursor: Some((start + 1).to_string()),
            };
        }
        let after = start.checked_sub(1).map(SessionKey);
        let count = count.max(1);
        let keys: Vec<SessionKey> = self.servers[replica]
            .records
            .keys_after(after)
            .take(count)
            .collect();
        let next_cursor = (keys.len() == count)
            .then(|| keys.last().map(|last| (last.0 + 2).to_string()))
            .flatten();
        ScanPage {
            keys: keys.iter().map(SessionKey::to_string).collect(),
            next_cursor,
        }
    }

    fn mark_complete(&mut self, replica: usize, epoch_id: u64) -> bool {
        let server = &mut self.servers[replica];
        match &mut server.epoch {
            Some(epoch) if epoch.id == epoch_id => {
                if !epoch.complete {
                    self.stats.epochs_refilled += 1;
                }
                epoch.complete = true;
                true
            }
            _ => false,
        }
    }

    fn acquire_lease(&mut self, replica: usize, owner: u64, ttl: Duration) -> bool {
        let now = self.server_ms();
        let until = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let lease = &mut self.servers[replica].lease;
        let free = match *lease {
            Some((holder, expires)) => holder == owner || expires <= now,
            None => true,
        };
        if free {
            *lease = Some((owner, until));
        }
        free
    }

    // ---- faults ----------------------------------------------------------

    /// Every server starts in one complete epoch: the cluster is created
    /// with its replicas.
    pub(crate) fn create_cluster(&mut self) {
        for replica in 0..self.replica_count() {
            let id = self.rng.random();
            self.servers[replica].epoch = Some(Epoch { id, complete: true });
        }
    }

    /// Takes a snapshot of every running server (Redis `BGSAVE`).
    pub(crate) fn snapshot_all(&mut self) {
        for server in &mut self.servers {
            if !server.down {
                server.snapshot = Some(server.records.clone());
            }
        }
    }

    /// The server stops answering.
    pub(crate) fn stop(&mut self, replica: usize) {
        self.servers[replica].down = true;
    }

    /// The server starts again: from its last snapshot (`keep_data`) or
    /// empty, in a new epoch unless epochs are switched off.
    pub(crate) fn start(&mut self, replica: usize, keep_data: bool) {
        let epochs = self.rules.epochs;
        let server = &mut self.servers[replica];
        server.down = false;
        server.lease = None;
        server.records = if keep_data {
            server.snapshot.clone().unwrap_or_default()
        } else {
            server.snapshot = None;
            RecordStore::default()
        };
        if epochs {
            server.epoch = None;
        }
    }

    /// An operator flushes the server: data and epoch key gone, no restart.
    pub(crate) fn flush(&mut self, replica: usize) {
        let epochs = self.rules.epochs;
        let server = &mut self.servers[replica];
        server.records = RecordStore::default();
        server.snapshot = None;
        if epochs {
            server.epoch = None;
        }
    }

    /// True when the server's epoch is complete (the wipe budget's rule).
    pub(crate) fn is_complete(&self, replica: usize) -> bool {
        self.servers[replica].epoch.is_some_and(|e| e.complete)
    }
}

/// One coordinator's link to one replica: a [`Replica`].
#[derive(Debug)]
pub(crate) struct SimLink {
    net: Net,
    coord: usize,
    replica: usize,
    name: String,
}

impl SimLink {
    /// One request and its reply: travels to the server, is applied there
    /// (if the server is up), travels back. A lost message or a server that
    /// is down means no answer at all.
    async fn exchange<T>(&self, conn: Conn, leg: Leg, apply: impl FnOnce(&mut NetState) -> T) -> T {
        let there = self
            .net
            .lock()
            .travel(self.coord, self.replica, conn, true, leg);
        let Some(there) = there else {
            return never().await;
        };
        tokio::time::sleep_until(there).await;
        let answered = self.answer(conn, leg, apply);
        let Some((reply, back)) = answered else {
            return never().await;
        };
        tokio::time::sleep_until(back).await;
        reply
    }

    /// The server side of [`exchange`](Self::exchange): `None` when the
    /// server is down or the reply is lost.
    fn answer<T>(
        &self,
        conn: Conn,
        leg: Leg,
        apply: impl FnOnce(&mut NetState) -> T,
    ) -> Option<(T, tokio::time::Instant)> {
        let mut net = self.net.lock();
        if net.servers[self.replica].down {
            return None;
        }
        let reply = apply(&mut net);
        let back = net.travel(self.coord, self.replica, conn, false, leg)?;
        Some((reply, back))
    }
}

async fn never<T>() -> T {
    std::future::pending().await
}

#[async_trait]
impl Replica for SimLink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        let r = self.replica;
        Ok(self
            .exchange(Conn::Main, Leg::Read, |net| net.read(r, key))
            .await)
    }

    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        let r = self.replica;
        let merge = |net: &mut NetState| net.merge(r, key, delta, mode, now_ms);
        Ok(self.exchange(Conn::Main, Leg::Write, merge).await)
    }

    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError> {
        let r = self.replica;
        let scan = |net: &mut NetState| net.scan(r, cursor, count);
        Ok(self.exchange(Conn::Bulk, Leg::Read, scan).await)
    }

    async fn ping(&self) -> Result<Epoch, ReplicaError> {
        let r = self.replica;
        Ok(self
            .exchange(Conn::Main, Leg::Read, |net| net.epoch_of(r))
            .await)
    }

    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        let r = self.replica;
        let mark = |net: &mut NetState| net.mark_complete(r, epoch_id);
        Ok(self.exchange(Conn::Main, Leg::Write, mark).await)
    }

    async fn acquire_lease(&self, owner: u64, ttl: Duration) -> Result<bool, ReplicaError> {
        let r = self.replica;
        let acquire = |net: &mut NetState| net.acquire_lease(r, owner, ttl);
        Ok(self.exchange(Conn::Main, Leg::Write, acquire).await)
    }

    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError> {
        let r = self.replica;
        let release = |net: &mut NetState| {
            let lease = &mut net.servers[r].lease;
            if matches!(*lease, Some((holder, _)) if holder == owner) {
                *lease = None;
            }
        };
        self.exchange(Conn::Main, Leg::Write, release).await;
        Ok(())
    }

    async fn read_many(&self, keys: &[String]) -> Vec<Result<ReadReply, ReplicaError>> {
        let r = self.replica;
        let read = |net: &mut NetState| keys.iter().map(|key| Ok(net.read(r, key))).collect();
        self.exchange(Conn::Bulk, Leg::Read, read).await
    }

    async fn merge_many(
        &self,
        items: &[(String, Arc<Record>)],
        now_ms: u64,
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        let r = self.replica;
        let merge = |net: &mut NetState| {
            items
                .iter()
                .map(|(key, delta)| Ok(net.merge(r, key, delta, MergeMode::Upsert, now_ms)))
                .collect()
        };
        self.exchange(Conn::Bulk, Leg::Write, merge).await
    }
}
