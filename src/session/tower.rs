//! [`TowerSessionStore`]: the session store as a `tower_sessions` 0.15
//! backend (feature `tower`).
//!
//! tower-sessions hands `save` the whole data map. The adapter diffs it
//! against the last state this app server loaded or saved for that id (a
//! bounded snapshot cache, first in first out, `tower_snapshot_cache_entries`
//! ids; on a miss it re-reads the session) and writes only the keys that
//! changed, removing the keys that disappeared. So two requests of one
//! session on *different* app servers that change different keys both
//! survive. Two concurrent requests of one session on the *same* app server
//! share one snapshot: a request that loaded before the other saved may
//! write back the older value of a key it did not change; the native
//! [`Session`] API tracks changes per request and has no
//! such window.
//!
//! Other behaviour:
//!
//! - ids: tower's `Id(i128)` is the same 128 bits as a [`SessionId`]; ids are
//!   made by this store (version-4 UUIDs from the OS CSPRNG) in `create`, and
//!   a cookie whose bits are not such an id loads as `None`.
//! - expiry only grows: the stored expiry is merged by maximum (a save with
//!   an earlier `expiry_date` does not shorten it) and is capped by the
//!   session's absolute lifetime (`absolute_lifetime` after creation), which
//!   tower-sessions does not know about.
//! - `save` of a session deleted meanwhile writes nothing and succeeds (a
//!   logout is never undone); `load` never extends (tower-sessions saves
//!   when its expiry policy says so).
//! - sessions made through tower-sessions are anonymous (no per-user index);
//!   the fingerprint binding is not checked (tower-sessions does not pass
//!   the request). Store errors come back as `Error::Backend`, which the
//!   tower-sessions middleware answers with 500; a load that is
//!   `Unavailable` is an error, never `None`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! # use std::sync::Arc;
//! # use quorum_sessions::{ClusterConfig, Coordinator};
//! # use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
//! use quorum_sessions::session::{tower::TowerSessionStore, SessionConfig, SessionStore};
//! use tower_sessions_core::{session::Record, SessionStore as _};
//! # let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"].into_iter()
//! #     .map(|n| Arc::new(InMemoryReplica::new(n)) as Arc<dyn Replica>).collect();
//! # let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
//! let store = TowerSessionStore::new(SessionStore::new(coordinator, SessionConfig::default()).unwrap());
//! let mut record = Record {
//!     id: Default::default(),
//!     data: [("theme".to_owned(), serde_json::json!("dark"))].into(),
//!     expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
//! };
//! store.create(&mut record).await.unwrap();
//! let loaded = store.load(&record.id).await.unwrap().unwrap();
//! assert_eq!(loaded.data["theme"], "dark");
//! # });
//! ```
//!
//! In an axum app (`no_run`: it serves forever):
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
//! use quorum_sessions::session::{tower::TowerSessionStore, SessionConfig, SessionStore};
//! use quorum_sessions::{ClusterConfig, Coordinator};
//! use tower_sessions::{Session, SessionManagerLayer};
//!
//! let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
//!     .into_iter()
//!     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
//!     .collect();
//! let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await?;
//! let store = SessionStore::new(coordinator, SessionConfig::default())?;
//! let visits = |session: Session| async move {
//!     let n: u32 = session.get("visits").await.ok().flatten().unwrap_or(0);
//!     session.insert("visits", n + 1).await.ok();
//!     format!("visit {}", n + 1)
//! };
//! let app = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionManagerLayer::new(TowerSessionStore::new(store)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store;

use super::error::SessionError;
use super::id::SessionId;
use super::keys::{self, check_name, session_key};
use super::model::{NewSession, Session};
use super::store::SessionStore;
use crate::error::Error;
use crate::mutation::Mutation;

/// The tower `Id` of a session id (the same 128 bits).
pub fn tower_id(id: &SessionId) -> Id {
    Id(id.as_u128() as i128)
}

/// The session id of a tower `Id`, if its bits are one (see the module docs).
pub fn session_id(id: &Id) -> Option<SessionId> {
    SessionId::from_u128(id.0 as u128).ok()
}

#[derive(Clone, Debug)]
struct Snapshot {
    data: HashMap<String, Value>,
    expiry_ms: u64,
    cap_ms: u64,
}

#[derive(Debug, Default)]
struct SnapshotCache {
    snapshots: HashMap<SessionId, Snapshot>,
    order: VecDeque<SessionId>,
}

impl SnapshotCache {
    fn insert(&mut self, id: SessionId, snapshot: Snapshot, capacity: usize) {
        if self.snapshots.insert(id, snapshot).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.snapshots.remove(&oldest);
            }
        }
    }
}

/// A `tower_sessions_core::SessionStore` over a [`SessionStore`]. See the
/// module docs. Cheap to clone.
#[derive(Clone)]
pub struct TowerSessionStore {
    store: SessionStore,
    cache: Arc<Mutex<SnapshotCache>>,
}

impl std::fmt::Debug for TowerSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TowerSessionStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl TowerSessionStore {
    /// The adapter over `store`.
    pub fn new(store: SessionStore) -> TowerSessionStore {
        TowerSessionStore {
            store,
            cache: Arc::new(Mutex::new(SnapshotCache::default())),
        }
    }

    /// The native store underneath.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SnapshotCache> {
        self.cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn remember(&self, session: &Session) {
        let snapshot = Snapshot {
            data: session.data.clone().into_iter().collect(),
            expiry_ms: session.expiry_ms(),
            cap_ms: session.cap_ms,
        };
        let capacity = self.store.config().tower_snapshot_cache_entries;
        self.cache().insert(session.id, snapshot, capacity);
    }

    async fn base(&self, id: &SessionId) -> Result<Option<Snapshot>, SessionError> {
        if let Some(snapshot) = self.cache().snapshots.get(id).cloned() {
            return Ok(Some(snapshot));
        }
        let Some(session) = self.store.load(id, None).await? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            data: session.data.into_iter().collect(),
            expiry_ms: session.expiry_ms.min(session.cap_ms),
            cap_ms: session.cap_ms,
        }))
    }

    /// Checks the whole map against the session limits (as a native save).
    fn check(&self, data: &HashMap<String, Value>) -> Result<(), SessionError> {
        let mut probe = probe_session();
        for (key, value) in data {
            check_name("data key", key)?;
            probe.data.insert(key.clone(), value.clone());
        }
        probe.check_size(self.store.config())
    }
}

/// An empty session used to run the size checks on a tower map.
fn probe_session() -> Session {
    Session::draft(
        SessionId::from_random_bytes([0; 16]),
        &NewSession::anonymous(),
        None,
        0,
        0,
        0,
    )
}

fn expiry_ms(date: OffsetDateTime) -> u64 {
    let ms = date.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

fn expiry_date(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn backend(error: SessionError) -> session_store::Error {
    match error {
        SessionError::Json(error) => session_store::Error::Encode(error.to_string()),
        SessionError::TooLarge { .. }
        | SessionError::TooManyFields { .. }
        | SessionError::InvalidName { .. } => session_store::Error::Encode(error.to_string()),
        SessionError::Corrupt(_) => session_store::Error::Decode(error.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

#[async_trait]
impl tower_sessions_core::SessionStore for TowerSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.check(&record.data).map_err(backend)?;
        let data: BTreeMap<String, Value> = record.data.clone().into_iter().collect();
        let new = NewSession {
            data,
            ..NewSession::anonymous()
        };
        let session = self
            .store
            .create_with_expiry(new, Some(expiry_ms(record.expiry_date)))
            .await
            .map_err(backend)?;
        record.id = tower_id(&session.id);
        self.remember(&session);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = session_id(&record.id)
            .ok_or_else(|| session_store::Error::Backend("not an id of this store".into()))?;
        self.check(&record.data).map_err(backend)?;
        let Some(base) = self.base(&id).await.map_err(backend)? else {
            return Ok(()); // deleted or expired: never revived
        };
        let now = self.store.now_ms();
        if base.expiry_ms.min(base.cap_ms) <= now {
            return Ok(());
        }
        let expiry = expiry_ms(record.expiry_date).min(base.cap_ms);
        let mut mutation = Mutation::update(expiry.max(base.expiry_ms), base.cap_ms);
        for (key, value) in &record.data {
            if base.data.get(key) != Some(value) {
                let bytes = serde_json::to_vec(value).map_err(|e| backend(e.into()))?;
                mutation = mutation.set(keys::data_field(key), bytes);
            }
        }
        for key in base
            .data
            .keys()
            .filter(|key| !record.data.contains_key(*key))
        {
            mutation = mutation.remove(keys::data_field(key));
        }
        if mutation.is_empty() && expiry <= base.expiry_ms {
            return Ok(());
        }
        let written = self
            .store
            .coordinator()
            .write(&session_key(&id), mutation)
            .await;
        match written {
            Ok(_) => {
                let snapshot = Snapshot {
                    data: record.data.clone(),
                    expiry_ms: expiry.max(base.expiry_ms),
                    cap_ms: base.cap_ms,
                };
                let capacity = self.store.config().tower_snapshot_cache_entries;
                self.cache().insert(id, snapshot, capacity);
                Ok(())
            }
            Err(Error::Gone) => {
                self.cache().snapshots.remove(&id);
                Ok(())
            }
            Err(error) => Err(backend(error.into())),
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(session_id) = session_id(id) else {
            return Ok(None);
        };
        let Some(session) = self.store.load(&session_id, None).await.map_err(backend)? else {
            self.cache().snapshots.remove(&session_id);
            return Ok(None);
        };
        self.remember(&session);
        Ok(Some(Record {
            id: *id,
            data: session.data.clone().into_iter().collect(),
            expiry_date: expiry_date(session.expiry_ms()),
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let Some(session_id) = session_id(id) else {
            return Ok(());
        };
        self.cache().snapshots.remove(&session_id);
        self.store
            .delete_by_id(&session_id)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_foreign_bits_are_refused() {
        let id = SessionId::generate();
        assert_eq!(session_id(&tower_id(&id)), Some(id));
        assert_eq!(session_id(&Id(0)), None);
        assert_eq!(session_id(&Id(-1)), None);
    }

    #[test]
    fn the_snapshot_cache_is_bounded() {
        let mut cache = SnapshotCache::default();
        let snapshot = Snapshot {
            data: HashMap::new(),
            expiry_ms: 1,
            cap_ms: 1,
        };
        let ids: Vec<SessionId> = (0..10).map(|_| SessionId::generate()).collect();
        for id in &ids {
            cache.insert(*id, snapshot.clone(), 4);
        }
        assert_eq!(cache.snapshots.len(), 4);
        assert!(cache.order.len() <= 4);
        assert!(cache.snapshots.contains_key(&ids[9]));
        assert!(!cache.snapshots.contains_key(&ids[0]));
    }
}
