//! The workload of the fault scenarios (several app servers writing and
//! reading shared sessions), what it records, and the checker that judges
//! the history: lost acknowledged writes, stale and missing reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Coordinator, Error, Mutation, Record};

/// Sessions the workload shares between every task.
pub const SESSIONS: usize = 40;
/// Tasks per app server; each owns one field of every session.
pub const TASKS_PER_COORDINATOR: usize = 4;
/// Error messages a history keeps (the count is exact; the samples are for
/// the reader, and bounded so that a long outage cannot fill memory).
pub const ERROR_SAMPLES_MAX: usize = 20;

/// The key of workload session `session` (synthetic: no real session id).
pub fn key(session: usize) -> String {
    format!("s:{{fault-{session}}}")
}

/// An expiry and a lifetime cap far enough ahead for any scenario.
pub fn expiry(coordinator: &Coordinator) -> (u64, u64) {
    let now = coordinator.now_ms();
    (now + 600_000, now + 3_600_000)
}

/// A read: the session, when it began, the fields it returned (None: absent).
type ReadSeen = (usize, Instant, Option<BTreeMap<String, u64>>);

/// What every client of a workload saw. Its lists grow with the operations
/// made: a scenario runs its workload for seconds (a few tens of thousands
/// of entries), which bounds them.
#[derive(Default)]
pub struct History {
    /// (session, field) → acknowledged (value, acked_at).
    acked: BTreeMap<(usize, String), Vec<(u64, Instant)>>,
    /// Reads: (session, started_at, fields seen).
    reads: Vec<ReadSeen>,
    /// Latency of every client operation, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Failed client operations.
    pub errors: usize,
    /// The first [`ERROR_SAMPLES_MAX`] failures: when (since the workload
    /// began) and what.
    pub error_samples: Vec<(Duration, String)>,
    /// Client operations (writes and reads) made.
    pub operations: usize,
    began: Option<Instant>,
}

impl History {
    fn error(&mut self, started: Instant, what: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            let since = started.saturating_duration_since(self.began.unwrap_or(started));
            self.error_samples.push((since, what));
        }
    }

    fn record_write(
        &mut self,
        session: usize,
        field: &str,
        value: u64,
        started: Instant,
        result: Result<(), Error>,
    ) {
        self.operations += 1;
        self.latencies_us.push(started.elapsed().as_micros() as u64);
        match result {
            Ok(()) => self
                .acked
                .entry((session, field.to_owned()))
                .or_default()
                .push((value, Instant::now())),
            Err(error) => self.error(started, format!("write: {error}")),
        }
    }

    fn record_read(
        &mut self,
        session: usize,
        started: Instant,
        result: Result<Option<Record>, Error>,
    ) {
        self.operations += 1;
        self.latencies_us.push(started.elapsed().as_micros() as u64);
        match result {
            Ok(record) => self
                .reads
                .push((session, started, record.as_ref().map(fields_of))),
            Err(error) => self.error(started, format!("read: {error}")),
        }
    }
}

/// A running workload; [`Workload::stop`] ends it and returns the history.
pub struct Workload {
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The workload's fields of a record, as numbers (other fields ignored).
pub fn fields_of(record: &Record) -> BTreeMap<String, u64> {
    record
        .values()
        .filter_map(|(name, value)| {
            Some((
                name.to_owned(),
                std::str::from_utf8(value).ok()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Starts the workload: every task owns one field (`c{coordinator}t{task}`)
/// of every session and writes it with rising values, reading a session
/// between writes.
pub fn start_workload(servers: &[Coordinator]) -> Workload {
    let history = Arc::new(Mutex::new(History {
        began: Some(Instant::now()),
        ..History::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (server_index, server) in servers.iter().enumerate() {
        for task in 0..TASKS_PER_COORDINATOR {
            let (server, history, stop) = (server.clone(), history.clone(), stop.clone());
            let field = format!("c{server_index}t{task}");
            tasks.push(tokio::spawn(async move {
                let mut value = 0u64;
                let mut step = task;
                while !stop.load(Ordering::Relaxed) {
                    step += 1;
                    value += 1;
                    let session = (step * 7 + server_index) % SESSIONS;
                    let (exp, cap) = expiry(&server);
                    let started = Instant::now();
                    let mutation = Mutation::update(exp, cap).set(field.clone(), value.to_string());
                    let result = server.write(&key(session), mutation).await;
                    history.lock().unwrap().record_write(
                        session,
                        &field,
                        value,
                        started,
                        result.map(|_| ()),
                    );
                    let session = (step * 13 + task) % SESSIONS;
                    let started = Instant::now();
                    let result = server.read(&key(session)).await;
                    history
                        .lock()
                        .unwrap()
                        .record_read(session, started, result);
                    // A refused request answers at once: without this the
                    // loop could hold its worker (and a shutdown) forever.
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    Workload {
        history,
        stop,
        tasks,
    }
}

impl Workload {
    /// Client operations made so far (for a progress line).
    pub fn operations(&self) -> usize {
        self.history.lock().unwrap().operations
    }

    /// Stops every task and returns what they saw.
    ///
    /// # Panics
    ///
    /// When a workload task panicked.
    pub async fn stop(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("workload task");
        }
        let history = std::mem::take(&mut self.history);
        Arc::try_unwrap(history)
            .ok()
            .expect("tasks ended")
            .into_inner()
            .unwrap()
    }
}

/// A workload dropped without [`Workload::stop`] (its scenario panicked)
/// stops its tasks, so that they do not outlive the cluster they load.
impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Creates every session before the workload starts.
pub async fn create_sessions(server: &Coordinator) -> Result<(), Error> {
    for session in 0..SESSIONS {
        let (exp, cap) = expiry(server);
        server
            .write(&key(session), Mutation::create(exp, cap).set("user", "0"))
            .await?;
    }
    Ok(())
}

/// What the checker found in a history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// (session, field) pairs whose last acknowledged value a final quorum
    /// read does not show.
    pub lost: usize,
    /// (read, field) pairs where a read missed a write acknowledged before
    /// it began.
    pub stale: usize,
    /// Reads that found no session (every session exists throughout).
    pub missing: usize,
    /// Final quorum reads that failed or found no session: the lost-write
    /// check could not be made for them (each counts as a failure).
    pub final_reads_failed: usize,
}

/// Lost writes (against a final quorum read through `reader`), stale and
/// missing reads.
pub async fn check(history: &History, reader: &Coordinator) -> Verdict {
    let mut verdict = Verdict::default();
    let mut finals = BTreeMap::new();
    for session in 0..SESSIONS {
        match reader.read(&key(session)).await {
            Ok(Some(record)) => {
                finals.insert(session, fields_of(&record));
            }
            _ => verdict.final_reads_failed += 1,
        }
    }
    for ((session, field), acks) in &history.acked {
        let last = acks.iter().map(|(v, _)| *v).max().unwrap_or(0);
        let Some(fields) = finals.get(session) else {
            continue; // counted in final_reads_failed
        };
        if fields.get(field).copied().unwrap_or(0) < last {
            verdict.lost += 1;
        }
    }
    for (session, started, seen) in &history.reads {
        let Some(seen) = seen else {
            verdict.missing += 1;
            continue;
        };
        for ((acked_session, field), acks) in &history.acked {
            if acked_session != session {
                continue;
            }
            let must_see = acks
                .iter()
                .filter(|(_, at)| at < started)
                .map(|(v, _)| *v)
                .max();
            if must_see.is_some_and(|v| seen.get(field).copied().unwrap_or(0) < v) {
                verdict.stale += 1;
            }
        }
    }
    verdict
}

/// p50, p99 and max of client operation latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of `latencies_us` (all zero when empty).
    pub fn of(latencies_us: &[u64]) -> LatencySummary {
        let mut sorted = latencies_us.to_vec();
        sorted.sort_unstable();
        let Some(&max) = sorted.last() else {
            return LatencySummary::default();
        };
        let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
        LatencySummary {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: max as f64 / 1000.0,
        }
    }
}
