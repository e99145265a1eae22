//! Errors of the session layer, grouped by what the caller does next.

use crate::error::Error;

use super::id::InvalidSessionId;

/// Errors of the session layer. None of them carries a full session id or
/// any session data, so they can be logged as they are.
///
/// What an app does with each:
///
/// | variant | HTTP mapping in the example app |
/// | --- | --- |
/// | [`Store`](Self::Store) with [`is_unavailable`](Self::is_unavailable) | 503, retry later — never "not logged in" |
/// | [`FingerprintMismatch`](Self::FingerprintMismatch), [`Gone`](Self::Gone), [`Revoked`](Self::Revoked), [`Expired`](Self::Expired) | 401, clear the cookie |
/// | [`TooLarge`](Self::TooLarge), [`TooManyFields`](Self::TooManyFields), [`InvalidName`](Self::InvalidName), [`Json`](Self::Json), [`InvalidId`](Self::InvalidId), [`InvalidCursor`](Self::InvalidCursor) | 400 |
/// | [`IdCollisions`](Self::IdCollisions), [`Corrupt`](Self::Corrupt) | 500 |
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The coordinator failed: [`Error::Unavailable`] and
    /// [`Error::QuorumNotReached`] mean "try again later" (see
    /// [`is_unavailable`](Self::is_unavailable)); [`Error::Invalid`] is a
    /// bug of this layer's input checks.
    #[error(transparent)]
    Store(Error),
    /// The session was deleted (logged out, rotated, revoked, evicted) while
    /// this request used it: the write landed on a tombstone and was not
    /// applied.
    #[error("the session was deleted")]
    Gone,
    /// The session expired before this save; nothing was written.
    #[error("the session expired")]
    Expired,
    /// A "log out everywhere" for this user raced this login or rotation and
    /// won: the new session was destroyed.
    #[error("the user was logged out everywhere while this login ran")]
    Revoked,
    /// The client's fingerprint differs from the one the session was bound
    /// to: the session was destroyed (a possible hijack).
    #[error("client fingerprint mismatch: the session was destroyed")]
    FingerprintMismatch,
    /// A malformed, oversized or non-canonical session id.
    #[error(transparent)]
    InvalidId(#[from] InvalidSessionId),
    /// The session data would exceed a size limit; nothing was stored.
    #[error("{what} is {size} bytes, limit {limit}; nothing was stored")]
    TooLarge {
        /// What is too large (`"session"`, or `"value"`).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The session would hold more data keys and items than `max_fields`.
    #[error("{count} data keys and items, limit {limit}; nothing was stored")]
    TooManyFields {
        /// Keys and items after the change.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A user id, role, data key, collection or item id breaks the naming
    /// rules (empty, too long, control characters, `:` in a collection).
    #[error("invalid {what}: {rule}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The rule broken.
        rule: &'static str,
    },
    /// A typed value did not serialize or deserialize.
    #[error("JSON (de)serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    /// No free id after [`CREATE_ATTEMPTS_MAX`](super::config::CREATE_ATTEMPTS_MAX)
    /// attempts (a broken id generator).
    #[error("no free session id after {attempts} attempts")]
    IdCollisions {
        /// Attempts made.
        attempts: u32,
    },
    /// A stored session lacks fields this layer always writes, or holds
    /// values it cannot decode.
    #[error("stored session is corrupt: {0}")]
    Corrupt(&'static str),
    /// An admin cursor that this layer did not produce.
    #[error("invalid admin cursor")]
    InvalidCursor,
}

impl SessionError {
    /// True when the store could not answer (too few replicas): map it to
    /// 503 and retry, never to "not logged in".
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SessionError::Store(
                Error::Unavailable { .. } | Error::QuorumNotReached { .. } | Error::ShuttingDown
            )
        )
    }
}

impl From<Error> for SessionError {
    fn from(error: Error) -> SessionError {
        match error {
            Error::Gone => SessionError::Gone,
            other => SessionError::Store(other),
        }
    }
}
