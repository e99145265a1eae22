//! [`SessionStore`]: create, get (sliding expiry), save (changed fields),
//! delete and regenerate, over a [`Coordinator`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tracing::{debug, warn};

use super::config::{duration_ms, SessionConfig, CREATE_ATTEMPTS_MAX, USER_ID_MAX_BYTES};
use super::error::SessionError;
use super::id::SessionId;
use super::keys::{self, check_name, session_key};
use super::model::{is_user_field, NewSession, Session};
use super::security::{fingerprints_match, ClientInfo};
use super::users::IndexView;
use crate::coordinator::{Coordinator, ReadOptions, WriteOptions};
use crate::error::{ConfigError, Error};
use crate::mutation::Mutation;
use crate::stamp::Stamp;

/// Makes session ids; see [`SessionStore::with_id_generator`].
pub type IdGenerator = Arc<dyn Fn() -> SessionId + Send + Sync>;

pub(crate) struct StoreInner {
    pub(crate) coordinator: Coordinator,
    pub(crate) config: SessionConfig,
    pub(crate) ids: Option<IdGenerator>,
}

/// Sessions replicated by a [`Coordinator`]. Cheap to clone (an `Arc`
/// inside). See the [module docs](super) for the design.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use quorum_sessions::{ClusterConfig, Coordinator};
/// use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
/// use quorum_sessions::session::{ClientInfo, NewSession, SessionConfig, SessionStore};
///
/// let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
///     .into_iter()
///     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
///     .collect();
/// let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
/// let store = SessionStore::new(coordinator, SessionConfig::default()).unwrap();
///
/// let client = ClientInfo::default().user_agent("Mozilla/5.0");
/// let session = store
///     .create(NewSession::for_user("alice").role("user").client(client.clone()))
///     .await
///     .unwrap();
/// let cookie = session.id().to_string();
///
/// // A later request: parse the cookie strictly, then load.
/// let id = cookie.parse().unwrap();
/// let mut session = store.get(&id, &client).await.unwrap().expect("live");
/// session.set("theme", "dark").unwrap();
/// session.add_item("cart", "sku-42", serde_json::json!({ "qty": 1 })).unwrap();
/// store.save(&mut session).await.unwrap(); // writes two fields, nothing else
///
/// store.delete(&session).await.unwrap();
/// assert!(store.get(&id, &client).await.unwrap().is_none());
/// # });
/// ```
#[derive(Clone)]
pub struct SessionStore {
    pub(crate) inner: Arc<StoreInner>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("coordinator", &self.inner.coordinator)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// A store over `coordinator`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first rule `config` breaks (see
    /// [`SessionConfig::validate`]).
    pub fn new(
        coordinator: Coordinator,
        config: SessionConfig,
    ) -> Result<SessionStore, ConfigError> {
        config.validate(&coordinator.config().limits)?;
        Ok(SessionStore {
            inner: Arc::new(StoreInner {
                coordinator,
                config,
                ids: None,
            }),
        })
    }

    /// Replaces the id source (default: [`SessionId::generate`], the OS
    /// CSPRNG). For seeded simulations and tests only: ids must be
    /// unpredictable in production.
    pub fn with_id_generator(
        self,
        generator: impl Fn() -> SessionId + Send + Sync + 'static,
    ) -> SessionStore {
        SessionStore {
            inner: Arc::new(StoreInner {
                coordinator: self.inner.coordinator.clone(),
                config: self.inner.config.clone(),
                ids: Some(Arc::new(generator)),
            }),
        }
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &Coordinator {
        &self.inner.coordinator
    }

    /// The coordinator's [`Readiness`](crate::coordinator::Readiness): for
    /// a `/health/ready` endpoint. See [`Coordinator::readiness`].
    pub fn readiness(&self) -> crate::coordinator::Readiness {
        self.inner.coordinator.readiness()
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.coordinator.now_ms()
    }

    fn new_id(&self) -> SessionId {
        match &self.inner.ids {
            Some(generator) => generator(),
            None => SessionId::generate(),
        }
    }

    /// Creates a session. The id is new (a collision makes another id, never
    /// an overwrite); creation time, last activity and the client's IP and
    /// user agent are recorded; with fingerprint binding on, so is the
    /// client's fingerprint. A session with a user is added to the user's
    /// index, and the user's oldest sessions beyond `max_sessions_per_user`
    /// are evicted.
    ///
    /// # Errors
    ///
    /// - [`SessionError::Store`] when the replicas cannot take the write
    ///   ([`is_unavailable`](SessionError::is_unavailable): answer 503);
    /// - [`SessionError::TooLarge`], [`SessionError::TooManyFields`],
    ///   [`SessionError::InvalidName`]: nothing was stored;
    /// - [`SessionError::Revoked`]: a "log out everywhere" of this user raced
    ///   this login and won;
    /// - [`SessionError::IdCollisions`]: the id generator is broken.
    pub async fn create(&self, new: NewSession) -> Result<Session, SessionError> {
        self.create_with_expiry(new, None).await
    }

    /// [`create`](Self::create) with an initial expiry instead of
    /// `now + idle_timeout` (kept between now and the lifetime cap).
    pub(crate) async fn create_with_expiry(
        &self,
        new: NewSession,
        expiry_ms: Option<u64>,
    ) -> Result<Session, SessionError> {
        if let Some(user) = &new.user {
            check_user(user)?;
        }
        if let Some(role) = &new.role {
            check_name("role", role)?;
        }
        for key in new.data.keys() {
            check_name("data key", key)?;
        }
        let config = &self.inner.config;
        if let Some(user) = &new.user {
            // Reading the index first moves this coordinator's clock past a
            // "log out everywhere" that completed, so this login outlives it.
            self.read_index(user).await?;
        }
        let now = self.now_ms();
        let cap = now + config.lifetime_ms();
        let expiry = expiry_ms
            .unwrap_or(now + config.idle_ms())
            .clamp(now + 1, cap);
        let fingerprint = config
            .fingerprint
            .as_ref()
            .map(|binding| new.client.fingerprint(binding));
        let mut session =
            Session::draft(SessionId::generate(), &new, fingerprint, now, expiry, cap);
        session.check_size(config)?;
        let (id, stamp) = self.create_record(&session, None).await?;
        session.id = id;
        session.creation_stamp = stamp;
        session.login_stamp = stamp;
        debug!(session = %id.redacted(), "session created");
        if session.user.is_some() {
            self.register(&session).await?;
        }
        Ok(session)
    }

    /// Writes `session`'s fields under a new id with a conditional create,
    /// retrying with another id on a collision.
    pub(crate) async fn create_record(
        &self,
        session: &Session,
        login_stamp: Option<Stamp>,
    ) -> Result<(SessionId, Stamp), SessionError> {
        let fields = session.all_fields();
        for _ in 0..CREATE_ATTEMPTS_MAX {
            let id = self.new_id();
            let mut mutation = Mutation::create(session.expiry_ms, session.cap_ms);
            for (name, value) in &fields {
                mutation = mutation.set(name.clone(), value.clone());
            }
            if let Some(stamp) = login_stamp {
                mutation = mutation.set(keys::FIELD_LOGIN, stamp.encode());
            }
            match self
                .inner
                .coordinator
                .write(&session_key(&id), mutation)
                .await
            {
                Ok(ack) => return Ok((id, ack.stamp)),
                Err(Error::Collision) => {
                    warn!(session = %id.redacted(), "session id collision: trying another id");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(SessionError::IdCollisions {
            attempts: CREATE_ATTEMPTS_MAX,
        })
    }

    /// Loads a session: `None` when unknown, expired, deleted, revoked by a
    /// "log out everywhere", or evicted by the per-user limit.
    ///
    /// Sliding expiry: the session is extended (and its last activity
    /// written) only when less than `refresh_threshold` remains, so most
    /// reads write nothing; never past the lifetime cap. If that extension
    /// cannot reach its write quorum, the session is still returned (the
    /// read itself was conclusive) and the next read tries again.
    ///
    /// # Errors
    ///
    /// - [`SessionError::Store`] when too few replicas answer — never read
    ///   this as "not logged in" (map [`is_unavailable`](SessionError::is_unavailable) to 503);
    /// - [`SessionError::FingerprintMismatch`] when binding is on and `client`
    ///   differs from the session's creator: the session was destroyed;
    /// - [`SessionError::Corrupt`] for a record this layer cannot decode.
    pub async fn get(
        &self,
        id: &SessionId,
        client: &ClientInfo,
    ) -> Result<Option<Session>, SessionError> {
        self.get_with(id, client, ReadOptions::default()).await
    }

    /// [`get`](Self::get) with this read's own quorum
    /// ([`Coordinator::read_with`]): e.g. `ReadOptions::r(1)` for a page that
    /// can live with a slightly stale session. "Not found" keeps its proof
    /// whatever R.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`SessionError::Store`] ([`Error::Invalid`])
    /// for a quorum out of `1..=N`.
    pub async fn get_with(
        &self,
        id: &SessionId,
        client: &ClientInfo,
        options: ReadOptions,
    ) -> Result<Option<Session>, SessionError> {
        let Some(mut session) = self.load(id, Some(client), options).await? else {
            return Ok(None);
        };
        let now = self.now_ms();
        let config = &self.inner.config;
        let remaining = session.expiry_ms().saturating_sub(now);
        if remaining >= config.refresh_ms() || session.expiry_ms >= session.cap_ms {
            return Ok(Some(session));
        }
        let expiry = (now + config.idle_ms()).min(session.cap_ms);
        let touch = Mutation::update(expiry, session.cap_ms).set(keys::FIELD_SEEN, now.to_string());
        match self.inner.coordinator.write(&session_key(id), touch).await {
            Ok(_) => {
                session.expiry_ms = expiry;
                session.last_activity_ms = now;
            }
            Err(Error::Gone) => return Ok(None),
            Err(error) => {
                warn!(session = %id.redacted(), %error, "sliding extension failed; will retry on the next read");
            }
        }
        Ok(Some(session))
    }

    /// Reads and validates a session without extending it: fingerprint
    /// (when `client` is given and binding is on), revocation and the
    /// per-user limit.
    pub(crate) async fn load(
        &self,
        id: &SessionId,
        client: Option<&ClientInfo>,
        options: ReadOptions,
    ) -> Result<Option<Session>, SessionError> {
        let key = session_key(id);
        let Some(record) = self.inner.coordinator.read_with(&key, options).await? else {
            return Ok(None);
        };
        let session = Session::from_record(*id, &record)?;
        if let (Some(binding), Some(stored), Some(client)) = (
            &self.inner.config.fingerprint,
            session.fingerprint.as_deref(),
            client,
        ) {
            if !fingerprints_match(stored, &client.fingerprint(binding)) {
                warn!(session = %id.redacted(), "client fingerprint mismatch: destroying the session");
                self.destroy_quietly(&session).await;
                return Err(SessionError::FingerprintMismatch);
            }
        }
        if let Some(user) = session.user.as_deref() {
            let index = self.read_index(user).await?;
            let view = IndexView::new(index.as_ref(), self.now_ms());
            if let Some(reason) = view.rejects(&session, self.inner.config.max_sessions_per_user) {
                debug!(session = %id.redacted(), reason, "session rejected on load");
                self.destroy_quietly(&session).await;
                return Ok(None);
            }
        }
        Ok(Some(session))
    }

    /// Writes the changes made to `session` since it was loaded: changed
    /// fields only, so concurrent saves of other fields survive. Extends the
    /// sliding expiry at the same time when it is due.
    ///
    /// # Errors
    ///
    /// - [`SessionError::TooLarge`], [`SessionError::TooManyFields`]: nothing
    ///   was stored, the changes stay pending;
    /// - [`SessionError::Gone`]: the session was deleted meanwhile (logout,
    ///   rotation, revocation); nothing was written;
    /// - [`SessionError::Expired`]: the session expired since it was loaded;
    /// - [`SessionError::Store`]: quorum not reached (503). The write may
    ///   still surface later; saving again is safe.
    pub async fn save(&self, session: &mut Session) -> Result<(), SessionError> {
        if !session.is_modified() {
            return Ok(());
        }
        let config = &self.inner.config;
        session.check_size(config)?;
        let now = self.now_ms();
        let margin = duration_ms(self.inner.coordinator.config().request_timeout);
        if session.expiry_ms() <= now.saturating_add(margin) {
            // An update of a record gone from the replicas would leave a
            // partial record behind: refuse instead.
            return Err(SessionError::Expired);
        }
        let mut expiry = session.expiry_ms;
        let mut mutation_seen = None;
        if session.expiry_ms() - now < config.refresh_ms() && session.expiry_ms < session.cap_ms {
            expiry = (now + config.idle_ms()).min(session.cap_ms);
            mutation_seen = Some(now);
        }
        let mut mutation = Mutation::update(expiry, session.cap_ms);
        for (name, value) in &session.pending {
            mutation = match value {
                Some(bytes) => mutation.set(name.clone(), bytes.clone()),
                None => mutation.remove(name.clone()),
            };
        }
        if let Some(seen) = mutation_seen {
            mutation = mutation.set(keys::FIELD_SEEN, seen.to_string());
        }
        self.inner
            .coordinator
            .write(&session_key(&session.id), mutation)
            .await?;
        session.pending.clear();
        session.expiry_ms = expiry;
        if let Some(seen) = mutation_seen {
            session.last_activity_ms = seen;
        }
        Ok(())
    }

    /// Deletes (logs out) a session: a tombstone that lives until the
    /// session's lifetime cap, so no late write, touch or returning replica
    /// revives it; then its entry in the user's index is removed.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the tombstone did not reach its write
    /// quorum (503; deleting again is safe). A failure to remove the index
    /// entry is only logged: the session is dead once tombstoned.
    pub async fn delete(&self, session: &Session) -> Result<(), SessionError> {
        self.delete_with(session, WriteOptions::default()).await
    }

    /// [`delete`](Self::delete) with the tombstone's own write quorum: e.g.
    /// [`WriteOptions::all`] for a logout that must be on every replica
    /// before the user is told (it fails while one is down).
    ///
    /// # Errors
    ///
    /// As [`delete`](Self::delete); [`SessionError::Store`]
    /// ([`Error::Invalid`]) for a quorum below W or above N.
    pub async fn delete_with(
        &self,
        session: &Session,
        options: WriteOptions,
    ) -> Result<(), SessionError> {
        self.tombstone(&session.id, session.cap_ms, options).await?;
        if let Some(user) = session.user.as_deref() {
            // The session is dead once tombstoned: a leftover entry is pruned
            // by the user's next login, or drops at the session's cap.
            if let Err(error) = self.remove_index_entries(user, &[session.id]).await {
                debug!(%error, "index entry of a deleted session not removed");
            }
        }
        Ok(())
    }

    /// Deletes the session `id` if it is live; returns whether it was.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get) and [`delete`](Self::delete).
    pub async fn delete_by_id(&self, id: &SessionId) -> Result<bool, SessionError> {
        let Some(record) = self.inner.coordinator.read(&session_key(id)).await? else {
            return Ok(false);
        };
        let session = Session::from_record(*id, &record)?;
        self.delete(&session).await?;
        Ok(true)
    }

    /// A record tombstone on `id`, living until `cap_ms` (the grace).
    pub(crate) async fn tombstone(
        &self,
        id: &SessionId,
        cap_ms: u64,
        options: WriteOptions,
    ) -> Result<(), SessionError> {
        let now = self.now_ms();
        let grace = cap_ms.max(now + 1_000);
        match self
            .inner
            .coordinator
            .write_with(&session_key(id), Mutation::delete(grace), options)
            .await
        {
            Ok(_) | Err(Error::Gone) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes a session that must not be served (fingerprint mismatch,
    /// revoked, evicted), logging instead of failing: the rule that rejected
    /// it rejects it on every later load too.
    pub(crate) async fn destroy_quietly(&self, session: &Session) {
        if let Err(error) = self.delete(session).await {
            warn!(session = %session.id.redacted(), %error, "could not delete a rejected session");
        }
    }

    /// Regenerates the id (after a privilege change): the data, user, role,
    /// creation time and lifetime cap are carried over to a new id, written
    /// with its index entry first; then the old id is tombstoned (retried up
    /// to `rotation_delete_attempts` times), so a write to the old id gets
    /// [`SessionError::Gone`]. Changes pending on `session` are carried too.
    ///
    /// Writes other requests made to the old id after `session` was loaded
    /// (a cart item added while this login request was busy hashing a
    /// password, say) are carried as well: right before each attempt to
    /// tombstone the old id, it is re-read with a quorum read and every data
    /// or item field stamped after the load (set or removed) is written to
    /// the new id, unless this request changed that field itself (its own
    /// pending change wins). What remains is the interval between that
    /// re-read and the tombstone's acknowledgement — one quorum write, a few
    /// milliseconds: a write acknowledged on the old id inside it is not
    /// carried. A write to the old id after the tombstone gets
    /// [`SessionError::Gone`].
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create); when the old id could not be tombstoned,
    /// the new one is deleted again and the last error returned (do not hand
    /// out the new id).
    pub async fn regenerate(&self, session: &Session) -> Result<Session, SessionError> {
        self.rotate(session, None).await
    }

    /// Regenerates the id at login: as [`regenerate`](Self::regenerate), but
    /// the new session belongs to `user` with `role`, starts a new lifetime
    /// and counts as a new login for "log out everywhere". An anonymous
    /// session's data (a cart) is carried over.
    ///
    /// # Errors
    ///
    /// As [`regenerate`](Self::regenerate), and [`SessionError::InvalidName`]
    /// for a bad user or role.
    pub async fn regenerate_as(
        &self,
        session: &Session,
        user: &str,
        role: Option<&str>,
    ) -> Result<Session, SessionError> {
        check_user(user)?;
        if let Some(role) = role {
            check_name("role", role)?;
        }
        self.rotate(session, Some((user.to_owned(), role.map(str::to_owned))))
            .await
    }

    async fn rotate(
        &self,
        old: &Session,
        login: Option<(String, Option<String>)>,
    ) -> Result<Session, SessionError> {
        let config = &self.inner.config;
        let mut fresh = old.clone();
        fresh.pending.clear();
        // The new record's stamps are not the old one's (a later rotation of
        // `fresh` compares values instead).
        fresh.loaded_stamps.clear();
        let is_login = login.is_some();
        if let Some((user, role)) = login {
            fresh.user = Some(user);
            fresh.role = role;
        }
        fresh.check_size(config)?;
        if let Some(user) = fresh.user.as_deref() {
            self.read_index(user).await?;
        }
        let now = self.now_ms();
        if is_login {
            fresh.created_ms = now;
            fresh.cap_ms = now + config.lifetime_ms();
        }
        fresh.last_activity_ms = now;
        fresh.expiry_ms = (now + config.idle_ms()).min(fresh.cap_ms);
        let carried_login = (!is_login).then_some(old.login_stamp);
        let (id, stamp) = self.create_record(&fresh, carried_login).await?;
        fresh.id = id;
        fresh.creation_stamp = stamp;
        fresh.login_stamp = carried_login.unwrap_or(stamp);
        if fresh.user.is_some() {
            self.register(&fresh).await?;
        }
        if let Err(error) = self.retire(old, &mut fresh).await {
            warn!(session = %old.id.redacted(), %error, "old id not tombstoned: rotation abandoned");
            self.destroy_quietly(&fresh).await;
            return Err(error);
        }
        if let Some(user) = old.user.as_deref() {
            if let Err(error) = self.remove_index_entries(user, &[old.id]).await {
                debug!(%error, "old index entry not removed (it drops at its cap)");
            }
        }
        debug!(old = %old.id.redacted(), new = %id.redacted(), "session id regenerated");
        Ok(fresh)
    }

    /// Tombstones the rotated-away `old` id (retried up to
    /// `rotation_delete_attempts` times), first carrying to `fresh` the
    /// writes other requests made to `old` since it was loaded (see
    /// [`regenerate`](Self::regenerate)); re-done before each attempt.
    async fn retire(&self, old: &Session, fresh: &mut Session) -> Result<(), SessionError> {
        let config = &self.inner.config;
        let mut delay = config.rotation_retry_delay;
        let mut attempt = 1;
        let mut seen = old.loaded_stamps.clone();
        loop {
            let result = match self.carry_late_writes(old, fresh, &mut seen).await {
                Ok(()) => {
                    self.tombstone(&old.id, old.cap_ms, WriteOptions::default())
                        .await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= config.rotation_delete_attempts => return Err(error),
                Err(SessionError::Store(Error::Invalid(invalid))) => {
                    return Err(SessionError::Store(Error::Invalid(invalid)))
                }
                Err(SessionError::Corrupt(what)) => return Err(SessionError::Corrupt(what)),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    /// Re-reads `old` (quorum read) and writes to `fresh`'s id every data or
    /// item field stamped after `seen` (the stamps as loaded, then as already
    /// carried), skipping the fields `old` has pending changes for and those
    /// whose value `fresh` already holds.
    async fn carry_late_writes(
        &self,
        old: &Session,
        fresh: &mut Session,
        seen: &mut BTreeMap<String, Stamp>,
    ) -> Result<(), SessionError> {
        let Some(record) = self.inner.coordinator.read(&session_key(&old.id)).await? else {
            return Ok(()); // deleted or expired meanwhile: nothing to carry
        };
        let mut mutation = Mutation::update(fresh.expiry_ms, fresh.cap_ms);
        let mut carried = Vec::new();
        for (name, entry) in &record.fields {
            let newer = seen.get(name).is_none_or(|stamp| entry.stamp > *stamp);
            if !is_user_field(name) || !newer || old.pending.contains_key(name) {
                continue;
            }
            let value = match &entry.value {
                Some(bytes) => Some(
                    serde_json::from_slice::<Value>(bytes)
                        .map_err(|_| SessionError::Corrupt("a value is not JSON"))?,
                ),
                None => None,
            };
            if fresh.field_value(name) == value.as_ref() {
                continue;
            }
            mutation = match &entry.value {
                Some(bytes) => mutation.set(name.clone(), bytes.clone()),
                None => mutation.remove(name.clone()),
            };
            carried.push((name.clone(), entry.stamp, value));
        }
        if carried.is_empty() {
            return Ok(());
        }
        self.inner
            .coordinator
            .write(&session_key(&fresh.id), mutation)
            .await?;
        debug!(
            old = %old.id.redacted(),
            fields = carried.len(),
            "carried writes made to the old id during the rotation"
        );
        for (name, stamp, value) in carried {
            fresh.apply_field(&name, value);
            seen.insert(name, stamp);
        }
        Ok(())
    }
}

pub(crate) fn check_user(user: &str) -> Result<(), SessionError> {
    let rule = if user.is_empty() {
        Some("empty")
    } else if user.len() > USER_ID_MAX_BYTES {
        Some("longer than USER_ID_MAX_BYTES")
    } else if user.chars().any(char::is_control) {
        Some("holds a control character")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(SessionError::InvalidName {
            what: "user id",
            rule,
        }),
        None => Ok(()),
    }
}
