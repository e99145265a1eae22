//! The per-user index: listing a user's sessions, "log out everywhere" and
//! the per-user limit. The design and the race arguments are in the
//! [session module docs](super#per-user-index-log-out-everywhere-per-user-limit).

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt};
use tracing::{debug, warn};

use super::config::{USER_INDEX_ENTRIES_MAX, USER_WRITES_IN_FLIGHT_MAX};
use super::error::SessionError;
use super::id::SessionId;
use super::keys::{self, index_key, session_key};
use super::model::Session;
use super::store::{check_user, SessionStore};
use crate::error::Error;
use crate::mutation::Mutation;
use crate::record::Record;
use crate::stamp::{Stamp, PHYSICAL_MAX};

/// Lifetime cap of index records: none of their own (see the module docs).
const INDEX_CAP_MS: u64 = PHYSICAL_MAX;

/// What a reader learns from a user's index.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexView {
    /// Session id and creation stamp, newest first, at most
    /// [`USER_INDEX_ENTRIES_MAX`].
    pub(crate) entries: Vec<(SessionId, Stamp)>,
    /// The stamp of the latest "log out everywhere".
    pub(crate) revoked: Option<Stamp>,
}

impl IndexView {
    /// The view of an index record at `now_ms` (entries past their `until`
    /// are ignored even if a copy still holds them).
    pub(crate) fn new(record: Option<&Record>, now_ms: u64) -> IndexView {
        let Some(record) = record else {
            return IndexView::default();
        };
        let mut entries: Vec<(SessionId, Stamp)> = record
            .fields
            .iter()
            .filter(|(_, entry)| entry.until_ms.is_none_or(|until| until >= now_ms))
            .filter_map(|(name, entry)| {
                let value = entry.value.as_deref()?;
                Some((keys::index_entry_id(name)?, Stamp::decode(value)?))
            })
            .collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        entries.truncate(USER_INDEX_ENTRIES_MAX);
        let revoked = record
            .fields
            .get(keys::INDEX_REVOKED)
            .filter(|entry| entry.value.is_some())
            .map(|entry| entry.stamp);
        IndexView { entries, revoked }
    }

    /// Why `session` must not be served, if it must not.
    pub(crate) fn rejects(&self, session: &Session, limit: Option<usize>) -> Option<&'static str> {
        if self
            .revoked
            .is_some_and(|revoked| session.login_stamp < revoked)
        {
            return Some("logged out everywhere");
        }
        let newer = self
            .entries
            .iter()
            .filter(|(id, stamp)| (*stamp, *id) > (session.creation_stamp, session.id))
            .count();
        if limit.is_some_and(|limit| newer >= limit) {
            return Some("evicted by the per-user limit");
        }
        None
    }
}

impl SessionStore {
    pub(crate) async fn read_index(&self, user: &str) -> Result<Option<Record>, SessionError> {
        Ok(self.inner.coordinator.read(&index_key(user)).await?)
    }

    /// Writes fields of a user's index. The first write is a create (a full
    /// record: an update alone would leave a *partial* record, which reads
    /// cannot count); once the record exists, updates.
    async fn write_index(
        &self,
        user: &str,
        expiry_ms: u64,
        fields: impl Fn(Mutation) -> Mutation,
    ) -> Result<Stamp, SessionError> {
        let key = index_key(user);
        let coordinator = &self.inner.coordinator;
        match coordinator
            .write(&key, fields(Mutation::create(expiry_ms, INDEX_CAP_MS)))
            .await
        {
            Ok(ack) => return Ok(ack.stamp),
            Err(Error::Collision) => {}
            Err(error) => return Err(error.into()),
        }
        let ack = coordinator
            .write(&key, fields(Mutation::update(expiry_ms, INDEX_CAP_MS)))
            .await?;
        Ok(ack.stamp)
    }

    /// Adds a new session to its user's index, then re-reads the index: a
    /// racing "log out everywhere" destroys the session
    /// ([`SessionError::Revoked`]); sessions past the per-user limit are
    /// evicted.
    pub(crate) async fn register(&self, session: &Session) -> Result<(), SessionError> {
        let user = session
            .user
            .as_deref()
            .expect("only sessions with a user are indexed");
        let entry = keys::index_entry(&session.id);
        let stamp = session.creation_stamp.encode();
        let written = self
            .write_index(user, session.cap_ms, |m| {
                m.set_until(entry.clone(), stamp.clone(), session.cap_ms)
            })
            .await;
        let index = match written {
            Ok(_) => self.read_index(user).await,
            Err(error) => Err(error),
        };
        let index = match index {
            Ok(index) => index,
            Err(error) => {
                // Never hand out a session that may be missing from its
                // index; the id was never returned, so nobody holds it.
                self.destroy_quietly(session).await;
                return Err(error);
            }
        };
        let view = IndexView::new(index.as_ref(), self.now_ms());
        if view
            .revoked
            .is_some_and(|revoked| session.login_stamp < revoked)
        {
            self.destroy_quietly(session).await;
            return Err(SessionError::Revoked);
        }
        if let Some(limit) = self.inner.config.max_sessions_per_user {
            self.enforce_limit(user, &view, session, limit).await;
        }
        Ok(())
    }

    /// Keeps the newest `limit` live sessions of `user` (`own` counts as
    /// live): entries of absent sessions are removed, older sessions
    /// tombstoned. Failures are logged: loads apply the same rule.
    async fn enforce_limit(&self, user: &str, view: &IndexView, own: &Session, limit: usize) {
        if view.entries.len() <= limit {
            return;
        }
        let coordinator = &self.inner.coordinator;
        let (mut live, mut absent, mut evicted) = (0, Vec::new(), Vec::new());
        for &(id, _) in &view.entries {
            if live >= limit {
                evicted.push(id);
                continue;
            }
            if id == own.id {
                live += 1;
                continue;
            }
            match coordinator.read(&session_key(&id)).await {
                Ok(None) => absent.push(id),
                // Unknown counts as live: evicting more is the safe side.
                Ok(Some(_)) | Err(_) => live += 1,
            }
        }
        let cap = self.now_ms() + self.inner.config.lifetime_ms();
        let (failures, _) = self.tombstone_all(&evicted, cap).await;
        if failures > 0 {
            warn!(
                failures,
                "per-user limit: some evictions failed; loads reject them"
            );
        }
        absent.extend(evicted);
        if let Err(error) = self.remove_index_entries(user, &absent).await {
            debug!(%error, "per-user limit: index entries not removed");
        }
    }

    /// Tombstones sessions (at most [`USER_WRITES_IN_FLIGHT_MAX`] writes in
    /// flight); returns the number of failures and the first one.
    async fn tombstone_all(&self, ids: &[SessionId], cap_ms: u64) -> (usize, Option<SessionError>) {
        let this = self.clone();
        let results: Vec<Result<(), SessionError>> = stream::iter(ids.to_vec())
            .map(move |id| {
                let this = this.clone();
                async move {
                    this.tombstone(&id, cap_ms, crate::WriteOptions::default())
                        .await
                }
            })
            .buffer_unordered(USER_WRITES_IN_FLIGHT_MAX)
            .collect()
            .await;
        let mut errors = results.into_iter().filter_map(Result::err);
        let first = errors.next();
        (usize::from(first.is_some()) + errors.count(), first)
    }

    /// Removes index entries (a removal per field, dropped by the merge once
    /// no session it names can be alive).
    pub(crate) async fn remove_index_entries(
        &self,
        user: &str,
        ids: &[SessionId],
    ) -> Result<(), SessionError> {
        let until = self.now_ms() + self.inner.config.lifetime_ms() + self.skew_ms();
        let per_write = self.inner.coordinator.config().limits.max_fields_per_write;
        for chunk in ids.chunks(per_write.max(1)) {
            self.write_index(user, until, |mut m| {
                for id in chunk {
                    m = m.remove_until(keys::index_entry(id), until);
                }
                m
            })
            .await?;
        }
        Ok(())
    }

    fn skew_ms(&self) -> u64 {
        super::config::duration_ms(self.inner.coordinator.config().max_clock_skew)
    }

    /// Logs `user` out everywhere: records the revocation in the index (every
    /// session whose login precedes it is invalid on load, from now on and
    /// on every app server), tombstones the user's listed sessions, then
    /// removes their index entries. Returns the number of sessions revoked.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use std::sync::Arc;
    /// # use quorum_sessions::{ClusterConfig, Coordinator};
    /// # use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
    /// use quorum_sessions::session::{ClientInfo, NewSession, SessionConfig, SessionStore};
    /// # let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"].into_iter()
    /// #     .map(|n| Arc::new(InMemoryReplica::new(n)) as Arc<dyn Replica>).collect();
    /// # let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
    /// let store = SessionStore::new(coordinator, SessionConfig::default()).unwrap();
    /// let laptop = store.create(NewSession::for_user("bob")).await.unwrap();
    /// let phone = store.create(NewSession::for_user("bob")).await.unwrap();
    /// assert_eq!(store.user_sessions("bob").await.unwrap().len(), 2);
    /// assert_eq!(store.logout_all("bob").await.unwrap(), 2);
    /// let client = ClientInfo::default();
    /// assert!(store.get(laptop.id(), &client).await.unwrap().is_none());
    /// assert!(store.get(phone.id(), &client).await.unwrap().is_none());
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the revocation or a tombstone did not
    /// reach its quorum (503; calling again is safe). Once the revocation
    /// was written, the sessions are invalid even if a tombstone failed.
    pub async fn logout_all(&self, user: &str) -> Result<usize, SessionError> {
        check_user(user)?;
        let now = self.now_ms();
        let until = now + self.inner.config.lifetime_ms() + self.skew_ms();
        let revoked = self
            .write_index(user, until, |m| {
                m.set_until(keys::INDEX_REVOKED, now.to_string(), until)
            })
            .await?;
        let view = IndexView::new(self.read_index(user).await?.as_ref(), self.now_ms());
        let victims: Vec<SessionId> = view
            .entries
            .iter()
            .filter(|(_, created)| *created < revoked)
            .map(|(id, _)| *id)
            .collect();
        let (failures, first) = self.tombstone_all(&victims, until).await;
        if let Some(error) = first {
            warn!(
                failures,
                "logout-all: some tombstones failed (the sessions are revoked anyway)"
            );
            return Err(error);
        }
        self.remove_index_entries(user, &victims).await?;
        debug!(sessions = victims.len(), "logged out everywhere");
        Ok(victims.len())
    }

    /// The live sessions of `user`, newest first (at most
    /// [`USER_INDEX_ENTRIES_MAX`]). Entries whose session is gone are
    /// skipped; revoked or evicted sessions are not listed.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the index or a session cannot be read
    /// (503).
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<Session>, SessionError> {
        check_user(user)?;
        let view = IndexView::new(self.read_index(user).await?.as_ref(), self.now_ms());
        let coordinator = self.inner.coordinator.clone();
        let ids: Vec<SessionId> = view.entries.iter().map(|(id, _)| *id).collect();
        let reads: Vec<(SessionId, Result<Option<Record>, Error>)> = stream::iter(ids)
            .map(move |id| {
                let coordinator = coordinator.clone();
                async move { (id, coordinator.read(&session_key(&id)).await) }
            })
            .buffered(USER_WRITES_IN_FLIGHT_MAX)
            .collect()
            .await;
        let mut sessions = BTreeMap::new();
        for (id, read) in reads {
            let Some(record) = read? else { continue };
            let session = Session::from_record(id, &record)?;
            if session.user.as_deref() != Some(user) {
                continue;
            }
            if view
                .rejects(&session, self.inner.config.max_sessions_per_user)
                .is_none()
            {
                sessions.insert((std::cmp::Reverse(session.creation_stamp), id), session);
            }
        }
        Ok(sessions.into_values().collect())
    }
}
