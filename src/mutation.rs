//! `Mutation`: what a caller asks the coordinator to write, before it is
//! stamped. The coordinator validates it, stamps every entry with one HLC
//! tick, and sends the resulting delta [`Record`] to every replica.

use crate::config::Limits;
use crate::error::InvalidInput;
use crate::record::{check_field_name, FieldEntry, Record};
use crate::stamp::{Stamp, PHYSICAL_MAX};

/// The kind of write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutationKind {
    /// A conditional create: the full initial state (not partial).
    Create,
    /// Changed fields only (partial).
    Update,
    /// A record tombstone.
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldChange {
    name: String,
    value: Option<Vec<u8>>,
    until_ms: Option<u64>,
}

/// A write to one record. Every mutation carries an expiry and a lifetime
/// cap, so a record is never left without one.
///
/// ```
/// use quorum_sessions::Mutation;
/// let m = Mutation::update(60_000, 3_600_000).set("theme", "dark").remove("cart:42");
/// assert_eq!(m.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    kind: MutationKind,
    changes: Vec<FieldChange>,
    expiry_ms: u64,
    cap_ms: u64,
}

impl Mutation {
    /// A conditional create with expiry and cap (absolute ms).
    pub fn create(expiry_ms: u64, cap_ms: u64) -> Mutation {
        Mutation::new(MutationKind::Create, expiry_ms, cap_ms)
    }

    /// An update of some fields; `expiry_ms` only ever raises the stored
    /// expiry (max-merge), `cap_ms` only ever lowers the cap.
    pub fn update(expiry_ms: u64, cap_ms: u64) -> Mutation {
        Mutation::new(MutationKind::Update, expiry_ms, cap_ms)
    }

    /// A delete. The tombstone lives until `cap_ms` (the grace: the longest
    /// the record could have lived), then expires.
    pub fn delete(cap_ms: u64) -> Mutation {
        Mutation::new(MutationKind::Delete, cap_ms, cap_ms)
    }

    fn new(kind: MutationKind, expiry_ms: u64, cap_ms: u64) -> Mutation {
        Mutation {
            kind,
            changes: Vec::new(),
            expiry_ms,
            cap_ms,
        }
    }

    /// Sets a field.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Mutation {
        self.push(name.into(), Some(value.into()), None);
        self
    }

    /// Sets a field that the merge drops after `until_ms` (index entries).
    pub fn set_until(
        mut self,
        name: impl Into<String>,
        value: impl Into<Vec<u8>>,
        until_ms: u64,
    ) -> Mutation {
        self.push(name.into(), Some(value.into()), Some(until_ms));
        self
    }

    /// Removes a field (writes a field tombstone).
    pub fn remove(mut self, name: impl Into<String>) -> Mutation {
        self.push(name.into(), None, None);
        self
    }

    /// Removes a field, the removal itself dropped after `until_ms`.
    pub fn remove_until(mut self, name: impl Into<String>, until_ms: u64) -> Mutation {
        self.push(name.into(), None, Some(until_ms));
        self
    }

    fn push(&mut self, name: String, value: Option<Vec<u8>>, until_ms: Option<u64>) {
        // A later change of the same field replaces the earlier one.
        self.changes.retain(|change| change.name != name);
        self.changes.push(FieldChange {
            name,
            value,
            until_ms,
        });
    }

    /// The kind of write.
    pub fn kind(&self) -> MutationKind {
        self.kind
    }

    /// Number of field changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True when no field changes (a pure touch, or a delete).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Checks names, sizes and times against the limits.
    ///
    /// # Errors
    ///
    /// The first [`InvalidInput`] found.
    pub fn validate(&self, limits: &Limits, now_ms: u64) -> Result<(), InvalidInput> {
        if self.changes.len() > limits.max_fields_per_write {
            return Err(InvalidInput::TooManyFields {
                count: self.changes.len(),
                limit: limits.max_fields_per_write,
            });
        }
        if self.kind == MutationKind::Delete && !self.changes.is_empty() {
            return Err(InvalidInput::FieldName("a delete carries no fields".into()));
        }
        for change in &self.changes {
            check_field_name(&change.name, limits.max_field_name_bytes)
                .map_err(InvalidInput::FieldName)?;
            let size = change.value.as_ref().map_or(0, Vec::len);
            if size > limits.max_value_bytes {
                return Err(InvalidInput::ValueTooLarge {
                    field: change.name.clone(),
                    size,
                    limit: limits.max_value_bytes,
                });
            }
            if change.until_ms.is_some_and(|until| until > PHYSICAL_MAX) {
                return Err(InvalidInput::Expiry("field until beyond 48 bits".into()));
            }
        }
        if self.expiry_ms > PHYSICAL_MAX || self.cap_ms > PHYSICAL_MAX {
            return Err(InvalidInput::Expiry("beyond 48 bits".into()));
        }
        if self.cap_ms <= now_ms {
            return Err(InvalidInput::Expiry("lifetime cap is in the past".into()));
        }
        Ok(())
    }

    /// The delta record every replica merges, every entry stamped `stamp`.
    pub fn into_delta(self, stamp: Stamp) -> Record {
        let mut record = Record::new(self.expiry_ms, self.cap_ms);
        match self.kind {
            MutationKind::Create => record.origin = Some(stamp),
            MutationKind::Update => record.partial = true,
            MutationKind::Delete => record.tombstone = Some(stamp),
        }
        for change in self.changes {
            let entry = FieldEntry {
                stamp,
                value: change.value,
                until_ms: change.until_ms,
            };
            record.fields.insert(change.name, entry);
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let limits = Limits {
            max_field_name_bytes: 4,
            max_value_bytes: 3,
            max_fields_per_write: 2,
            max_key_bytes: 64,
        };
        let ok = Mutation::update(10, 10).set("a", "xyz");
        assert_eq!(ok.validate(&limits, 5), Ok(()));
        let cases = vec![
            Mutation::update(10, 10).set("toolong", "x"),
            Mutation::update(10, 10).set("", "x"),
            Mutation::update(10, 10).set("a\n", "x"),
            Mutation::update(10, 10).set("a", "four"),
            Mutation::update(10, 10)
                .set("a", "")
                .set("b", "")
                .set("c", ""),
            Mutation::update(10, 5),
            Mutation::update(1 << 50, 10),
        ];
        for mutation in cases {
            assert!(mutation.validate(&limits, 5).is_err(), "{mutation:?}");
        }
    }

    #[test]
    fn deltas_by_kind() {
        let stamp = Stamp::new(1, 0, 1);
        let create = Mutation::create(10, 20).set("a", "x").into_delta(stamp);
        assert_eq!((create.origin, create.partial), (Some(stamp), false));
        let update = Mutation::update(10, 20).remove("a").into_delta(stamp);
        assert!(update.partial);
        assert_eq!(update.fields["a"].value, None);
        let delete = Mutation::delete(20).into_delta(stamp);
        assert_eq!((delete.tombstone, delete.expiry_ms), (Some(stamp), 20));
    }
}
