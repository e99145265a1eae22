//! `InMemoryReplica`: the reference replica, for the core's tests, the
//! doctests and examples. It applies [`merge_stored`] under a mutex.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{merge_stored, Epoch, MergeMode, MergeReply, ReadReply, Replica, ScanPage};
use crate::error::ReplicaError;
use crate::record::Record;

static EPOCH_SOURCE: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct State {
    records: BTreeMap<String, Record>,
    epoch: Epoch,
    /// The anti-entropy lease: its owner and when it expires.
    lease: Option<(u64, tokio::time::Instant)>,
}

/// A replica held in this process's memory.
///
/// ```
/// # tokio_test_block_on(async {
/// use quorum_sessions::replica::{memory::InMemoryReplica, Replica, MergeMode};
/// use quorum_sessions::Record;
/// let replica = InMemoryReplica::new("a");
/// replica.merge("s:{x}", &Record::new(10_000, 20_000), MergeMode::Upsert, 0).await.unwrap();
/// assert!(replica.read("s:{x}").await.unwrap().record.is_some());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct InMemoryReplica {
    name: String,
    state: Mutex<State>,
}

impl InMemoryReplica {
    /// An empty replica whose epoch is not yet complete (like a new Redis).
    pub fn new(name: impl Into<String>) -> InMemoryReplica {
        InMemoryReplica {
            name: name.into(),
            state: Mutex::new(State {
                records: BTreeMap::new(),
                epoch: fresh_epoch(),
                lease: None,
            }),
        }
    }

    /// Number of keys stored (tombstones included).
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the stored record (tests).
    pub fn get(&self, key: &str) -> Option<Record> {
        self.lock().records.get(key).cloned()
    }

    /// A copy of everything stored (tests).
    pub fn snapshot(&self) -> BTreeMap<String, Record> {
        self.lock().records.clone()
    }

    /// Replaces everything with `records` and starts a new, incomplete epoch:
    /// a restart from an old snapshot.
    pub fn restore(&self, records: BTreeMap<String, Record>) {
        let mut state = self.lock();
        state.records = records;
        state.epoch = fresh_epoch();
        state.lease = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn fresh_epoch() -> Epoch {
    // Process-unique ids; randomness is not needed in memory.
    Epoch {
        id: EPOCH_SOURCE.fetch_add(1, Ordering::Relaxed),
        complete: false,
    }
}

#[async_trait]
impl Replica for InMemoryReplica {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        let state = self.lock();
        Ok(ReadReply {
            record: state.records.get(key).cloned(),
            epoch: state.epoch,
        })
    }

    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        let mut state = self.lock();
        let epoch = state.epoch;
        let (status, held_max, fresh) =
            merge_stored(state.records.get_mut(key), delta, mode, now_ms);
        if let Some(fresh) = fresh {
            state.records.insert(key.to_owned(), fresh);
        }
        Ok(MergeReply {
            status,
            epoch,
            held_max,
        })
    }

    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError> {
        let state = self.lock();
        // The cursor is the last key returned ("0" to begin).
        let range = if cursor == "0" {
            state.records.range::<String, _>(..)
        } else {
            use std::ops::Bound::{Excluded, Unbounded};
            state
                .records
                .range::<String, _>((Excluded(cursor.to_owned()), Unbounded))
        };
        let keys: Vec<String> = range.take(count.max(1)).map(|(k, _)| k.clone()).collect();
        let next_cursor = match keys.last() {
            Some(last) if keys.len() == count.max(1) => Some(last.clone()),
            _ => None,
        };
        Ok(ScanPage { keys, next_cursor })
    }

    async fn ping(&self) -> Result<Epoch, ReplicaError> {
        Ok(self.lock().epoch)
    }

    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        let mut state = self.lock();
        if state.epoch.id != epoch_id {
            return Ok(false);
        }
        state.epoch.complete = true;
        Ok(true)
    }

    async fn acquire_lease(
        &self,
        owner: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, ReplicaError> {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        let free = match state.lease {
            Some((holder, until)) => holder == owner || until <= now,
            None => true,
        };
        if free {
            state.lease = Some((owner, now + ttl));
        }
        Ok(free)
    }

    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError> {
        let mut state = self.lock();
        if matches!(state.lease, Some((holder, _)) if holder == owner) {
            state.lease = None;
        }
        Ok(())
    }

    async fn wipe(&self) -> Result<(), ReplicaError> {
        self.restore(BTreeMap::new());
        Ok(())
    }
}
