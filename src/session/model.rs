//! [`Session`]: a loaded session and the changes made to it since, and
//! [`NewSession`]: what a session is created from.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::config::{SessionConfig, CLIENT_ATTRIBUTE_MAX_BYTES};
use super::error::SessionError;
use super::id::SessionId;
use super::keys::{self, check_name};
use super::security::ClientInfo;
use crate::record::Record;
use crate::stamp::Stamp;

static NO_ITEMS: BTreeMap<String, Value> = BTreeMap::new();

/// What a session is created from: an optional user (sessions with a user
/// are listed in the user's index), an optional role, initial data and the
/// client's attributes.
///
/// ```
/// use quorum_sessions::session::{ClientInfo, NewSession};
/// let new = NewSession::for_user("alice")
///     .role("admin")
///     .data("theme", "dark")
///     .client(ClientInfo::default().user_agent("Mozilla/5.0"));
/// assert_eq!(new.user.as_deref(), Some("alice"));
/// ```
#[derive(Clone, Default)]
pub struct NewSession {
    /// The user the session belongs to (`None`: anonymous).
    pub user: Option<String>,
    /// The user's role, for the admin statistics.
    pub role: Option<String>,
    /// Initial data: key → JSON value.
    pub data: BTreeMap<String, Value>,
    /// The client creating the session (recorded, and fingerprinted when
    /// binding is on).
    pub client: ClientInfo,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("user", &self.user.as_ref().map(|_| "<redacted>"))
            .field("role", &self.role)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NewSession {
    /// A session without a user.
    pub fn anonymous() -> NewSession {
        NewSession::default()
    }

    /// A session of `user`.
    pub fn for_user(user: impl Into<String>) -> NewSession {
        NewSession {
            user: Some(user.into()),
            ..NewSession::default()
        }
    }

    /// Sets the role.
    pub fn role(mut self, role: impl Into<String>) -> NewSession {
        self.role = Some(role.into());
        self
    }

    /// Adds a data value.
    pub fn data(mut self, key: impl Into<String>, value: impl Into<Value>) -> NewSession {
        self.data.insert(key.into(), value.into());
        self
    }

    /// Sets the client attributes.
    pub fn client(mut self, client: ClientInfo) -> NewSession {
        self.client = client;
        self
    }
}

/// A loaded session: its metadata, data and items, and the changes made
/// since it was loaded (written by [`SessionStore::save`](super::SessionStore::save),
/// changed fields only).
///
/// Data values are JSON. Collections (a cart, say) keep one field per item,
/// so concurrent adds of different items from different requests all
/// survive; two requests changing the *same* key or item resolve last
/// writer wins.
///
/// `Debug` shows the redacted id and the data keys, never values.
#[derive(Clone)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) user: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) created_ms: u64,
    pub(crate) last_activity_ms: u64,
    pub(crate) expiry_ms: u64,
    pub(crate) cap_ms: u64,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) creation_stamp: Stamp,
    pub(crate) login_stamp: Stamp,
    pub(crate) data: BTreeMap<String, Value>,
    pub(crate) items: BTreeMap<String, BTreeMap<String, Value>>,
    /// Record field → new encoded value, or `None` for a removal.
    pub(crate) pending: BTreeMap<String, Option<Vec<u8>>>,
    /// Stamps of the data and item fields as loaded (removed ones too), so
    /// a rotation can tell which fields other requests wrote since.
    pub(crate) loaded_stamps: BTreeMap<String, Stamp>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("has_user", &self.user.is_some())
            .field("role", &self.role)
            .field("created_ms", &self.created_ms)
            .field("expiry_ms", &self.expiry_ms())
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field("collections", &self.items.keys().collect::<Vec<_>>())
            .field("pending_changes", &self.pending.len())
            .finish()
    }
}

impl Session {
    /// The id (put it in the cookie with `to_string()`).
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The user, for sessions created with one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The role given at creation or login.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Creation time, ms since the Unix epoch (kept across [`regenerate`](super::SessionStore::regenerate)).
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// Last activity, ms since the Unix epoch. Written only together with a
    /// sliding extension, so it is accurate to within `idle_timeout −
    /// refresh_threshold` (15 minutes by default).
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms
    }

    /// When the session expires if unused: `min(sliding expiry, lifetime cap)`.
    pub fn expiry_ms(&self) -> u64 {
        self.expiry_ms.min(self.cap_ms)
    }

    /// The absolute lifetime cap.
    pub fn cap_ms(&self) -> u64 {
        self.cap_ms
    }

    /// The client IP recorded at creation.
    pub fn client_ip(&self) -> Option<&str> {
        self.ip.as_deref()
    }

    /// The user agent recorded at creation.
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// The creation stamp (orders a user's sessions for the per-user limit).
    pub fn creation_stamp(&self) -> Stamp {
        self.creation_stamp
    }

    /// The data value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// The data value under `key`, deserialized.
    ///
    /// # Errors
    ///
    /// [`SessionError::Json`] when the value does not deserialize as `T`.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.data
            .get(key)
            .map(|value| T::deserialize(value).map_err(SessionError::from))
            .transpose()
    }

    /// Every data value, by key.
    pub fn data(&self) -> &BTreeMap<String, Value> {
        &self.data
    }

    /// Sets a data value (written by the next save, if it changed).
    ///
    /// # Errors
    ///
    /// [`SessionError::InvalidName`] for a bad key; [`SessionError::TooLarge`]
    /// for a value over `max_value_bytes` (checked at save).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> Result<(), SessionError> {
        check_name("data key", key)?;
        let value = value.into();
        if self.data.get(key) == Some(&value) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&value)?;
        self.pending.insert(keys::data_field(key), Some(bytes));
        self.data.insert(key.to_owned(), value);
        Ok(())
    }

    /// Sets a data value from any `Serialize` type.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set), and [`SessionError::Json`].
    pub fn set_as<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let value = serde_json::to_value(value)?;
        self.set(key, value)
    }

    /// Removes a data value; returns it.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let old = self.data.remove(key)?;
        self.pending.insert(keys::data_field(key), None);
        Some(old)
    }

    /// The items of a collection (item id → value), e.g. a cart.
    pub fn items(&self, collection: &str) -> &BTreeMap<String, Value> {
        self.items.get(collection).unwrap_or(&NO_ITEMS)
    }

    /// One item, deserialized.
    ///
    /// # Errors
    ///
    /// [`SessionError::Json`] when it does not deserialize as `T`.
    pub fn item_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        item: &str,
    ) -> Result<Option<T>, SessionError> {
        self.items(collection)
            .get(item)
            .map(|value| T::deserialize(value).map_err(SessionError::from))
            .transpose()
    }

    /// Adds (or replaces) one item of a collection. Only this item's field is
    /// written, so concurrent adds of other items survive.
    ///
    /// # Errors
    ///
    /// [`SessionError::InvalidName`] for a bad collection (no `:`) or item id.
    pub fn add_item(
        &mut self,
        collection: &str,
        item: &str,
        value: impl Into<Value>,
    ) -> Result<(), SessionError> {
        check_name("collection", collection)?;
        check_name("item", item)?;
        let value = value.into();
        if self.items(collection).get(item) == Some(&value) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&value)?;
        self.pending
            .insert(keys::item_field(collection, item), Some(bytes));
        self.items
            .entry(collection.to_owned())
            .or_default()
            .insert(item.to_owned(), value);
        Ok(())
    }

    /// Adds an item from any `Serialize` type.
    ///
    /// # Errors
    ///
    /// As [`add_item`](Self::add_item), and [`SessionError::Json`].
    pub fn add_item_as<T: Serialize + ?Sized>(
        &mut self,
        collection: &str,
        item: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let value = serde_json::to_value(value)?;
        self.add_item(collection, item, value)
    }

    /// Removes one item; returns whether it was there.
    pub fn remove_item(&mut self, collection: &str, item: &str) -> bool {
        let Some(items) = self.items.get_mut(collection) else {
            return false;
        };
        if items.remove(item).is_none() {
            return false;
        }
        if items.is_empty() {
            self.items.remove(collection);
        }
        self.pending
            .insert(keys::item_field(collection, item), None);
        true
    }

    /// Removes every item of a collection this session holds; returns how
    /// many. An item added concurrently by another request (not loaded here)
    /// survives the clear.
    pub fn clear_items(&mut self, collection: &str) -> usize {
        let Some(items) = self.items.remove(collection) else {
            return 0;
        };
        for item in items.keys() {
            self.pending
                .insert(keys::item_field(collection, item), None);
        }
        items.len()
    }

    /// True when changes wait for [`SessionStore::save`](super::SessionStore::save).
    pub fn is_modified(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Data keys plus items.
    pub(crate) fn field_count(&self) -> usize {
        self.data.len() + self.items.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Checks the session against the size limits: every value, the field
    /// count, the total of names and values.
    pub(crate) fn check_size(&self, config: &SessionConfig) -> Result<(), SessionError> {
        let count = self.field_count();
        if count > config.max_fields {
            return Err(SessionError::TooManyFields {
                count,
                limit: config.max_fields,
            });
        }
        let mut total = self.system_bytes();
        let values = self
            .data
            .iter()
            .map(|(key, value)| (keys::data_field(key), value));
        let items = self.items.iter().flat_map(|(collection, items)| {
            items
                .iter()
                .map(move |(item, value)| (keys::item_field(collection, item), value))
        });
        for (name, value) in values.chain(items) {
            let size = serde_json::to_vec(value)?.len();
            if size > config.max_value_bytes {
                return Err(SessionError::TooLarge {
                    what: "value",
                    size,
                    limit: config.max_value_bytes,
                });
            }
            total += name.len() + size;
        }
        if total > config.max_session_bytes {
            return Err(SessionError::TooLarge {
                what: "session",
                size: total,
                limit: config.max_session_bytes,
            });
        }
        Ok(())
    }

    fn system_bytes(&self) -> usize {
        [
            &self.user,
            &self.role,
            &self.ip,
            &self.user_agent,
            &self.fingerprint,
        ]
        .iter()
        .map(|value| value.as_ref().map_or(0, String::len))
        .sum::<usize>()
            + 64
    }

    /// Every field of the session, for a create (new session or rotation).
    pub(crate) fn all_fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        let mut push = |name: &str, value: Option<&str>| {
            if let Some(value) = value {
                fields.push((name.to_owned(), value.as_bytes().to_vec()));
            }
        };
        push(keys::FIELD_USER, self.user.as_deref());
        push(keys::FIELD_ROLE, self.role.as_deref());
        push(keys::FIELD_CREATED, Some(&self.created_ms.to_string()));
        push(keys::FIELD_SEEN, Some(&self.last_activity_ms.to_string()));
        push(keys::FIELD_IP, self.ip.as_deref());
        push(keys::FIELD_USER_AGENT, self.user_agent.as_deref());
        push(keys::FIELD_FINGERPRINT, self.fingerprint.as_deref());
        for (key, value) in &self.data {
            let bytes = serde_json::to_vec(value).expect("a Value always serializes");
            fields.push((keys::data_field(key), bytes));
        }
        for (collection, items) in &self.items {
            for (item, value) in items {
                let bytes = serde_json::to_vec(value).expect("a Value always serializes");
                fields.push((keys::item_field(collection, item), bytes));
            }
        }
        fields
    }

    /// A session to be created: metadata from `new`, not yet stamped.
    pub(crate) fn draft(
        id: SessionId,
        new: &NewSession,
        fingerprint: Option<String>,
        now_ms: u64,
        expiry_ms: u64,
        cap_ms: u64,
    ) -> Session {
        Session {
            id,
            user: new.user.clone(),
            role: new.role.clone(),
            created_ms: now_ms,
            last_activity_ms: now_ms,
            expiry_ms,
            cap_ms,
            ip: new.client.ip.as_deref().map(cut_attribute),
            user_agent: new.client.user_agent.as_deref().map(cut_attribute),
            fingerprint,
            creation_stamp: Stamp::ZERO,
            login_stamp: Stamp::ZERO,
            data: new.data.clone(),
            items: BTreeMap::new(),
            pending: BTreeMap::new(),
            loaded_stamps: BTreeMap::new(),
        }
    }

    /// Decodes a stored session record.
    ///
    /// # Errors
    ///
    /// [`SessionError::Corrupt`] when a field this layer always writes is
    /// missing or does not decode.
    pub(crate) fn from_record(id: SessionId, record: &Record) -> Result<Session, SessionError> {
        let text = |name: &str| -> Result<Option<String>, SessionError> {
            record
                .get(name)
                .map(|bytes| {
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| SessionError::Corrupt("a metadata field is not UTF-8"))
                })
                .transpose()
        };
        let number = |name: &str| -> Result<Option<u64>, SessionError> {
            text(name)?
                .map(|text| {
                    text.parse::<u64>()
                        .map_err(|_| SessionError::Corrupt("a time field is not a number"))
                })
                .transpose()
        };
        let created_entry = record
            .fields
            .get(keys::FIELD_CREATED)
            .ok_or(SessionError::Corrupt("no creation time"))?;
        let created_ms =
            number(keys::FIELD_CREATED)?.ok_or(SessionError::Corrupt("no creation time"))?;
        let creation_stamp = record.origin.unwrap_or(created_entry.stamp);
        let login_stamp = match record.get(keys::FIELD_LOGIN) {
            Some(bytes) => Stamp::decode(bytes).ok_or(SessionError::Corrupt("bad login stamp"))?,
            None => creation_stamp,
        };
        let mut session = Session {
            id,
            user: text(keys::FIELD_USER)?,
            role: text(keys::FIELD_ROLE)?,
            created_ms,
            last_activity_ms: number(keys::FIELD_SEEN)?.unwrap_or(created_ms),
            expiry_ms: record.expiry_ms,
            cap_ms: record.cap_ms,
            ip: text(keys::FIELD_IP)?,
            user_agent: text(keys::FIELD_USER_AGENT)?,
            fingerprint: text(keys::FIELD_FINGERPRINT)?,
            creation_stamp,
            login_stamp,
            data: BTreeMap::new(),
            items: BTreeMap::new(),
            pending: BTreeMap::new(),
            loaded_stamps: BTreeMap::new(),
        };
        for (name, entry) in &record.fields {
            if is_user_field(name) {
                session.loaded_stamps.insert(name.clone(), entry.stamp);
            }
        }
        for (name, bytes) in record.values() {
            let parse = || {
                serde_json::from_slice::<Value>(bytes)
                    .map_err(|_| SessionError::Corrupt("a value is not JSON"))
            };
            if let Some(key) = name.strip_prefix(keys::DATA_PREFIX) {
                session.data.insert(key.to_owned(), parse()?);
            } else if let Some((collection, item)) = keys::split_item_field(name) {
                let items = session.items.entry(collection.to_owned()).or_default();
                items.insert(item.to_owned(), parse()?);
            }
        }
        Ok(session)
    }

    /// The value of a data or item field (`d:<key>`, `i:<collection>:<item>`).
    pub(crate) fn field_value(&self, field: &str) -> Option<&Value> {
        if let Some(key) = field.strip_prefix(keys::DATA_PREFIX) {
            self.data.get(key)
        } else {
            let (collection, item) = keys::split_item_field(field)?;
            self.items.get(collection)?.get(item)
        }
    }

    /// Sets (`Some`) or removes (`None`) a data or item field in memory,
    /// without marking it pending.
    pub(crate) fn apply_field(&mut self, field: &str, value: Option<Value>) {
        if let Some(key) = field.strip_prefix(keys::DATA_PREFIX) {
            match value {
                Some(value) => self.data.insert(key.to_owned(), value),
                None => self.data.remove(key),
            };
        } else if let Some((collection, item)) = keys::split_item_field(field) {
            let items = self.items.entry(collection.to_owned()).or_default();
            match value {
                Some(value) => items.insert(item.to_owned(), value),
                None => items.remove(item),
            };
            if items.is_empty() {
                self.items.remove(collection);
            }
        }
    }
}

/// Cuts a client attribute to [`CLIENT_ATTRIBUTE_MAX_BYTES`] at a character
/// boundary.
pub(crate) fn cut_attribute(value: &str) -> String {
    if value.len() <= CLIENT_ATTRIBUTE_MAX_BYTES {
        return value.to_owned();
    }
    let mut end = CLIENT_ATTRIBUTE_MAX_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// True for a data or item field (what the application wrote), false for
/// the layer's metadata fields.
pub(crate) fn is_user_field(name: &str) -> bool {
    name.starts_with(keys::DATA_PREFIX) || name.starts_with(keys::ITEM_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FieldEntry;
    use serde_json::json;

    fn stored(fields: &[(&str, &str)]) -> Record {
        let mut record = Record::new(10_000, 20_000);
        let stamp = Stamp::new(5, 0, 1);
        for (name, value) in fields {
            record.fields.insert(
                (*name).to_owned(),
                FieldEntry::value(stamp, value.as_bytes()),
            );
        }
        record.origin = Some(stamp);
        record
    }

    #[test]
    fn decodes_what_it_writes_and_tracks_changes() {
        let record = stored(&[
            ("_created", "100"),
            ("_user", "alice"),
            ("d:theme", "\"dark\""),
            ("i:cart:sku-1", "{\"qty\":1}"),
        ]);
        let id = SessionId::generate();
        let mut session = Session::from_record(id, &record).unwrap();
        assert_eq!(session.user(), Some("alice"));
        assert_eq!(session.get("theme"), Some(&json!("dark")));
        assert_eq!(session.items("cart")["sku-1"], json!({"qty": 1}));
        assert_eq!(session.last_activity_ms(), 100);
        assert!(!session.is_modified());
        session.set("theme", "dark").unwrap();
        assert!(!session.is_modified(), "an unchanged value writes nothing");
        session.set("theme", "light").unwrap();
        session
            .add_item("cart", "sku-2", json!({"qty": 2}))
            .unwrap();
        session.clear_items("cart");
        assert_eq!(session.pending.len(), 3);
        assert_eq!(session.pending["i:cart:sku-1"], None);
        assert!(session.items("cart").is_empty());
        assert!(session.add_item("a:b", "x", 1).is_err());
        assert!(format!("{session:?}").contains("theme"));
        assert!(!format!("{session:?}").contains("light"));
    }

    #[test]
    fn corrupt_records_are_reported() {
        let id = SessionId::generate();
        assert!(matches!(
            Session::from_record(id, &stored(&[("_user", "a")])),
            Err(SessionError::Corrupt(_))
        ));
        assert!(matches!(
            Session::from_record(id, &stored(&[("_created", "x")])),
            Err(SessionError::Corrupt(_))
        ));
        assert!(matches!(
            Session::from_record(id, &stored(&[("_created", "1"), ("d:a", "{")])),
            Err(SessionError::Corrupt(_))
        ));
    }

    #[test]
    fn attributes_are_cut_at_a_char_boundary() {
        let long = "é".repeat(CLIENT_ATTRIBUTE_MAX_BYTES);
        let cut = cut_attribute(&long);
        assert!(cut.len() <= CLIENT_ATTRIBUTE_MAX_BYTES);
        assert!(long.starts_with(&cut));
    }
}
