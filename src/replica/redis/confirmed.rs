//! The epoch last confirmed complete on the current connection, so that a
//! read can skip the `MGET` before its `HGETALL` (see "Reads" in the module
//! docs of `replica::redis`).
//!
//! An entry says: on connection `generation`, a reply that went through that
//! connection showed epoch `id`, complete, made by the Redis process behind
//! it. It is dropped by a reply that shows another epoch or an incomplete
//! one, by a fast read whose `MGET` does not show it, and by
//! [`Replica::wipe`](crate::replica::Replica::wipe); it is unused once the
//! connection changed or [`RECONFIRM_AFTER`] passed since the request that
//! showed it was sent. Replies may be noted out of order (a late one can
//! bring an entry back): a fast read then counts only if the epoch key
//! still shows the entry's epoch after the `HGETALL`, or the record was
//! written in that epoch (its `m:ep`); and the entry ages from when its
//! request left, so it never serves beyond [`RECONFIRM_AFTER`] after the
//! epoch was last seen standing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::replica::Epoch;

/// How long a confirmation serves one-round-trip reads without a fresh
/// confirmation. Past it, one read takes the bracketed path (or a merge
/// reply confirms it again).
pub const RECONFIRM_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Entry {
    generation: u64,
    id: u64,
    at: Instant,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct ConfirmedEpoch {
    entry: Mutex<Option<Entry>>,
}

impl ConfirmedEpoch {
    /// The id of the epoch confirmed complete on connection `generation`,
    /// if confirmed less than [`RECONFIRM_AFTER`] before `now`.
    pub(super) fn get(&self, generation: u64, now: Instant) -> Option<u64> {
        let entry = (*self.lock())?;
        let fresh = entry.generation == generation
            && now.saturating_duration_since(entry.at) < RECONFIRM_AFTER;
        fresh.then_some(entry.id)
    }

    /// Records the epoch a reply on connection `generation` showed (made
    /// by the process behind it): confirmed when complete, else forgotten.
    pub(super) fn note(&self, generation: u64, epoch: Epoch, now: Instant) {
        *self.lock() = epoch.complete.then_some(Entry {
            generation,
            id: epoch.id,
            at: now,
        });
    }

    /// Forgets the confirmation (the keyspace was wiped, or a read could
    /// not confirm it).
    pub(super) fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Entry>> {
        self.entry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(id: u64, complete: bool) -> Epoch {
        Epoch { id, complete }
    }

    #[test]
    fn only_a_complete_epoch_on_the_same_connection_and_recent_serves() {
        let confirmed = ConfirmedEpoch::default();
        let t0 = Instant::now();
        assert_eq!(confirmed.get(1, t0), None, "nothing confirmed yet");
        confirmed.note(1, epoch(7, true), t0);
        assert_eq!(confirmed.get(1, t0), Some(7));
        assert_eq!(confirmed.get(2, t0), None, "another connection");
        assert_eq!(
            confirmed.get(1, t0 + RECONFIRM_AFTER),
            None,
            "too old: reconfirm"
        );
        confirmed.note(1, epoch(7, false), t0);
        assert_eq!(confirmed.get(1, t0), None, "an incomplete epoch clears it");
        confirmed.note(1, epoch(8, true), t0);
        confirmed.forget();
        assert_eq!(confirmed.get(1, t0), None, "forgotten");
    }
}
