//! Record keys and field names of the session layer, built in one place.
//!
//! | record | key | fields |
//! | --- | --- | --- |
//! | session | `s:{<id>}` | `_user`, `_role`, `_created`, `_seen`, `_ip`, `_ua`, `_fp`, `_login`; data `d:<key>`; items `i:<collection>:<item>` |
//! | per-user index | `u:{<sha256(user) hex>}` | `s:<id>` (value: creation stamp, until: lifetime cap), `revoked` |
//!
//! The `{…}` hash tag keeps a record's keys in one Redis Cluster slot. The
//! user id is hashed, so no user input ever reaches a key; a session id
//! reaches one only after [`SessionId::parse`] accepted it.

use sha2::{Digest, Sha256};

use super::config::NAME_MAX_BYTES;
use super::error::SessionError;
use super::id::SessionId;

/// Prefix of every session record key.
pub const SESSION_KEY_PREFIX: &str = "s:{";
/// Prefix of every per-user index key.
pub const INDEX_KEY_PREFIX: &str = "u:{";

pub(crate) const FIELD_USER: &str = "_user";
pub(crate) const FIELD_ROLE: &str = "_role";
pub(crate) const FIELD_CREATED: &str = "_created";
pub(crate) const FIELD_SEEN: &str = "_seen";
pub(crate) const FIELD_IP: &str = "_ip";
pub(crate) const FIELD_USER_AGENT: &str = "_ua";
pub(crate) const FIELD_FINGERPRINT: &str = "_fp";
pub(crate) const FIELD_LOGIN: &str = "_login";
pub(crate) const DATA_PREFIX: &str = "d:";
pub(crate) const ITEM_PREFIX: &str = "i:";
pub(crate) const INDEX_ENTRY_PREFIX: &str = "s:";
pub(crate) const INDEX_REVOKED: &str = "revoked";

/// The data key the tower adapter reserves in every `Record` it hands out:
/// it carries the state that load read, which the save diffs against (see
/// the `session::tower` module, feature `tower`). No data key may have this
/// name, in either API: both refuse it.
pub const TOWER_BASE_KEY: &str = "__quorum_sessions.base";

/// The key of a session record.
pub fn session_key(id: &SessionId) -> String {
    format!("{SESSION_KEY_PREFIX}{id}}}")
}

/// The session id of a session record key, if `key` is one.
pub fn session_id_of_key(key: &str) -> Option<SessionId> {
    let inner = key.strip_prefix(SESSION_KEY_PREFIX)?.strip_suffix('}')?;
    SessionId::parse(inner).ok()
}

/// The key of a user's index record: the user id is hashed (SHA-256, hex).
pub fn index_key(user: &str) -> String {
    format!("{INDEX_KEY_PREFIX}{}}}", user_hash_hex(user))
}

/// SHA-256 of a user id, lowercase hex.
pub(crate) fn user_hash_hex(user: &str) -> String {
    hex(&Sha256::digest(user.as_bytes()))
}

pub(crate) fn index_entry(id: &SessionId) -> String {
    format!("{INDEX_ENTRY_PREFIX}{id}")
}

pub(crate) fn index_entry_id(field: &str) -> Option<SessionId> {
    SessionId::parse(field.strip_prefix(INDEX_ENTRY_PREFIX)?).ok()
}

pub(crate) fn data_field(key: &str) -> String {
    format!("{DATA_PREFIX}{key}")
}

pub(crate) fn item_field(collection: &str, item: &str) -> String {
    format!("{ITEM_PREFIX}{collection}:{item}")
}

/// Splits `i:<collection>:<item>`.
pub(crate) fn split_item_field(field: &str) -> Option<(&str, &str)> {
    field.strip_prefix(ITEM_PREFIX)?.split_once(':')
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// Checks a data key, collection name, item id or role: non-empty, at most
/// [`NAME_MAX_BYTES`], no control character; a collection holds no `:`; a
/// data key is not [`TOWER_BASE_KEY`].
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), SessionError> {
    let rule = if name.is_empty() {
        Some("empty")
    } else if name.len() > NAME_MAX_BYTES {
        Some("longer than NAME_MAX_BYTES")
    } else if name.chars().any(char::is_control) {
        Some("holds a control character")
    } else if what == "collection" && name.contains(':') {
        Some("holds ':'")
    } else if what == "data key" && name == TOWER_BASE_KEY {
        Some("is reserved for the tower adapter (TOWER_BASE_KEY)")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(SessionError::InvalidName { what, rule }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_hide_user_input() {
        let id = SessionId::generate();
        let key = session_key(&id);
        assert_eq!(key, format!("s:{{{id}}}"));
        assert_eq!(session_id_of_key(&key), Some(id));
        assert_eq!(session_id_of_key("s:{nope}"), None);
        assert_eq!(session_id_of_key(&format!("u:{{{id}}}")), None);
        let index = index_key("alice*[?]\n");
        assert!(index.starts_with("u:{") && index.ends_with('}'));
        assert_eq!(index.len(), 3 + 64 + 1);
        assert!(index[3..67].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(index_entry_id(&index_entry(&id)), Some(id));
        assert_eq!(
            split_item_field(&item_field("cart", "sku:1")),
            Some(("cart", "sku:1"))
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("data key", "theme").is_ok());
        assert!(check_name("data key", "").is_err());
        assert!(check_name("data key", "a\nb").is_err());
        assert!(check_name("data key", &"x".repeat(NAME_MAX_BYTES + 1)).is_err());
        assert!(check_name("collection", "a:b").is_err());
        assert!(check_name("item", "a:b").is_ok());
        assert!(check_name("data key", TOWER_BASE_KEY).is_err());
        assert!(check_name("item", TOWER_BASE_KEY).is_ok());
    }
}
