//! [`TowerSessionStore`]: the session store as a `tower_sessions` 0.15
//! backend (feature `tower`).
//!
//! tower-sessions hands `save` the whole data map, not what the request
//! changed. So `load` puts one more entry in the `Record` it returns: under
//! the reserved key [`TOWER_BASE_KEY`], the state that load read (its data
//! values, expiry and lifetime cap). The entry travels with the request, in
//! the request's own `Record`, and `save` takes it out and diffs the rest of
//! the map against it: it writes the keys whose value differs from what this
//! request loaded and removes the keys this request removed, nothing else.
//! A key another request (on this app server or another) changed after this
//! request loaded is neither reverted nor deleted, and no shared cache is
//! involved, so there is nothing to evict and no guess. Two concurrent
//! requests of one session changing different keys both survive, always; two
//! that change the *same* key are last writer wins, as in the native
//! [`Session`] API.
//!
//! The reserved key:
//!
//! - it is visible to handlers (`session.get_value(TOWER_BASE_KEY)`) and
//!   holds a copy of the loaded data, in the request's memory only: `save`
//!   never stores it;
//! - a handler must not write it: a save whose [`TOWER_BASE_KEY`] does not
//!   hold the adapter's entry fails with an encode error (the middleware
//!   answers 500), and the native API refuses a data key with that name, so
//!   no stored key is ever shadowed by it;
//! - `Session::clear` removes it with the rest of the map. A save of a map
//!   without the entry is therefore a *reset*: the session's data becomes
//!   exactly that map (every key in it is written, every stored key not in
//!   it is removed, including keys other requests wrote meanwhile — that is
//!   what clearing means). `Session::cycle_id` keeps it, and `create`
//!   drops it;
//! - do not put tower-sessions' `CachingSessionStore` in front of this
//!   store: it would hand a later request a `Record` carrying an earlier
//!   request's entry (and stale data besides).
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
//! use quorum_sessions::replica::memory::InMemoryReplica;
//! use quorum_sessions::session::{tower::TowerSessionStore, SessionStore};
//! use tower_sessions::{Session, SessionManagerLayer};
//!
//! // Any replicas: here in memory; `TowerSessionStore::connect(urls)` for Redis.
//! let store = SessionStore::builder()
//!     .replica(Arc::new(InMemoryReplica::new("a")))
//!     .replica(Arc::new(InMemoryReplica::new("b")))
//!     .replica(Arc::new(InMemoryReplica::new("c")))
//!     .connect()
//!     .await?;
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

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
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

pub use super::keys::TOWER_BASE_KEY;

/// Marks the entry under [`TOWER_BASE_KEY`] as the adapter's (version 1).
const BASE_TAG: &str = "quorum_sessions_base";

/// What one load read: the entry under [`TOWER_BASE_KEY`].
#[derive(Debug, Serialize, Deserialize)]
struct Base {
    #[serde(rename = "quorum_sessions_base")]
    version: u32,
    /// Effective expiry (`min(expiry, cap)`), ms since the epoch.
    expiry: u64,
    /// Lifetime cap, ms since the epoch.
    cap: u64,
    data: BTreeMap<String, Value>,
}

impl Base {
    fn of(session: &Session) -> Base {
        Base {
            version: 1,
            expiry: session.expiry_ms(),
            cap: session.cap_ms,
            data: session.data.clone(),
        }
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Splits a tower map into the entry under [`TOWER_BASE_KEY`] (`None`: no
/// entry, e.g. after `Session::clear`) and the user's keys.
fn split(
    data: &HashMap<String, Value>,
) -> Result<(Option<Base>, HashMap<&str, &Value>), SessionError> {
    let base = match data.get(TOWER_BASE_KEY) {
        None => None,
        Some(value) => {
            let tagged = value.get(BASE_TAG).and_then(Value::as_u64) == Some(1);
            match Base::deserialize(value) {
                Ok(base) if tagged => Some(base),
                _ => {
                    return Err(SessionError::InvalidName {
                        what: "data key",
                        rule: "is reserved for the tower adapter (TOWER_BASE_KEY)",
                    })
                }
            }
        }
    };
    let user = data
        .iter()
        .filter(|(key, _)| key.as_str() != TOWER_BASE_KEY)
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    Ok((base, user))
}

/// A `tower_sessions_core::SessionStore` over a [`SessionStore`]. See the
/// module docs. Cheap to clone.
#[derive(Clone)]
pub struct TowerSessionStore {
    store: SessionStore,
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
        TowerSessionStore { store }
    }

    /// One call: a majority quorum (W = R = ⌊N/2⌋ + 1) over one Redis per
    /// URL, with default settings; [`SessionStore::builder`] for anything
    /// else, then [`TowerSessionStore::new`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), quorum_sessions::ConnectError> {
    /// use quorum_sessions::session::tower::TowerSessionStore;
    /// let store = TowerSessionStore::connect([
    ///     "redis://127.0.0.1:6381",
    ///     "redis://127.0.0.1:6382",
    ///     "redis://127.0.0.1:6383",
    /// ])
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Other settings (a quorum, the stored format of a rolling upgrade,
    /// see [`SessionStoreBuilder::stored_format`](crate::SessionStoreBuilder::stored_format)):
    /// build a [`SessionStore`] with [`SessionStore::builder`] and wrap it
    /// with [`TowerSessionStore::new`].
    ///
    /// # Errors
    ///
    /// [`ConnectError`](crate::ConnectError), as
    /// [`SessionStoreBuilder::connect`](crate::SessionStoreBuilder::connect).
    #[cfg(feature = "redis")]
    pub async fn connect<I, S>(urls: I) -> Result<TowerSessionStore, crate::ConnectError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let store = SessionStore::builder().redis(urls).connect().await?;
        Ok(TowerSessionStore::new(store))
    }

    /// The native store underneath.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Checks the whole map against the session limits (as a native save).
    fn check(&self, data: &HashMap<&str, &Value>) -> Result<(), SessionError> {
        let mut probe = probe_session();
        for (key, value) in data {
            check_name("data key", key)?;
            probe.data.insert((*key).to_owned(), (*value).clone());
        }
        probe.check_size(self.store.config())
    }

    /// The mutation of a save: the diff of `data` against `base` (what this
    /// request loaded), or, without a base, a reset of the stored data to
    /// `data`. `None`: nothing to write (the session is gone or expired).
    async fn mutation(
        &self,
        id: &SessionId,
        base: Option<Base>,
        data: &HashMap<&str, &Value>,
        requested_expiry: u64,
    ) -> Result<Option<Mutation>, SessionError> {
        let now = self.store.now_ms();
        let reset = base.is_none();
        let base = match base {
            // Expired by what this request loaded: write only if another
            // request has kept the session alive since (never revive it).
            Some(base) if base.expiry <= now => {
                if self
                    .store
                    .load(id, None, Default::default())
                    .await?
                    .is_none()
                {
                    return Ok(None);
                }
                base
            }
            Some(base) => base,
            None => match self.store.load(id, None, Default::default()).await? {
                Some(session) => Base::of(&session),
                None => return Ok(None),
            },
        };
        let expiry = requested_expiry.min(base.cap);
        let mut mutation = Mutation::update(expiry.max(base.expiry), base.cap);
        for (key, value) in data {
            if reset || base.data.get(*key) != Some(*value) {
                let bytes = serde_json::to_vec(value)?;
                mutation = mutation.set(keys::data_field(key), bytes);
            }
        }
        for key in base
            .data
            .keys()
            .filter(|key| !data.contains_key(key.as_str()))
        {
            mutation = mutation.remove(keys::data_field(key));
        }
        if mutation.is_empty() && expiry <= base.expiry {
            return Ok(None);
        }
        Ok(Some(mutation))
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
        // An entry carried over by `Session::cycle_id` is dropped: the new
        // id starts from the map as it is.
        let (_, user) = split(&record.data).map_err(backend)?;
        self.check(&user).map_err(backend)?;
        let data: BTreeMap<String, Value> = user
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.clone()))
            .collect();
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
        record
            .data
            .insert(TOWER_BASE_KEY.to_owned(), Base::of(&session).to_value());
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = session_id(&record.id)
            .ok_or_else(|| session_store::Error::Backend("not an id of this store".into()))?;
        let (base, user) = split(&record.data).map_err(backend)?;
        self.check(&user).map_err(backend)?;
        let Some(mutation) = self
            .mutation(&id, base, &user, expiry_ms(record.expiry_date))
            .await
            .map_err(backend)?
        else {
            return Ok(());
        };
        match self
            .store
            .coordinator()
            .write(&session_key(&id), mutation)
            .await
        {
            // Gone: deleted meanwhile; a logout is never undone.
            Ok(_) | Err(Error::Gone) => Ok(()),
            Err(error) => Err(backend(error.into())),
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(session_id) = session_id(id) else {
            return Ok(None);
        };
        let Some(session) = self
            .store
            .load(&session_id, None, Default::default())
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let mut data: HashMap<String, Value> = session.data.clone().into_iter().collect();
        data.insert(TOWER_BASE_KEY.to_owned(), Base::of(&session).to_value());
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date: expiry_date(session.expiry_ms()),
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let Some(session_id) = session_id(id) else {
            return Ok(());
        };
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
    fn the_base_entry_round_trips_and_a_user_value_there_is_refused() {
        let base = Base {
            version: 1,
            expiry: 10,
            cap: 20,
            data: [("k".to_owned(), Value::from(1))].into(),
        };
        let mut data = HashMap::from([
            (TOWER_BASE_KEY.to_owned(), base.to_value()),
            ("k".to_owned(), Value::from(2)),
        ]);
        let (parsed, user) = split(&data).unwrap();
        let parsed = parsed.unwrap();
        assert_eq!((parsed.expiry, parsed.cap), (10, 20));
        assert_eq!(parsed.data["k"], Value::from(1));
        assert_eq!(user.len(), 1);
        assert_eq!(user["k"], &Value::from(2));
        data.insert(TOWER_BASE_KEY.to_owned(), Value::from("mine"));
        assert!(split(&data).is_err());
        data.remove(TOWER_BASE_KEY);
        assert!(split(&data).unwrap().0.is_none());
    }
}
