//! The session layer: web sessions over the [`Coordinator`](crate::Coordinator).
//!
//! [`SessionStore`] does everything a session store of the seed tutorial does
//! — create, get with a sliding expiry, update, delete, a per-user index with
//! "log out everywhere", a shopping cart, fingerprint binding, CSRF tokens,
//! admin listing and statistics — on replicated records, so that one Redis
//! dying, restarting empty or hanging logs nobody out.
//!
//! # Guarantees
//!
//! - **Ids**: 122 random bits from the OS CSPRNG, one strict form (32
//!   lowercase hex digits of a version-4 UUID, see [`SessionId`]); anything
//!   else is refused before any replica is contacted. Creation is a
//!   conditional create: a collision makes another id, never an overwrite.
//! - **Changed fields only**: a save writes the fields changed since the
//!   load, each with its own version, so concurrent requests of one user that
//!   change different keys (or add different cart items) all survive.
//! - **Delete wins**: logout, rotation, revocation and eviction write a
//!   tombstone that lives until the session's lifetime cap; no late write,
//!   touch, read-repair or returning replica revives the session. A write
//!   to a deleted session fails with [`SessionError::Gone`].
//! - **Rotation keeps concurrent writes**: a login rotates the id; writes
//!   other requests made to the old id while the login ran are carried to
//!   the new id (see [`SessionStore::regenerate`] for the one window left).
//! - **Unavailable is never "logged out"**: when too few replicas answer,
//!   every operation returns an error for which
//!   [`SessionError::is_unavailable`] is true (map it to 503); only an
//!   unknown, expired, deleted, revoked or evicted session loads as `None`.
//! - **Nothing secret in logs**: ids are logged redacted (8 characters,
//!   `Debug` does the same), data never.
//!
//! # Expiry
//!
//! A session expires `idle_timeout` after its last extension, and in any
//! case `absolute_lifetime` after creation (the cap, which also bounds
//! [`SessionStore::regenerate`]). [`SessionStore::get`] extends it only when
//! less than `refresh_threshold` remains, and writes the last activity only
//! with that extension: with the defaults (30 min idle, 15 min threshold) at
//! most one write per 15 minutes of activity, and reads in between write
//! nothing. A save extends for free when an extension is due.
//!
//! # Per-user index, log out everywhere, per-user limit
//!
//! One replicated index record per user (key `u:{sha256(user)}`), never
//! tombstoned. Each session of the user has one field `s:<id>` whose value is
//! the session's creation stamp and whose `until` is the session's lifetime
//! cap, so the merge drops entries that cannot matter any more; the record's
//! expiry is the largest cap written (its own cap is the largest time a stamp
//! can hold, so caps never shorten it). The first write of an index is a
//! create, so that no replica ever holds only a partial index.
//!
//! - **Log out everywhere** ([`SessionStore::logout_all`]) writes the field
//!   `revoked`; its *stamp* (an HLC value, merged by "larger stamp wins") is
//!   the revocation point, so a later logout-all always wins. A session whose
//!   login stamp is below it is invalid on load. Sessions are tombstoned
//!   before their entries are removed.
//! - **A login racing a logout-all cannot survive it.** A login first reads
//!   the index (which moves this coordinator's clock past any revocation it
//!   sees), creates the session, writes its entry, then reads the index
//!   again; a logout-all writes `revoked`, then reads the index. With
//!   R + W > N at least one of the two sees the other's write: either the
//!   login sees `revoked` above its stamp and destroys its session
//!   ([`SessionError::Revoked`]), or the logout-all sees the entry and
//!   tombstones the session — and every load checks `revoked` again.
//! - **Per-user limit K**: the live sessions are the newest K by creation
//!   stamp. A login removes entries whose session reads as absent, then
//!   tombstones every session past the K newest live ones; a load rejects
//!   (and tombstones) a session that has K or more newer entries. Both apply
//!   the same order, so concurrent logins never leave more than K.
//! - A session with a user costs two quorum reads to load (the session, then
//!   its user's index); anonymous sessions one.
//!
//! # Records
//!
//! | record | key | fields |
//! | --- | --- | --- |
//! | session | `s:{<id>}` | `_user`, `_role`, `_created`, `_seen`, `_ip`, `_ua`, `_fp`, `_login`; data `d:<key>` (JSON); items `i:<collection>:<item>` (JSON) |
//! | per-user index | `u:{<sha256(user) hex>}` | `s:<id>` → creation stamp (until the session's cap); `revoked` |
//!
//! # Options ([`SessionConfig`])
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `idle_timeout` | 30 min | sliding timeout |
//! | `refresh_threshold` | 15 min | extend only when less than this remains |
//! | `absolute_lifetime` | 24 h | cap from creation; tombstone grace |
//! | `max_sessions_per_user` | `Some(10)` | newest K live per user; `None`: no limit |
//! | `fingerprint` | `None` | bind to SHA-256 of user agent (+ `accept_language`: true, `ip`: false) |
//! | `max_value_bytes` | 16 KiB | largest JSON value of a key or item |
//! | `max_session_bytes` | 64 KiB | largest session (names + values) |
//! | `max_fields` | 100 | data keys + items per session |
//! | `rotation_delete_attempts` | 5 | tries to tombstone the old id on rotation |
//! | `rotation_retry_delay` | 50 ms | first retry delay, doubled each time |
//! | `admin_scan_page` | 500 | keys per SCAN page in the stats walk |
//!
//! Named limits (constants in [`config`]): [`config::CREATE_ATTEMPTS_MAX`],
//! [`config::USER_ID_MAX_BYTES`], [`config::NAME_MAX_BYTES`],
//! [`config::CLIENT_ATTRIBUTE_MAX_BYTES`], [`config::USER_INDEX_ENTRIES_MAX`],
//! [`config::USER_WRITES_IN_FLIGHT_MAX`], [`config::ADMIN_PAGE_MAX`],
//! [`config::STATS_DISTINCT_USERS_MAX`], [`config::STATS_ROLES_MAX`].
//!
//! # Security helpers
//!
//! - [`Csrf`]: HMAC-SHA256 tokens bound to the session id, fixed length,
//!   checked in constant time.
//! - Fingerprint binding ([`FingerprintConfig`]): a session created by one
//!   client and presented by another is destroyed and reported as
//!   [`SessionError::FingerprintMismatch`].
//!
//! # Admin
//!
//! [`SessionStore::admin_page`] and [`SessionStore::admin_stats`] read one
//! healthy replica with bounded SCAN pages, in bounded memory; their numbers
//! are approximate (see [`admin`]).
//!
//! # tower-sessions
//!
//! With the `tower` feature, `session::tower::TowerSessionStore` implements
//! `tower_sessions_core::SessionStore` (0.15).

pub mod admin;
mod builder;
pub mod config;
mod error;
mod id;
pub mod keys;
mod model;
mod security;
mod store;
#[cfg(feature = "tower")]
pub mod tower;
mod users;

pub use admin::{AdminCursor, AdminPage, SessionStats, SessionSummary};
pub use builder::SessionStoreBuilder;
pub use config::{FingerprintConfig, SessionConfig};
pub use error::SessionError;
pub use id::{InvalidSessionId, SessionId, SESSION_ID_LEN};
pub use model::{NewSession, Session};
pub use security::{ClientInfo, Csrf, WeakCsrfSecret, CSRF_SECRET_MIN_BYTES, CSRF_TOKEN_LEN};
pub use store::{IdGenerator, SessionStore};
