//! Anti-entropy: the pure decisions of one pass over the keyspace.
//!
//! A pass walks the keys of every replica taking part (one replica after the
//! other, page by page, as `SCAN` gives them: unordered, maybe repeated), and
//! for each key compares the replicas' copies — digests first, full records
//! only when the digests differ — then sends the join of the copies to every
//! replica whose copy differs ([`plan_key_repair`]). Hints make repair cheap;
//! anti-entropy is what guarantees convergence.
//!
//! A pass is also how a replica in a new, incomplete epoch (restarted empty,
//! failed over, restored from a snapshot) is **refilled**: once a pass has
//! merged into it everything held by enough complete replicas, its epoch may
//! be marked complete and its misses count again. "Enough" is
//! [`sources_needed`]: an acknowledged write is on at least W replicas, at
//! least W − 1 of them other than the one refilled, so the sources must meet
//! every such set: N − W + 1 of the N − 1 others (all of them when W = 1, and
//! then a write acknowledged by the wiped replica alone is lost anyway).
//! A replica that fails or changes epoch during the pass leaves it: it neither
//! counts as a source nor gets marked complete ([`AntiEntropyPass`]).
//!
//! SCAN replies carry no epoch: a source that restarted empty in the middle
//! of its scan answers its remaining pages empty, and its scan ends looking
//! complete. So a source counts only once it is **confirmed** after its scan
//! ([`AntiEntropyPass::to_confirm`], [`AntiEntropyPass::on_confirm`]: the
//! driver pings it once every repair has answered): still in the epoch it
//! started the pass in, it held everything from the pass's start to its
//! scan's end; in another epoch, or unreachable, it leaves the pass.
//! (`docs/epochs.md`, claim 7.)
//!
//! Pure: no clock (`now_ms` in), no I/O; the driver scans, reads, writes.

use super::ReplicaIndex;
use crate::record::Record;
use crate::replica::Epoch;
use crate::stamp::Stamp;

/// A 64-bit digest of a record's whole value.
pub type Digest = u64;

const DIGEST_SEED: u64 = 0x243f_6a88_85a3_08d3;
const DIGEST_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

struct Digester(u64);

impl Digester {
    fn word(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(DIGEST_MULTIPLIER);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(tail));
    }

    fn stamp(&mut self, stamp: Option<Stamp>) {
        match stamp {
            None => self.word(0),
            Some(stamp) => {
                self.word(1);
                self.word(stamp.physical_ms);
                self.word(u64::from(stamp.logical));
                self.word(stamp.writer);
            }
        }
    }

    fn finish(self) -> Digest {
        // Final avalanche (SplitMix64), so that nearby inputs spread.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The digest of a record: equal records have equal digests, and different
/// records differ with overwhelming probability (not cryptographic: a
/// collision makes one pass skip one key, the next pass compares again).
///
/// Replicas that compute digests themselves (a Lua script over the stored
/// form) compare among themselves with their own function; this one is for
/// records held in memory.
pub fn record_digest(record: &Record) -> Digest {
    let mut digest = Digester(DIGEST_SEED);
    // Not the format: it says how a copy is stored, not what it holds (see
    // `Record::same_data`).
    digest.word(u64::from(record.partial));
    digest.word(record.expiry_ms);
    digest.word(record.cap_ms);
    digest.stamp(record.tombstone);
    digest.stamp(record.origin);
    digest.word(record.fields.len() as u64);
    for (name, entry) in &record.fields {
        digest.bytes(name.as_bytes());
        digest.stamp(Some(entry.stamp));
        digest.word(u64::from(entry.kind()));
        digest.word(entry.until_ms.unwrap_or(0));
        digest.bytes(entry.value.as_deref().unwrap_or(&[]));
    }
    digest.finish()
}

/// True when every replica asked holds the same thing: all absent, or all
/// present with one digest. (`None` = the replica does not hold the key.)
pub fn digests_agree(digests: &[Option<Digest>]) -> bool {
    match digests.split_first() {
        None => true,
        Some((first, rest)) => rest.iter().all(|digest| digest == first),
    }
}

/// What a pass sends for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRepair {
    /// The join of every copy.
    pub merged: Record,
    /// Replicas whose copy differs from `merged` (absent ones included, unless
    /// `merged` has expired: an expired record is not copied anywhere new).
    pub targets: Vec<ReplicaIndex>,
}

/// Decides the repair of one key from the copies of the replicas taking part
/// (`None` where a replica does not hold the key). `None` when there is
/// nothing to send.
pub fn plan_key_repair(
    copies: &[(ReplicaIndex, Option<&Record>)],
    now_ms: u64,
) -> Option<KeyRepair> {
    let mut present = copies.iter().filter_map(|(_, copy)| *copy);
    let mut merged = present.next()?.clone();
    for copy in present {
        merged.merge_from(copy, now_ms);
    }
    merged.normalize(now_ms);
    let expired = merged.is_expired(now_ms);
    let targets: Vec<ReplicaIndex> = copies
        .iter()
        .filter(|(_, copy)| match copy {
            Some(copy) => !copy.same_data(&merged),
            None => !expired,
        })
        .map(|(index, _)| *index)
        .collect();
    if targets.is_empty() {
        return None;
    }
    assert!(
        targets.len() <= copies.len(),
        "targets are among the copies"
    );
    Some(KeyRepair { merged, targets })
}

/// Complete replicas a pass must have read in full before it may mark a
/// refilled replica complete: `min(N − W + 1, N − 1)` (see the module docs).
///
/// # Panics
///
/// Unless `1 <= write_quorum <= replica_count`.
pub fn sources_needed(replica_count: usize, write_quorum: usize) -> usize {
    assert!(write_quorum >= 1, "W must be at least 1");
    assert!(write_quorum <= replica_count, "W must not exceed N");
    (replica_count - write_quorum + 1).min(replica_count - 1)
}

/// Counters of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Keys whose copies were compared (a key met on several replicas'
    /// scans is compared each time).
    pub keys_compared: u64,
    /// Keys whose copies differed.
    pub keys_repaired: u64,
    /// Records sent to replicas.
    pub records_sent: u64,
    /// Pages scanned.
    pub pages_scanned: u64,
}

/// What a finished pass decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassOutcome {
    /// Incomplete replicas that stayed in the whole pass and may now be
    /// marked complete: `(replica, epoch id)`.
    pub mark_complete: Vec<(ReplicaIndex, u64)>,
    /// Replicas that took part from the first page to the last.
    pub covered: Vec<ReplicaIndex>,
    /// Complete replicas that were scanned in full and confirmed in their
    /// starting epoch afterwards ([`AntiEntropyPass::on_confirm`]).
    pub complete_sources: usize,
    /// [`sources_needed`].
    pub sources_needed: usize,
    /// Counters.
    pub stats: PassStats,
}

/// The state of one anti-entropy pass.
///
/// ```
/// use quorum_sessions::core::anti_entropy::AntiEntropyPass;
/// use quorum_sessions::replica::Epoch;
/// let complete = |id| Some(Epoch { id, complete: true });
/// // Replica 2 restarted empty (epoch 9, incomplete); 0 and 1 are complete.
/// let mut pass = AntiEntropyPass::new(&[complete(1), complete(2), Some(Epoch { id: 9, complete: false })], 2);
/// while let Some((replica, _cursor)) = pass.next_scan() {
///     // ... scan one page of `replica`, compare and repair its keys ...
///     pass.on_page(replica, None); // that replica's scan is done
/// }
/// // Every repair answered: the sources are pinged again.
/// assert_eq!(pass.to_confirm(), vec![0, 1]);
/// pass.on_confirm(0, complete(1));
/// pass.on_confirm(1, complete(2));
/// assert_eq!(pass.finish().mark_complete, vec![(2, 9)]);
/// ```
#[derive(Clone, Debug)]
pub struct AntiEntropyPass {
    start_epochs: Vec<Option<Epoch>>,
    left: Vec<bool>,
    scanned_in_full: Vec<bool>,
    /// Re-checked after the scans: still in its starting epoch.
    confirmed: Vec<bool>,
    scan_index: usize,
    cursor: String,
    write_quorum: usize,
    stats: PassStats,
}

impl AntiEntropyPass {
    /// A pass over the replicas reachable now: `epochs[i]` is replica i's
    /// epoch, `None` when it cannot take part.
    ///
    /// # Panics
    ///
    /// Unless `1 <= write_quorum <= epochs.len()`.
    pub fn new(epochs: &[Option<Epoch>], write_quorum: usize) -> AntiEntropyPass {
        let _ = sources_needed(epochs.len(), write_quorum); // checks W
        let mut pass = AntiEntropyPass {
            start_epochs: epochs.to_vec(),
            left: epochs.iter().map(Option::is_none).collect(),
            scanned_in_full: vec![false; epochs.len()],
            confirmed: vec![false; epochs.len()],
            scan_index: 0,
            cursor: "0".to_owned(),
            write_quorum,
            stats: PassStats::default(),
        };
        pass.skip_left();
        pass
    }

    /// Replicas still taking part, in index order: read and repair these.
    pub fn participants(&self) -> Vec<ReplicaIndex> {
        (0..self.left.len()).filter(|&i| !self.left[i]).collect()
    }

    /// True while `index` takes part.
    pub fn is_participant(&self, index: ReplicaIndex) -> bool {
        !self.left[index]
    }

    /// The replica to scan next and the cursor to scan from (`"0"` to begin);
    /// `None` when every participant has been scanned.
    pub fn next_scan(&self) -> Option<(ReplicaIndex, &str)> {
        (self.scan_index < self.left.len()).then_some((self.scan_index, self.cursor.as_str()))
    }

    /// A page of `index`'s scan was processed; `next_cursor` is where its scan
    /// goes on (`None`: done).
    ///
    /// # Panics
    ///
    /// If `index` is not the replica [`AntiEntropyPass::next_scan`] named.
    pub fn on_page(&mut self, index: ReplicaIndex, next_cursor: Option<String>) {
        assert_eq!(
            Some(index),
            self.next_scan().map(|(i, _)| i),
            "scan out of turn"
        );
        self.stats.pages_scanned += 1;
        match next_cursor {
            Some(cursor) => self.cursor = cursor,
            None => {
                self.scanned_in_full[index] = true;
                self.scan_index += 1;
                self.cursor = "0".to_owned();
                self.skip_left();
            }
        }
    }

    /// A reply (or its absence) during the pass: `epoch` is what replica
    /// `index` answered with, `None` if it failed. A failure or another epoch
    /// than at the start makes it leave the pass.
    pub fn on_replica(&mut self, index: ReplicaIndex, epoch: Option<Epoch>) {
        let same = match (epoch, self.start_epochs[index]) {
            (Some(now), Some(start)) => now.id == start.id,
            _ => false,
        };
        if !same && !self.left[index] {
            self.left[index] = true;
            self.scanned_in_full[index] = false;
            self.confirmed[index] = false;
            if self.scan_index == index {
                self.scan_index += 1;
                self.cursor = "0".to_owned();
                self.skip_left();
            }
        }
    }

    /// The sources to re-check once every scan is over and every repair
    /// answered, before [`AntiEntropyPass::finish`]: the participants
    /// complete at the start and scanned in full, not yet confirmed. The
    /// driver pings each and reports with [`AntiEntropyPass::on_confirm`].
    pub fn to_confirm(&self) -> Vec<ReplicaIndex> {
        self.participants()
            .into_iter()
            .filter(|&i| self.is_source(i) && !self.confirmed[i])
            .collect()
    }

    /// The re-check of source `index` after its scan: `epoch` is what it
    /// answers now (`None`: no answer). The same epoch as at the start
    /// confirms it (it held, through its whole scan, everything it held at
    /// the start); another epoch or no answer makes it leave the pass, as
    /// [`AntiEntropyPass::on_replica`] does.
    pub fn on_confirm(&mut self, index: ReplicaIndex, epoch: Option<Epoch>) {
        self.on_replica(index, epoch);
        if !self.left[index] {
            self.confirmed[index] = true;
        }
    }

    /// Complete at the start and scanned in full (not necessarily confirmed).
    fn is_source(&self, index: ReplicaIndex) -> bool {
        self.scanned_in_full[index] && self.start_epochs[index].is_some_and(|e| e.complete)
    }

    /// True when `index` takes part and its scan in this pass is finished.
    /// Every key it held was compared during that scan, so a driver scanning
    /// another replica may skip the keys `index` holds (a key written there
    /// since is covered by the next pass): each key is then compared once
    /// per pass instead of once per replica holding it.
    pub fn scanned_earlier(&self, index: ReplicaIndex) -> bool {
        !self.left[index] && self.scanned_in_full[index]
    }

    /// Compares one key's copies (`None` where a participant does not hold
    /// it): digests first, then [`plan_key_repair`]. Counts what it decides.
    pub fn compare_key(
        &mut self,
        copies: &[(ReplicaIndex, Option<&Record>)],
        now_ms: u64,
    ) -> Option<KeyRepair> {
        self.stats.keys_compared += 1;
        let digests: Vec<Option<Digest>> = copies
            .iter()
            .map(|(_, copy)| copy.map(record_digest))
            .collect();
        if digests_agree(&digests) {
            return None;
        }
        let repair = plan_key_repair(copies, now_ms)?;
        self.stats.keys_repaired += 1;
        self.stats.records_sent += repair.targets.len() as u64;
        Some(repair)
    }

    /// Counters so far.
    pub fn stats(&self) -> PassStats {
        self.stats
    }

    /// The pass's decision, once [`AntiEntropyPass::next_scan`] is `None`
    /// (and the sources were re-checked: [`AntiEntropyPass::to_confirm`];
    /// a source not confirmed does not count).
    ///
    /// # Panics
    ///
    /// If the scan is not over.
    pub fn finish(&self) -> PassOutcome {
        assert!(self.next_scan().is_none(), "the pass is not over");
        let covered = self.participants();
        // Only confirmed sources count: a source never re-checked may have
        // restarted in the middle of its scan (SCAN replies carry no epoch).
        let complete_sources = covered
            .iter()
            .filter(|&&i| self.is_source(i) && self.confirmed[i])
            .count();
        let needed = sources_needed(self.left.len(), self.write_quorum);
        let mark_complete = if complete_sources >= needed {
            covered
                .iter()
                .filter_map(|&i| {
                    let epoch = self.start_epochs[i].expect("participants had an epoch");
                    (!epoch.complete).then_some((i, epoch.id))
                })
                .collect()
        } else {
            Vec::new()
        };
        PassOutcome {
            mark_complete,
            covered,
            complete_sources,
            sources_needed: needed,
            stats: self.stats,
        }
    }

    fn skip_left(&mut self) {
        while self.scan_index < self.left.len() && self.left[self.scan_index] {
            self.scan_index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FieldEntry;

    const NOW: u64 = 1_000;

    fn record(fields: &[(&str, u64)]) -> Record {
        let mut record = Record::new(NOW + 10_000, NOW + 20_000);
        for &(name, physical) in fields {
            record.fields.insert(
                name.into(),
                FieldEntry::value(Stamp::new(physical, 0, 1), name),
            );
        }
        record
    }

    fn tombstone() -> Record {
        let mut record = record(&[]);
        record.tombstone = Some(Stamp::new(50, 0, 2));
        record
    }

    fn expired(fields: &[(&str, u64)]) -> Record {
        let mut record = record(fields);
        record.expiry_ms = NOW - 1;
        record
    }

    #[test]
    fn digest_table() {
        let base = record(&[("a", 1), ("b", 2)]);
        let same = Record::merge(&record(&[("a", 1)]), &record(&[("b", 2)]), NOW);
        let mut partial = base.clone();
        partial.partial = true;
        let mut longer = base.clone();
        longer.expiry_ms += 1;
        let mut other_value = base.clone();
        other_value.fields.get_mut("a").unwrap().value = Some(b"A".to_vec());
        let mut removed = base.clone();
        removed.fields.get_mut("a").unwrap().value = None;
        let mut format_one = base.clone();
        format_one.format = 1;
        // (name, record, equal to base's digest)
        let cases = [
            ("same content, built another way", same, true),
            ("same content, stored in format 1", format_one, true),
            ("partial flag", partial, false),
            ("expiry", longer, false),
            ("value bytes", other_value, false),
            ("removed field", removed, false),
            ("newer stamp", record(&[("a", 1), ("b", 3)]), false),
            (
                "a field more",
                record(&[("a", 1), ("b", 2), ("c", 3)]),
                false,
            ),
            ("tombstone", tombstone(), false),
        ];
        let digest = record_digest(&base);
        for (name, other, equal) in cases {
            assert_eq!(record_digest(&other) == digest, equal, "{name}");
        }
    }

    #[test]
    fn digests_agree_table() {
        let cases: [(&[Option<Digest>], bool); 6] = [
            (&[], true),
            (&[None, None], true),
            (&[Some(1), Some(1), Some(1)], true),
            (&[Some(1), Some(2)], false),
            (&[Some(1), None], false),
            (&[None, Some(1)], false),
        ];
        for (digests, agree) in cases {
            assert_eq!(digests_agree(digests), agree, "{digests:?}");
        }
    }

    #[test]
    fn key_repair_table() {
        let old = record(&[("a", 1)]);
        let new = record(&[("a", 1), ("b", 2)]);
        let joined = Record::merge(&old, &new, NOW);
        // (name, copies, expected targets, expected merged)
        type Case = (
            &'static str,
            Vec<(usize, Option<Record>)>,
            Option<Vec<usize>>,
            Option<Record>,
        );
        let mut new_in_format_one = new.clone();
        new_in_format_one.format = 1;
        let cases: Vec<Case> = vec![
            (
                "all equal: nothing",
                vec![(0, Some(new.clone())), (1, Some(new.clone()))],
                None,
                None,
            ),
            (
                "the same data in two stored formats: nothing",
                vec![(0, Some(new.clone())), (1, Some(new_in_format_one))],
                None,
                None,
            ),
            (
                "all absent: nothing",
                vec![(0, None), (1, None)],
                None,
                None,
            ),
            (
                "a stale copy and a missing one get the join",
                vec![(0, Some(old.clone())), (1, Some(new.clone())), (2, None)],
                Some(vec![0, 2]),
                Some(joined.clone()),
            ),
            (
                "every copy differs from the join",
                vec![
                    (0, Some(record(&[("a", 1)]))),
                    (1, Some(record(&[("b", 2)]))),
                ],
                Some(vec![0, 1]),
                Some(joined.clone()),
            ),
            (
                "a tombstone reaches every copy",
                vec![(0, Some(new.clone())), (1, Some(tombstone())), (2, None)],
                Some(vec![0, 2]),
                Some(Record::merge(&new, &tombstone(), NOW)),
            ),
            (
                "an expired record is not copied to replicas lacking it",
                vec![(0, Some(expired(&[("a", 1)]))), (1, None)],
                None,
                None,
            ),
            (
                "but an expired record still reaches differing copies",
                vec![
                    (0, Some(expired(&[("a", 1)]))),
                    (1, Some(expired(&[("a", 2)]))),
                    (2, None),
                ],
                Some(vec![0]),
                Some(expired(&[("a", 2)])),
            ),
        ];
        for (name, copies, targets, merged) in cases {
            let borrowed: Vec<(usize, Option<&Record>)> =
                copies.iter().map(|(i, r)| (*i, r.as_ref())).collect();
            let repair = plan_key_repair(&borrowed, NOW);
            assert_eq!(
                repair.as_ref().map(|r| r.targets.clone()),
                targets,
                "{name}: targets"
            );
            assert_eq!(repair.map(|r| r.merged), merged, "{name}: merged");
        }
    }

    #[test]
    fn sources_needed_table() {
        // (N, W, sources)
        for (n, w, sources) in [
            (1, 1, 0),
            (3, 1, 2),
            (3, 2, 2),
            (3, 3, 1),
            (5, 3, 3),
            (5, 1, 4),
            (5, 5, 1),
        ] {
            assert_eq!(sources_needed(n, w), sources, "N={n} W={w}");
        }
    }

    fn epoch(id: u64, complete: bool) -> Option<Epoch> {
        Some(Epoch { id, complete })
    }

    /// Runs a pass: every participant's scan takes `pages` pages; `events`
    /// are applied before page number `at` (counted over the whole pass).
    fn run_pass(
        epochs: &[Option<Epoch>],
        w: usize,
        pages: usize,
        events: &[(u64, usize, Option<Epoch>)],
    ) -> (Vec<usize>, PassOutcome) {
        run_pass_confirmed(epochs, w, pages, events, &[])
    }

    /// [`run_pass`], then every source is confirmed with its starting
    /// epoch unless `confirms` says what it answers instead.
    fn run_pass_confirmed(
        epochs: &[Option<Epoch>],
        w: usize,
        pages: usize,
        events: &[(u64, usize, Option<Epoch>)],
        confirms: &[(usize, Option<Epoch>)],
    ) -> (Vec<usize>, PassOutcome) {
        let mut pass = AntiEntropyPass::new(epochs, w);
        let mut scanned = Vec::new();
        let mut page_count = 0u64;
        let mut page_of_replica = 0;
        while let Some((replica, cursor)) = pass.next_scan() {
            if cursor == "0" {
                page_of_replica = 0;
            }
            for &(at, index, epoch) in events {
                if at == page_count {
                    pass.on_replica(index, epoch);
                }
            }
            let Some((replica_now, _)) = pass.next_scan() else {
                break;
            };
            if replica_now != replica {
                continue;
            }
            scanned.push(replica);
            page_of_replica += 1;
            page_count += 1;
            let next = (page_of_replica < pages).then(|| format!("c{page_of_replica}"));
            pass.on_page(replica, next);
        }
        for index in pass.to_confirm() {
            let answer = confirms
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(epochs[index], |(_, epoch)| *epoch);
            pass.on_confirm(index, answer);
        }
        (scanned, pass.finish())
    }

    #[test]
    fn pass_table() {
        // (name, epochs at start, W, pages per scan, events, replicas scanned
        //  (one entry per page), marked complete, complete sources)
        type Case = (
            &'static str,
            Vec<Option<Epoch>>,
            usize,
            usize,
            Vec<(u64, usize, Option<Epoch>)>,
            Vec<usize>,
            Vec<(usize, u64)>,
            usize,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing to refill",
                vec![epoch(1, true), epoch(2, true), epoch(3, true)],
                2,
                1,
                vec![],
                vec![0, 1, 2],
                vec![],
                3,
            ),
            (
                "a wiped replica is refilled from two complete sources",
                vec![epoch(1, true), epoch(2, true), epoch(9, false)],
                2,
                2,
                vec![],
                vec![0, 0, 1, 1, 2, 2],
                vec![(2, 9)],
                2,
            ),
            (
                "one source is not enough for N=3, W=2",
                vec![None, epoch(2, true), epoch(9, false)],
                2,
                1,
                vec![],
                vec![1, 2],
                vec![],
                1,
            ),
            (
                "one source is enough for N=3, W=3",
                vec![None, epoch(2, true), epoch(9, false)],
                3,
                1,
                vec![],
                vec![1, 2],
                vec![(2, 9)],
                1,
            ),
            (
                "a source failing mid-scan leaves the pass",
                vec![epoch(1, true), epoch(2, true), epoch(9, false)],
                2,
                2,
                vec![(1, 0, None)],
                vec![0, 1, 1, 2, 2],
                vec![],
                1,
            ),
            (
                "the refilled replica changing epoch leaves the pass",
                vec![epoch(1, true), epoch(2, true), epoch(9, false)],
                2,
                1,
                vec![(1, 2, epoch(10, false))],
                vec![0, 1],
                vec![],
                2,
            ),
            (
                "a completion seen mid-pass is the same epoch",
                vec![epoch(1, true), epoch(2, true), epoch(9, false)],
                2,
                1,
                vec![(1, 2, epoch(9, true))],
                vec![0, 1, 2],
                vec![(2, 9)],
                2,
            ),
            (
                "two refilled replicas at once, N=5 W=3",
                vec![
                    epoch(1, true),
                    epoch(8, false),
                    epoch(3, true),
                    epoch(9, false),
                    epoch(5, true),
                ],
                3,
                1,
                vec![],
                vec![0, 1, 2, 3, 4],
                vec![(1, 8), (3, 9)],
                3,
            ),
        ];
        for (name, epochs, w, pages, events, scanned, marked, sources) in cases {
            let (seen, outcome) = run_pass(&epochs, w, pages, &events);
            assert_eq!(seen, scanned, "{name}: scans");
            assert_eq!(outcome.mark_complete, marked, "{name}: marked");
            assert_eq!(outcome.complete_sources, sources, "{name}: sources");
            assert_eq!(
                outcome.stats.pages_scanned,
                scanned.len() as u64,
                "{name}: pages"
            );
        }
    }

    /// B5: SCAN replies carry no epoch, so a source that restarted during
    /// its scan is only caught by the re-check after the scans.
    #[test]
    fn sources_are_confirmed_before_a_refill_is_marked_complete() {
        let n5 = vec![
            epoch(1, true),
            epoch(2, true),
            None, // down
            epoch(4, true),
            epoch(9, false), // being refilled
        ];
        // (name, confirmations (replica, answer), marked, sources, covered)
        type Case = (
            &'static str,
            Vec<(usize, Option<Epoch>)>,
            Vec<(usize, u64)>,
            usize,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            (
                "every source still in its epoch: r4 is marked",
                vec![],
                vec![(4, 9)],
                3,
                vec![0, 1, 3, 4],
            ),
            (
                "r3 restarted (empty) during its scan: it does not count",
                vec![(3, epoch(40, false))],
                vec![],
                2,
                vec![0, 1, 4],
            ),
            (
                "r3 restarted and another pass already refilled it: still not a source here",
                vec![(3, epoch(40, true))],
                vec![],
                2,
                vec![0, 1, 4],
            ),
            (
                "r0 does not answer the re-check",
                vec![(0, None)],
                vec![],
                2,
                vec![1, 3, 4],
            ),
            (
                "a completion seen at the re-check is the same epoch",
                vec![(3, epoch(4, true))],
                vec![(4, 9)],
                3,
                vec![0, 1, 3, 4],
            ),
        ];
        for (name, confirms, marked, sources, covered) in cases {
            let (_, outcome) = run_pass_confirmed(&n5, 3, 2, &[], &confirms);
            assert_eq!(outcome.mark_complete, marked, "{name}: marked");
            assert_eq!(outcome.complete_sources, sources, "{name}: sources");
            assert_eq!(outcome.covered, covered, "{name}: covered");
        }
        // A driver that does not re-check marks nothing.
        let mut pass = AntiEntropyPass::new(&n5, 3);
        while let Some((replica, _)) = pass.next_scan() {
            pass.on_page(replica, None);
        }
        assert_eq!(pass.to_confirm(), vec![0, 1, 3]);
        let outcome = pass.finish();
        assert_eq!(
            (outcome.mark_complete, outcome.complete_sources),
            (vec![], 0)
        );
        // Confirmed sources are not asked again; the refilled one never is.
        pass.on_confirm(0, epoch(1, true));
        assert_eq!(pass.to_confirm(), vec![1, 3]);
    }

    #[test]
    fn scanned_earlier_names_the_finished_scans() {
        let mut pass = AntiEntropyPass::new(&[epoch(1, true), epoch(2, true), epoch(3, true)], 2);
        assert!(!pass.scanned_earlier(0));
        pass.on_page(0, None);
        assert!(pass.scanned_earlier(0));
        assert!(!pass.scanned_earlier(1), "being scanned");
        pass.on_replica(0, None);
        assert!(!pass.scanned_earlier(0), "left the pass");
    }

    #[test]
    fn compare_key_counts_its_decisions() {
        let mut pass = AntiEntropyPass::new(&[epoch(1, true), epoch(2, true)], 1);
        let a = record(&[("a", 1)]);
        let b = record(&[("a", 2)]);
        assert_eq!(pass.compare_key(&[(0, Some(&a)), (1, Some(&a))], NOW), None);
        let repair = pass
            .compare_key(&[(0, Some(&a)), (1, Some(&b))], NOW)
            .unwrap();
        assert_eq!(repair.targets, vec![0]);
        assert_eq!(repair.merged, b);
        let stats = pass.stats();
        assert_eq!(
            (stats.keys_compared, stats.keys_repaired, stats.records_sent),
            (2, 1, 1)
        );
    }
}
