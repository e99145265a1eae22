//! A simulated replica's records: a slot per session, indexed by the
//! session's number, so that finding a record costs no key comparison.
//! Scans walk the keys in the order of their strings, as a `BTreeMap` keyed
//! by the key strings would. Records are shared with the server's last
//! snapshot until one of the two changes them (copy on write), so a
//! snapshot costs a pointer per session, not a copy of every record.

use std::sync::Arc;

use quorum_sessions::Record;

use crate::checker::RecordMap;
use crate::workload::{SessionIndex, SessionKey, PADDED_KEYS};

/// Records by session key.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecordStore {
    slots: Vec<Option<Arc<Record>>>,
}

impl RecordStore {
    /// The record under `key`.
    pub(super) fn get(&self, key: SessionKey) -> Option<&Record> {
        self.slots.get(key.0 as usize)?.as_deref()
    }

    /// The record under `key`, to change in place.
    pub(super) fn get_mut(&mut self, key: SessionKey) -> Option<&mut Record> {
        self.slots
            .get_mut(key.0 as usize)?
            .as_mut()
            .map(Arc::make_mut)
    }

    /// Stores `record` under `key`, replacing any record there.
    pub(super) fn insert(&mut self, key: SessionKey, record: Record) {
        let index = key.0 as usize;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some(Arc::new(record));
    }

    /// Takes the record under `key` out.
    pub(super) fn remove(&mut self, key: SessionKey) -> Option<Arc<Record>> {
        self.slots.get_mut(key.0 as usize)?.take()
    }

    /// The keys held after `after` (from the first if `None`), in key order.
    /// Up to ten million sessions that is slot order; past it the keys are
    /// sorted on each call (slow, but in order).
    pub(super) fn keys_after(
        &self,
        after: Option<SessionKey>,
    ) -> Box<dyn Iterator<Item = SessionKey> + '_> {
        if self.slots.len() <= PADDED_KEYS as usize {
            let start = after.map_or(0, |key| key.0 as usize + 1);
            let held = self.slots.iter().enumerate().skip(start);
            Box::new(held.filter_map(|(index, slot)| {
                slot.as_ref().map(|_| SessionKey(index as SessionIndex))
            }))
        } else {
            let mut keys: Vec<SessionKey> = self.held_keys().collect();
            keys.sort_unstable();
            Box::new(
                keys.into_iter()
                    .filter(move |key| after.is_none_or(|a| *key > a)),
            )
        }
    }

    fn held_keys(&self) -> impl Iterator<Item = SessionKey> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_ref().map(|_| SessionKey(index as SessionIndex)))
    }
}

impl RecordMap for RecordStore {
    type Key = SessionKey;

    fn copy(&self, key: &SessionKey) -> Option<&Record> {
        self.get(*key)
    }

    fn copies(&self) -> Box<dyn Iterator<Item = (SessionKey, &Record)> + '_> {
        Box::new(self.keys_after(None).map(|key| {
            let record = self.get(key).expect("a held key");
            (key, record)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_key_order_from_a_cursor() {
        let mut store = RecordStore::default();
        for index in [5, 1, 9, 3] {
            store.insert(SessionKey(index), Record::new(1, 1));
        }
        assert!(store.remove(SessionKey(9)).is_some());
        assert!(store.get(SessionKey(9)).is_none());
        assert!(store.get(SessionKey(100)).is_none());
        let keys: Vec<_> = store.keys_after(None).map(|k| k.0).collect();
        assert_eq!(keys, [1, 3, 5]);
        let keys: Vec<_> = store.keys_after(Some(SessionKey(1))).map(|k| k.0).collect();
        assert_eq!(keys, [3, 5]);
        assert_eq!(store.copies().count(), 3);
    }
}
