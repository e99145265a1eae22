//! Records: versioned maps, and the merge that every replica applies.
//!
//! A [`Record`] is a map from field name to [`FieldEntry`] `(stamp, value or
//! removed, optional until)`, plus record-level metadata: a tombstone, an
//! absolute expiry (merged by maximum), a lifetime cap (merged by minimum), a
//! creation stamp (`origin`, merged by minimum), a *partial* flag (merged by
//! AND: one full copy makes the result full) and a format version.
//!
//! [`Record::merge`] is a join — commutative, associative, idempotent — and is
//! the only way state combines, in memory, in the coordinator and (as the same
//! rules in Lua) inside Redis:
//!
//! - per field, the larger *entry* wins: entries compare by their encoded form
//!   `stamp ‖ kind ‖ until ‖ bytes`, so the larger stamp wins and equal stamps
//!   are broken by the bytes, identically in Rust and Lua;
//! - a tombstone wins over every field (delete wins): a tombstoned record keeps
//!   no fields and is never partial;
//! - fields whose `until` has passed are dropped (`now_ms` is handed in).

use std::collections::BTreeMap;

#[cfg(doc)]
use crate::stamp::encode_ms;
use crate::stamp::{Stamp, PHYSICAL_MAX};

/// The newest stored format this build writes and reads: `2`, a record with
/// its summaries (see [`StoredFormat`]). A replica holding a version outside
/// [`FORMAT_OLDEST_READ`]`..=FORMAT_VERSION` is reported as corrupt rather
/// than guessed at, and left as it is.
pub const FORMAT_VERSION: u8 = 2;

/// The oldest stored format this build reads and merges: `1`, what builds
/// before the summaries wrote (see `docs/upgrades.md`).
pub const FORMAT_OLDEST_READ: u8 = 1;

/// The stored format a build writes (the `m:v` of a Redis hash). Every build
/// reads what it writes and the format before it, so that during a rolling
/// deploy the servers still on the previous build can read every record:
/// write [`StoredFormat::V1`] until every app server runs this build, then
/// switch to [`StoredFormat::V2`] (see `docs/upgrades.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoredFormat {
    /// Format 1: the record alone (fields, expiry, cap, tombstone, origin,
    /// partial flag, write epoch), what builds before the summaries read.
    /// A merge into a format-2 record keeps it format 2.
    V1,
    /// Format 2: format 1 plus the summaries a Redis merge keeps (`m:h`,
    /// `m:u`) so that it reads only the fields it changes.
    #[default]
    V2,
}

impl StoredFormat {
    /// The version number stored (`m:v`).
    pub fn version(self) -> u8 {
        match self {
            StoredFormat::V1 => 1,
            StoredFormat::V2 => 2,
        }
    }
}

/// Whether this build reads stored format `version`.
///
/// # Errors
///
/// For a version above [`FORMAT_VERSION`], the text of
/// [`newer_format_detail`]; for `0`, "unknown format version 0".
pub fn check_format(version: u8) -> Result<(), String> {
    if version > FORMAT_VERSION {
        Err(newer_format_detail(version))
    } else if version < FORMAT_OLDEST_READ {
        Err(format!("unknown format version {version}"))
    } else {
        Ok(())
    }
}

/// The words every refusal of a record written by a newer build starts with
/// (in [`ReplicaError::Corrupt`](crate::error::ReplicaError::Corrupt)'s
/// detail, after the replica's name; see
/// [`ReplicaError::is_newer_format`](crate::error::ReplicaError::is_newer_format)).
pub const NEWER_FORMAT: &str = "written by a newer build";

/// The refusal of a record in format `version`, above [`FORMAT_VERSION`]:
/// `written by a newer build (format 3); this build reads 1..=2`. The same
/// text as `merge.lua`'s.
pub fn newer_format_detail(version: u8) -> String {
    format!("{NEWER_FORMAT} (format {version}); this build reads {FORMAT_OLDEST_READ}..={FORMAT_VERSION}")
}

/// One field's version and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldEntry {
    /// The write that produced this entry.
    pub stamp: Stamp,
    /// `None` for a removed field (a field tombstone).
    pub value: Option<Vec<u8>>,
    /// Absolute time (ms) after which the merge drops the entry (used by
    /// long-lived records such as the per-user index).
    pub until_ms: Option<u64>,
}

impl FieldEntry {
    /// A value written at `stamp`.
    pub fn value(stamp: Stamp, value: impl Into<Vec<u8>>) -> FieldEntry {
        FieldEntry {
            stamp,
            value: Some(value.into()),
            until_ms: None,
        }
    }

    /// A removal written at `stamp`.
    pub fn removed(stamp: Stamp) -> FieldEntry {
        FieldEntry {
            stamp,
            value: None,
            until_ms: None,
        }
    }

    /// The same entry, dropped by the merge after `until_ms`.
    pub fn with_until(mut self, until_ms: u64) -> FieldEntry {
        self.until_ms = Some(until_ms);
        self
    }

    /// The kind byte of the stored form: `v` value, `d` removed; upper case
    /// when an `until` follows.
    pub fn kind(&self) -> u8 {
        match (self.value.is_some(), self.until_ms.is_some()) {
            (true, false) => b'v',
            (false, false) => b'd',
            (true, true) => b'V',
            (false, true) => b'D',
        }
    }

    /// The stored form: `stamp(32) ‖ kind(1) ‖ until(12, if any) ‖ bytes`.
    ///
    /// # Panics
    ///
    /// If `until_ms` exceeds 48 bits (as [`encode_ms`]).
    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(crate::stamp::STAMP_LEN + 13 + value_len);
        self.encode_into(&mut out);
        out
    }

    /// Appends [`FieldEntry::encode`]'s form to `out`.
    ///
    /// # Panics
    ///
    /// As [`FieldEntry::encode`].
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        push_stamp(out, self.stamp);
        out.push(self.kind());
        if let Some(until) = self.until_ms {
            push_ms(out, until);
        }
        if let Some(value) = &self.value {
            out.extend_from_slice(value);
        }
    }

    /// Parses the stored form; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<FieldEntry> {
        let stamp_len = crate::stamp::STAMP_LEN;
        let stamp = Stamp::decode(bytes.get(..stamp_len)?)?;
        let kind = *bytes.get(stamp_len)?;
        let mut rest = &bytes[stamp_len + 1..];
        let until_ms = if kind.is_ascii_uppercase() {
            let until = crate::stamp::decode_ms(rest.get(..12)?)?;
            rest = &rest[12..];
            Some(until)
        } else {
            None
        };
        let value = match kind.to_ascii_lowercase() {
            b'v' => Some(rest.to_vec()),
            b'd' if rest.is_empty() => None,
            _ => return None,
        };
        Some(FieldEntry {
            stamp,
            value,
            until_ms,
        })
    }

    /// The merge order between two entries of one field: stamp first, then
    /// the rest of the stored form, byte by byte (as the Lua script does).
    ///
    /// With equal stamps the stored forms share their first 32 bytes, so the
    /// comparison goes on with the kind byte, then the fixed-width `until`
    /// (present on both or neither once the kinds are equal, and compared as
    /// text exactly as a number), then the value bytes: the same order as
    /// comparing [`FieldEntry::encode`] outputs, without building them.
    pub fn wins_over(&self, other: &FieldEntry) -> bool {
        match self.stamp.cmp(&other.stamp) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.tail_key() > other.tail_key(),
        }
    }

    /// The stored form after the stamp, as a comparable tuple.
    fn tail_key(&self) -> (u8, Option<u64>, &[u8]) {
        (
            self.kind(),
            self.until_ms,
            self.value.as_deref().unwrap_or(&[]),
        )
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|until| until < now_ms)
    }
}

/// A versioned map with record-level metadata. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Field name → entry. `BTreeMap`: iteration order is part of the
    /// deterministic behaviour.
    pub fields: BTreeMap<String, FieldEntry>,
    /// Set once the record is deleted; wins over every field.
    pub tombstone: Option<Stamp>,
    /// Absolute expiry, ms since the Unix epoch; merged by maximum.
    pub expiry_ms: u64,
    /// Absolute lifetime cap, ms; merged by minimum.
    pub cap_ms: u64,
    /// Stamp of the create that made the record, if this copy saw it.
    pub origin: Option<Stamp>,
    /// True when this copy may lack fields (made by a field-only update on a
    /// replica that did not hold the record). Merged by AND.
    pub partial: bool,
    /// The stored format version this copy was read in
    /// ([`FORMAT_OLDEST_READ`]`..=`[`FORMAT_VERSION`]; a new record is
    /// [`FORMAT_VERSION`]), merged by maximum. It says how a copy is stored,
    /// not what it holds: [`Record::same_data`] ignores it, and a Redis
    /// replica writes the version of its [`StoredFormat`] setting.
    pub format: u8,
}

impl Record {
    /// An empty record with an expiry and a cap, not partial.
    pub fn new(expiry_ms: u64, cap_ms: u64) -> Record {
        Record {
            fields: BTreeMap::new(),
            tombstone: None,
            expiry_ms,
            cap_ms,
            origin: None,
            partial: false,
            format: FORMAT_VERSION,
        }
    }

    /// When the record stops existing: `min(expiry, cap)`.
    pub fn effective_expiry_ms(&self) -> u64 {
        self.expiry_ms.min(self.cap_ms)
    }

    /// True when the record is past its effective expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.effective_expiry_ms() <= now_ms
    }

    /// True when deleted.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone.is_some()
    }

    /// The value of a live field.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name)?.value.as_deref()
    }

    /// Live fields (removed ones skipped), in name order.
    pub fn values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .filter_map(|(name, entry)| Some((name.as_str(), entry.value.as_deref()?)))
    }

    /// The largest stamp this record holds (fields, tombstone, origin).
    pub fn max_stamp(&self) -> Option<Stamp> {
        let held = self.tombstone.max(self.origin);
        let fields = self.fields.values().map(|entry| Some(entry.stamp));
        fields.fold(held, Option::max)
    }

    /// True when both hold the same data: equal but for
    /// [`format`](Record::format), which says how a copy is stored. Whether
    /// a copy is stale (read-repair, anti-entropy) is decided on this: a
    /// format-1 copy of the same data is not stale, and a replica set to
    /// write format 1 is never asked again and again for a format-2 copy it
    /// keeps writing as format 1.
    pub fn same_data(&self, other: &Record) -> bool {
        self.fields == other.fields
            && self.tombstone == other.tombstone
            && self.expiry_ms == other.expiry_ms
            && self.cap_ms == other.cap_ms
            && self.origin == other.origin
            && self.partial == other.partial
    }

    /// Merges `other` into `self` (the join described in the module docs).
    pub fn merge_from(&mut self, other: &Record, now_ms: u64) {
        for (name, entry) in &other.fields {
            match self.fields.get_mut(name) {
                Some(mine) if !entry.wins_over(mine) => {}
                Some(mine) => *mine = entry.clone(),
                None => {
                    self.fields.insert(name.clone(), entry.clone());
                }
            }
        }
        self.tombstone = self.tombstone.max(other.tombstone);
        self.expiry_ms = self.expiry_ms.max(other.expiry_ms);
        self.cap_ms = self.cap_ms.min(other.cap_ms);
        self.origin = match (self.origin, other.origin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.partial = self.partial && other.partial;
        self.format = self.format.max(other.format);
        self.normalize(now_ms);
    }

    /// The join of two records.
    ///
    /// ```
    /// use quorum_sessions::{FieldEntry, Record, Stamp};
    /// let mut a = Record::new(10_000, 20_000);
    /// a.fields.insert("cart".into(), FieldEntry::value(Stamp::new(5, 0, 1), "a"));
    /// let mut b = Record::new(15_000, 18_000);
    /// b.fields.insert("theme".into(), FieldEntry::value(Stamp::new(6, 0, 2), "dark"));
    /// let m = Record::merge(&a, &b, 0);
    /// assert_eq!(m.get("cart"), Some(&b"a"[..]));   // both fields survive
    /// assert_eq!(m.get("theme"), Some(&b"dark"[..]));
    /// assert_eq!(m.effective_expiry_ms(), 15_000);  // max expiry, min cap
    /// ```
    pub fn merge(a: &Record, b: &Record, now_ms: u64) -> Record {
        let mut merged = a.clone();
        merged.merge_from(b, now_ms);
        merged
    }

    /// Applies the invariants the merge keeps: a tombstone holds no fields and
    /// is never partial; entries past their `until` are dropped.
    pub fn normalize(&mut self, now_ms: u64) {
        if self.tombstone.is_some() {
            self.fields.clear();
            self.partial = false;
        } else {
            self.fields.retain(|_, entry| !entry.expired(now_ms));
        }
    }

    /// True when [`Record::normalize`] at `now_ms` would change nothing.
    pub(crate) fn is_normalized(&self, now_ms: u64) -> bool {
        if self.tombstone.is_some() {
            self.fields.is_empty() && !self.partial
        } else {
            self.fields.values().all(|entry| !entry.expired(now_ms))
        }
    }

    /// Approximate stored size in bytes (names plus encoded entries).
    pub fn stored_size(&self) -> usize {
        let fields: usize = self
            .fields
            .values()
            .map(|e| crate::stamp::STAMP_LEN + 13 + e.value.as_ref().map_or(0, Vec::len))
            .sum();
        let names: usize = self.fields.keys().map(String::len).sum();
        fields + names + 128
    }

    /// Checks the record against the structural rules every copy must keep.
    ///
    /// # Errors
    ///
    /// A description of the first rule broken.
    pub fn check_shape(&self) -> Result<(), String> {
        check_format(self.format)?;
        if self.expiry_ms > PHYSICAL_MAX || self.cap_ms > PHYSICAL_MAX {
            return Err("expiry or cap beyond 48 bits".into());
        }
        if self.tombstone.is_some() && !self.fields.is_empty() {
            return Err("a tombstone holds fields".into());
        }
        for name in self.fields.keys() {
            check_field_name(name, usize::MAX)?;
        }
        Ok(())
    }
}

/// Appends `value` as exactly `digits` lowercase hex digits (it must fit).
fn push_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    debug_assert!(digits >= 16 || value >> (4 * digits) == 0);
    for shift in (0..digits).rev() {
        out.push(HEX[((value >> (4 * shift)) & 0xf) as usize]);
    }
}

/// Appends [`Stamp::encode_into`]'s form (32 hex digits) without going
/// through `fmt` (entries are encoded on every write). A stamp built by hand
/// beyond 48 bits takes the slow path, which gives the same (too long) text.
pub(crate) fn push_stamp(out: &mut Vec<u8>, stamp: Stamp) {
    if stamp.physical_ms > PHYSICAL_MAX || stamp.writer > crate::stamp::WRITER_MAX {
        stamp.encode_into(out);
        return;
    }
    push_hex(out, stamp.physical_ms, 12);
    push_hex(out, u64::from(stamp.logical), 8);
    push_hex(out, stamp.writer, 12);
}

/// Appends [`encode_ms`]'s form (12 hex digits) without going through `fmt`.
///
/// # Panics
///
/// If `ms` exceeds 48 bits, as [`encode_ms`].
pub(crate) fn push_ms(out: &mut Vec<u8>, ms: u64) {
    assert!(ms <= PHYSICAL_MAX, "time beyond 48 bits");
    push_hex(out, ms, 12);
}

/// Field-name rules shared by validation and decoding: non-empty, at most
/// `max_bytes`, no control characters.
///
/// # Errors
///
/// A description of the rule broken.
pub fn check_field_name(name: &str, max_bytes: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty field name".into());
    }
    if name.len() > max_bytes {
        return Err(format!(
            "field name of {} bytes exceeds {max_bytes}",
            name.len()
        ));
    }
    // Printable ASCII (the usual case) needs no decoding of characters.
    let printable_ascii = name.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !printable_ascii && name.chars().any(char::is_control) {
        return Err("field name holds a control character".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small stamps so that equal stamps (and byte tie-breaks) really occur.
    pub fn stamp_strategy() -> impl Strategy<Value = Stamp> {
        (0u64..4, 0u32..3, 0u64..3).prop_map(|(p, l, w)| Stamp::new(p, l, w))
    }

    pub fn entry_strategy() -> impl Strategy<Value = FieldEntry> {
        (
            stamp_strategy(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4)),
            proptest::option::of(0u64..20),
        )
            .prop_map(|(stamp, value, until_ms)| FieldEntry {
                stamp,
                value,
                until_ms,
            })
    }

    pub fn record_strategy() -> impl Strategy<Value = Record> {
        (
            proptest::collection::btree_map("[a-c]", entry_strategy(), 0..4),
            proptest::option::weighted(0.2, stamp_strategy()),
            0u64..1 << 40,
            0u64..1 << 40,
            proptest::option::of(stamp_strategy()),
            any::<bool>(),
            FORMAT_OLDEST_READ..=FORMAT_VERSION,
        )
            .prop_map(
                |(fields, tombstone, expiry_ms, cap_ms, origin, partial, format)| {
                    let mut record = Record {
                        fields,
                        tombstone,
                        expiry_ms,
                        cap_ms,
                        origin,
                        partial,
                        format,
                    };
                    record.normalize(10);
                    record
                },
            )
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in record_strategy(), b in record_strategy()) {
            prop_assert_eq!(Record::merge(&a, &b, 10), Record::merge(&b, &a, 10));
        }

        #[test]
        fn merge_is_associative(a in record_strategy(), b in record_strategy(), c in record_strategy()) {
            let left = Record::merge(&Record::merge(&a, &b, 10), &c, 10);
            let right = Record::merge(&a, &Record::merge(&b, &c, 10), 10);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(a in record_strategy()) {
            prop_assert_eq!(Record::merge(&a, &a, 10), a);
        }

        #[test]
        fn delete_wins_over_any_field_stamp(a in record_strategy(), b in record_strategy()) {
            let mut deleted = a.clone();
            deleted.tombstone = Some(Stamp::ZERO);
            deleted.normalize(10);
            let merged = Record::merge(&deleted, &b, 10);
            prop_assert!(merged.is_tombstone());
            prop_assert!(merged.fields.is_empty());
        }

        #[test]
        fn wins_over_is_the_order_of_the_stored_forms(a in entry_strategy(), b in entry_strategy()) {
            prop_assert_eq!(a.wins_over(&b), a.encode() > b.encode());
        }

        #[test]
        fn is_normalized_says_whether_normalize_changes_anything(a in record_strategy(), now_ms in 0u64..30) {
            let mut normalized = a.clone();
            normalized.normalize(now_ms);
            prop_assert_eq!(a.is_normalized(now_ms), normalized == a);
        }

        #[test]
        fn max_stamp_is_the_largest_stamp_held(a in record_strategy()) {
            let stamps = a.fields.values().map(|e| e.stamp).chain(a.tombstone).chain(a.origin);
            prop_assert_eq!(a.max_stamp(), stamps.max());
        }

        #[test]
        fn entry_encoding_round_trips(entry in entry_strategy()) {
            prop_assert_eq!(FieldEntry::decode(&entry.encode()), Some(entry));
        }

        #[test]
        fn merge_keeps_the_larger_stamp_per_field(a in entry_strategy(), b in entry_strategy()) {
            let mut ra = Record::new(100, 100);
            ra.fields.insert("f".into(), a.clone());
            let mut rb = Record::new(100, 100);
            rb.fields.insert("f".into(), b.clone());
            let merged = Record::merge(&ra, &rb, 0);
            let kept = &merged.fields["f"];
            prop_assert!(kept.stamp == a.stamp.max(b.stamp), "a lower stamp won");
        }
    }

    proptest! {
        #[test]
        fn fast_hex_matches_the_fmt_forms(
            physical in 0u64..=PHYSICAL_MAX,
            logical in any::<u32>(),
            writer in 0u64..=crate::stamp::WRITER_MAX,
        ) {
            let stamp = Stamp::new(physical, logical, writer);
            let mut fast = Vec::new();
            push_stamp(&mut fast, stamp);
            prop_assert_eq!(fast, stamp.encode().into_bytes());
            let mut ms = Vec::new();
            push_ms(&mut ms, physical);
            prop_assert_eq!(ms, crate::stamp::encode_ms(physical).into_bytes());
        }
    }

    /// The format is merged by maximum (a format-1 copy merged with a
    /// format-2 one is format 2), ignored by `same_data`, and a format this
    /// build cannot read is refused with the "newer build" text.
    #[test]
    fn formats_merge_by_maximum_and_are_not_data() {
        let mut old = Record::new(100, 100);
        old.format = 1;
        let new = Record::new(100, 100);
        assert_eq!(Record::merge(&old, &new, 0).format, 2);
        assert_eq!(Record::merge(&old, &old, 0).format, 1);
        assert!(old.same_data(&new) && old != new);
        assert_eq!(old.check_shape(), Ok(()));
        let mut newer = new.clone();
        newer.format = 3;
        assert_eq!(
            newer.check_shape(),
            Err("written by a newer build (format 3); this build reads 1..=2".to_owned())
        );
        newer.format = 0;
        assert!(newer.check_shape().is_err());
    }

    #[test]
    fn expired_field_entries_are_dropped_by_the_merge() {
        let mut a = Record::new(100, 100);
        a.fields.insert(
            "old".into(),
            FieldEntry::value(Stamp::new(1, 0, 1), "x").with_until(50),
        );
        a.fields.insert(
            "new".into(),
            FieldEntry::value(Stamp::new(1, 0, 1), "y").with_until(500),
        );
        let merged = Record::merge(&a, &Record::new(0, 1000), 60);
        assert!(!merged.fields.contains_key("old"));
        assert!(merged.fields.contains_key("new"));
    }

    #[test]
    fn partial_is_cleared_by_one_full_copy() {
        let mut partial = Record::new(1, 1);
        partial.partial = true;
        let full = Record::new(1, 1);
        assert!(!Record::merge(&partial, &full, 0).partial);
        assert!(Record::merge(&partial, &partial, 0).partial);
    }

    #[test]
    fn malformed_entries_do_not_decode() {
        let stamp = Stamp::new(1, 2, 3).encode();
        assert!(FieldEntry::decode(stamp.as_bytes()).is_none(), "no kind");
        assert!(FieldEntry::decode(format!("{stamp}x").as_bytes()).is_none());
        assert!(FieldEntry::decode(format!("{stamp}dzz").as_bytes()).is_none());
        assert!(FieldEntry::decode(format!("{stamp}V12").as_bytes()).is_none());
        assert!(FieldEntry::decode(format!("{stamp}v").as_bytes()).is_some());
    }
}
