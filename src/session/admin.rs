//! Admin listing and statistics: approximate, from one healthy replica,
//! page by page, in bounded memory.
//!
//! Both walk the keyspace of **one** replica (the first that is Up and
//! readable, from [`Coordinator::replica_states`](crate::Coordinator::replica_states))
//! with bounded SCAN pages, and read each session record from that replica
//! directly, bypassing the quorum: a write that replica has not received yet
//! is missed, and a session revoked by "log out everywhere" or evicted by the
//! per-user limit is still counted until a load or the revocation tombstones
//! it. Memory stays bounded whatever the keyspace size: a page at a time, at
//! most [`STATS_DISTINCT_USERS_MAX`] users counted exactly (then a
//! HyperLogLog estimate, flagged approximate) and [`STATS_ROLES_MAX`] roles.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::config::{
    ADMIN_PAGE_MAX, STATS_DISTINCT_USERS_MAX, STATS_NO_ROLE, STATS_OTHER_ROLE, STATS_ROLES_MAX,
    USER_WRITES_IN_FLIGHT_MAX,
};
use super::error::SessionError;
use super::id::SessionId;
use super::keys::session_id_of_key;
use super::model::Session;
use super::store::SessionStore;
use crate::core::health::Health;
use crate::error::{Error, ReplicaError, ReplicaFailure};
use crate::replica::Replica;

/// Longest replica cursor accepted inside an [`AdminCursor`].
const CURSOR_MAX_BYTES: usize = 512;

/// Where an admin listing continues: the replica it is pinned to and that
/// replica's scan cursor. Opaque text (`<replica>.<cursor>`); parsing checks
/// it strictly, since it comes back from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminCursor {
    replica: usize,
    cursor: String,
}

impl fmt::Display for AdminCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.replica, self.cursor)
    }
}

impl FromStr for AdminCursor {
    type Err = SessionError;

    fn from_str(text: &str) -> Result<AdminCursor, SessionError> {
        let (replica, cursor) = text.split_once('.').ok_or(SessionError::InvalidCursor)?;
        let replica_ok = !replica.is_empty()
            && replica.len() <= 4
            && replica.bytes().all(|b| b.is_ascii_digit());
        let cursor_ok = !cursor.is_empty()
            && cursor.len() <= CURSOR_MAX_BYTES
            && cursor
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'*' | b'?' | b'[' | b']' | b'\\'));
        if !replica_ok || !cursor_ok {
            return Err(SessionError::InvalidCursor);
        }
        Ok(AdminCursor {
            replica: replica.parse().map_err(|_| SessionError::InvalidCursor)?,
            cursor: cursor.to_owned(),
        })
    }
}

/// One session as the admin listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The id (`Debug` redacts it; show [`SessionId::redacted`] to people).
    pub id: SessionId,
    /// The user.
    pub user: Option<String>,
    /// The role.
    pub role: Option<String>,
    /// Creation time, ms.
    pub created_ms: u64,
    /// Last activity, ms (see [`Session::last_activity_ms`]).
    pub last_activity_ms: u64,
    /// Expiry, ms.
    pub expiry_ms: u64,
    /// Client IP recorded at creation.
    pub client_ip: Option<String>,
    /// User agent recorded at creation.
    pub user_agent: Option<String>,
}

/// One page of the admin listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminPage {
    /// Live sessions found in this page of keys (possibly none: a page of
    /// keys may hold only index records and tombstones).
    pub sessions: Vec<SessionSummary>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<AdminCursor>,
    /// The replica scanned.
    pub replica: String,
}

/// Statistics of the live sessions, from one replica (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// The replica scanned.
    pub replica: String,
    /// Live sessions.
    pub active_sessions: u64,
    /// Distinct users among them.
    pub unique_users: u64,
    /// True when more than [`STATS_DISTINCT_USERS_MAX`] users were seen:
    /// `unique_users` is then a HyperLogLog estimate (about 1 % error).
    pub unique_users_approximate: bool,
    /// Sessions by role ([`STATS_NO_ROLE`] without one; roles past
    /// [`STATS_ROLES_MAX`] under [`STATS_OTHER_ROLE`]).
    pub sessions_by_role: BTreeMap<String, u64>,
    /// Age of the oldest live session, ms.
    pub oldest_age_ms: Option<u64>,
    /// Age of the newest live session, ms.
    pub newest_age_ms: Option<u64>,
    /// Keys scanned (sessions, indexes, tombstones).
    pub keys_scanned: u64,
}

impl SessionStore {
    /// One page of live sessions, `page_size` keys scanned (at most
    /// [`ADMIN_PAGE_MAX`]). Start with `None`, continue with the returned
    /// cursor; a listing stays on its replica.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use std::sync::Arc;
    /// # use quorum_sessions::{ClusterConfig, Coordinator};
    /// # use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
    /// use quorum_sessions::session::{NewSession, SessionConfig, SessionStore};
    /// # let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"].into_iter()
    /// #     .map(|n| Arc::new(InMemoryReplica::new(n)) as Arc<dyn Replica>).collect();
    /// # let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
    /// let store = SessionStore::new(coordinator, SessionConfig::default()).unwrap();
    /// for user in ["ann", "ben", "cy"] {
    ///     store.create(NewSession::for_user(user).role("user")).await.unwrap();
    /// }
    /// let (mut seen, mut cursor) = (0, None);
    /// loop {
    ///     let page = store.admin_page(cursor.as_ref(), 2).await.unwrap();
    ///     seen += page.sessions.len();
    ///     match page.next { Some(next) => cursor = Some(next), None => break }
    /// }
    /// assert_eq!(seen, 3);
    /// let stats = store.admin_stats().await.unwrap();
    /// assert_eq!((stats.active_sessions, stats.unique_users), (3, 3));
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] ([`Error::Unavailable`]) when no replica is
    /// healthy, or the pinned one no longer is, or the scan failed;
    /// [`SessionError::InvalidCursor`] for a cursor naming no replica.
    pub async fn admin_page(
        &self,
        cursor: Option<&AdminCursor>,
        page_size: usize,
    ) -> Result<AdminPage, SessionError> {
        let index = self.scan_replica(cursor.map(|c| c.replica))?;
        let replica = self.inner.coordinator.replicas()[index].clone();
        let start = cursor.map_or("0", |c| c.cursor.as_str());
        let page = replica
            .scan(start, page_size.clamp(1, ADMIN_PAGE_MAX))
            .await
            .map_err(|error| scan_failure(replica.as_ref(), error))?;
        let sessions = self.read_sessions(&replica, &page.keys).await?;
        Ok(AdminPage {
            sessions: sessions.iter().map(summary).collect(),
            next: page.next_cursor.map(|cursor| AdminCursor {
                replica: index,
                cursor,
            }),
            replica: replica.name().to_owned(),
        })
    }

    /// Statistics of the live sessions: a full walk of one replica, a page
    /// of `admin_scan_page` keys at a time, in bounded memory.
    ///
    /// # Errors
    ///
    /// As [`admin_page`](Self::admin_page).
    pub async fn admin_stats(&self) -> Result<SessionStats, SessionError> {
        let index = self.scan_replica(None)?;
        let replica = self.inner.coordinator.replicas()[index].clone();
        let mut tally = StatsTally::new(replica.name());
        let mut cursor = "0".to_owned();
        loop {
            let page = replica
                .scan(&cursor, self.inner.config.admin_scan_page)
                .await
                .map_err(|error| scan_failure(replica.as_ref(), error))?;
            tally.stats.keys_scanned += page.keys.len() as u64;
            for session in self.read_sessions(&replica, &page.keys).await? {
                tally.add(&session);
            }
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(tally.finish(self.now_ms()))
    }

    /// The replica to scan: `pinned` if it is still healthy, else the first
    /// Up and readable one (then a Suspect one).
    fn scan_replica(&self, pinned: Option<usize>) -> Result<usize, SessionError> {
        let states = self.inner.coordinator.replica_states();
        let usable = |index: usize, health: Health| {
            states
                .get(index)
                .is_some_and(|state| state.readable && state.health == health)
        };
        if let Some(index) = pinned {
            if index >= states.len() {
                return Err(SessionError::InvalidCursor);
            }
            if usable(index, Health::Up) || usable(index, Health::Suspect) {
                return Ok(index);
            }
        } else {
            for health in [Health::Up, Health::Suspect] {
                if let Some(index) = (0..states.len()).find(|&index| usable(index, health)) {
                    return Ok(index);
                }
            }
        }
        Err(SessionError::Store(Error::Unavailable {
            needed: 1,
            answered: 0,
            failures: Vec::new(),
            not_refilled: Vec::new(),
            operator_needed: false,
        }))
    }

    /// Reads the session records among `keys` from `replica` (skipping other
    /// keys, tombstones, partial copies and expired sessions).
    async fn read_sessions(
        &self,
        replica: &Arc<dyn Replica>,
        keys: &[String],
    ) -> Result<Vec<Session>, SessionError> {
        let now = self.now_ms();
        let ids: Vec<(String, SessionId)> = keys
            .iter()
            .filter_map(|key| Some((key.clone(), session_id_of_key(key)?)))
            .collect();
        let reader = replica.clone();
        let reads: Vec<_> = stream::iter(ids)
            .map(move |(key, id)| {
                let replica = reader.clone();
                async move { (id, replica.read(&key).await) }
            })
            .buffered(USER_WRITES_IN_FLIGHT_MAX)
            .collect()
            .await;
        let mut sessions = Vec::new();
        for (id, reply) in reads {
            let reply = reply.map_err(|error| scan_failure(replica.as_ref(), error))?;
            let Some(record) = reply.record else { continue };
            if record.is_tombstone() || record.partial || record.is_expired(now) {
                continue;
            }
            // A record this layer cannot decode is skipped, not fatal: the
            // listing is a report, and the record is read-repaired on load.
            if let Ok(session) = Session::from_record(id, &record) {
                sessions.push(session);
            }
        }
        Ok(sessions)
    }
}

fn scan_failure(replica: &dyn Replica, error: ReplicaError) -> SessionError {
    SessionError::Store(Error::Unavailable {
        needed: 1,
        answered: 0,
        failures: vec![ReplicaFailure {
            replica: replica.name().to_owned(),
            error,
        }],
        not_refilled: Vec::new(),
        operator_needed: false,
    })
}

fn summary(session: &Session) -> SessionSummary {
    SessionSummary {
        id: session.id,
        user: session.user.clone(),
        role: session.role.clone(),
        created_ms: session.created_ms,
        last_activity_ms: session.last_activity_ms,
        expiry_ms: session.expiry_ms(),
        client_ip: session.ip.clone(),
        user_agent: session.user_agent.clone(),
    }
}

struct StatsTally {
    stats: SessionStats,
    users_exact: HashSet<u64>,
    users_estimate: HyperLogLog,
    oldest_created: Option<u64>,
    newest_created: Option<u64>,
}

impl StatsTally {
    fn new(replica: &str) -> StatsTally {
        StatsTally {
            stats: SessionStats {
                replica: replica.to_owned(),
                ..SessionStats::default()
            },
            users_exact: HashSet::new(),
            users_estimate: HyperLogLog::new(),
            oldest_created: None,
            newest_created: None,
        }
    }

    fn add(&mut self, session: &Session) {
        let stats = &mut self.stats;
        stats.active_sessions += 1;
        if let Some(user) = session.user.as_deref() {
            let digest = Sha256::digest(user.as_bytes());
            let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
            self.users_estimate.insert(hash);
            if !stats.unique_users_approximate {
                self.users_exact.insert(hash);
                if self.users_exact.len() > STATS_DISTINCT_USERS_MAX {
                    stats.unique_users_approximate = true;
                    self.users_exact = HashSet::new(); // give the memory back
                }
            }
        }
        let role = session.role.as_deref().unwrap_or(STATS_NO_ROLE);
        let roles = &mut stats.sessions_by_role;
        let known = roles.contains_key(role) || roles.len() < STATS_ROLES_MAX;
        let name = if known { role } else { STATS_OTHER_ROLE };
        *roles.entry(name.to_owned()).or_default() += 1;
        let created = session.created_ms;
        self.oldest_created = Some(self.oldest_created.map_or(created, |c| c.min(created)));
        self.newest_created = Some(self.newest_created.map_or(created, |c| c.max(created)));
    }

    fn finish(mut self, now_ms: u64) -> SessionStats {
        self.stats.unique_users = if self.stats.unique_users_approximate {
            self.users_estimate.estimate()
        } else {
            self.users_exact.len() as u64
        };
        self.stats.oldest_age_ms = self.oldest_created.map(|c| now_ms.saturating_sub(c));
        self.stats.newest_age_ms = self.newest_created.map(|c| now_ms.saturating_sub(c));
        self.stats
    }
}

/// HyperLogLog with 2^14 one-byte registers (16 KiB; standard error about
/// 0.8 %).
struct HyperLogLog {
    registers: Vec<u8>,
}

const HLL_BITS: u32 = 14;

impl HyperLogLog {
    fn new() -> HyperLogLog {
        HyperLogLog {
            registers: vec![0; 1 << HLL_BITS],
        }
    }

    fn insert(&mut self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        let rest = (hash << HLL_BITS) | (1 << (HLL_BITS - 1)); // a stop bit bounds the rank
        let rank = rest.leading_zeros() as u8 + 1;
        let register = &mut self.registers[index];
        *register = (*register).max(rank);
    }

    fn estimate(&self) -> u64 {
        let m = self.registers.len() as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting for small sets
        } else {
            raw
        };
        estimate.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_strictly() {
        let cursor: AdminCursor = "1.s:{abc}".parse().unwrap();
        assert_eq!(cursor.to_string(), "1.s:{abc}");
        for bad in [
            "", "1", ".x", "a.x", "1.", "1.a b", "1.a*", "12345.x", "1.a\n",
        ] {
            assert!(bad.parse::<AdminCursor>().is_err(), "{bad:?}");
        }
        assert!(format!("1.{}", "x".repeat(CURSOR_MAX_BYTES + 1))
            .parse::<AdminCursor>()
            .is_err());
    }

    #[test]
    fn hyperloglog_is_within_a_few_percent() {
        for count in [10u64, 1_000, 200_000] {
            let mut hll = HyperLogLog::new();
            for i in 0..count {
                let digest = Sha256::digest(i.to_be_bytes());
                hll.insert(u64::from_be_bytes(digest[..8].try_into().unwrap()));
            }
            let estimate = hll.estimate() as f64;
            let error = (estimate - count as f64).abs() / count as f64;
            assert!(error < 0.05, "{count}: estimate {estimate}");
        }
    }
}
