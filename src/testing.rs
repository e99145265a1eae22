//! The replica conformance suite: every [`Replica`] must pass it
//! (`InMemoryReplica`, `FaultyReplica`, `RedisReplica`, and yours).
//!
//! Each check compares what the replica does with the pure
//! [`apply_merge`] rules and panics with a message naming the replica and the
//! rule broken. [`run_conformance`] wipes the replica first (so the replica
//! must support [`Replica::wipe`]) and runs every check; the checks are also
//! public, to run one alone.
//!
//! Times are real wall-clock milliseconds because a Redis replica expires
//! keys on its own clock: records written here expire an hour from now.
//!
//! Available with the `testing` cargo feature (and in this crate's tests).

use std::collections::BTreeSet;

use crate::record::{FieldEntry, Record};
use crate::replica::{apply_merge, Epoch, MergeMode, MergeStatus, Replica};
use crate::stamp::Stamp;

const HOUR_MS: u64 = 3_600_000;
/// Keys written by [`check_scan_covers_all_keys`].
pub const SCAN_KEY_COUNT: usize = 25;
/// Most scan pages [`check_scan_covers_all_keys`] follows before failing.
const SCAN_PAGES_MAX: usize = 10_000;

/// Runs every check against `replica`, at the current wall-clock time.
///
/// # Panics
///
/// On the first broken rule, with the replica's name and the rule.
pub async fn run_conformance(replica: &dyn Replica) {
    let now_ms = wall_clock_ms();
    run_conformance_at(replica, now_ms).await;
}

/// Runs every check with `now_ms` as the merge time (records expire an hour
/// after it; a Redis replica needs it close to its own clock).
///
/// # Panics
///
/// On the first broken rule.
pub async fn run_conformance_at(replica: &dyn Replica, now_ms: u64) {
    replica.wipe().await.expect("wipe before the suite");
    check_missing_key(replica).await;
    check_upsert_then_read(replica, now_ms).await;
    check_field_wise_merge(replica, now_ms).await;
    check_equal_stamp_tie_break(replica, now_ms).await;
    check_tombstone_wins(replica, now_ms).await;
    check_create(replica, now_ms).await;
    check_partial_flag(replica, now_ms).await;
    check_until_pruning(replica, now_ms).await;
    check_held_max(replica, now_ms).await;
    check_epoch_is_stable(replica, now_ms).await;
    check_mark_epoch_complete(replica).await;
    check_lease(replica).await;
    check_scan_covers_all_keys(replica, now_ms).await;
    check_wipe_starts_a_new_epoch(replica, now_ms).await;
}

/// The anti-entropy lease is held by one owner at a time: granted when
/// free or already the owner's, refused to another owner until released or
/// expired, released only by its owner, and never listed by a scan.
pub async fn check_lease(replica: &dyn Replica) {
    let name = replica.name();
    let (a, b) = (0x0a, 0x0b);
    let long = std::time::Duration::from_secs(30);
    let acquire = |owner, ttl| replica.acquire_lease(owner, ttl);
    assert!(
        acquire(a, long).await.expect("lease"),
        "{name}: a free lease is granted"
    );
    assert!(
        acquire(a, long).await.expect("lease"),
        "{name}: its owner renews it"
    );
    assert!(
        !acquire(b, long).await.expect("lease"),
        "{name}: another owner is refused"
    );
    replica.release_lease(b).await.expect("release");
    assert!(
        !acquire(b, long).await.expect("lease"),
        "{name}: only the owner releases it"
    );
    let page = replica.scan("0", 1_000).await.expect("scan");
    assert!(
        !page.keys.iter().any(|k| k == "lease"),
        "{name}: a scan lists no lease"
    );
    replica.release_lease(a).await.expect("release");
    let short = std::time::Duration::from_millis(50);
    assert!(
        acquire(b, short).await.expect("lease"),
        "{name}: a released lease is granted"
    );
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(
        acquire(a, long).await.expect("lease"),
        "{name}: an expired lease is granted"
    );
    replica.release_lease(a).await.expect("release");
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn wall_clock_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("time fits in u64")
}

/// A live record expiring an hour after `now_ms`, capped two hours after.
pub fn live_record(now_ms: u64) -> Record {
    Record::new(now_ms + HOUR_MS, now_ms + 2 * HOUR_MS)
}

/// A stamp `back_ms` before `now_ms`, with a logical part and a writer.
pub fn stamp_at(now_ms: u64, back_ms: u64, logical: u32, writer: u64) -> Stamp {
    Stamp::new(now_ms - back_ms, logical, writer)
}

fn with_field(mut record: Record, name: &str, entry: FieldEntry) -> Record {
    record.fields.insert(name.to_owned(), entry);
    record
}

async fn read(replica: &dyn Replica, key: &str) -> Option<Record> {
    replica
        .read(key)
        .await
        .unwrap_or_else(|e| panic!("{}: read {key}: {e}", replica.name()))
        .record
}

/// Merges and checks the status and the stored result against
/// [`apply_merge`] applied to what the replica held before.
async fn merge_checked(
    replica: &dyn Replica,
    key: &str,
    delta: &Record,
    mode: MergeMode,
    now_ms: u64,
) -> MergeStatus {
    let name = replica.name();
    let before = read(replica, key).await;
    let reply = replica
        .merge(key, delta, mode, now_ms)
        .await
        .unwrap_or_else(|e| panic!("{name}: merge into {key}: {e}"));
    let (status, expected) = apply_merge(before.as_ref(), delta, mode, now_ms);
    assert_eq!(reply.status, status, "{name}: merge status on {key}");
    assert_eq!(
        reply.held_max,
        before.as_ref().and_then(Record::max_stamp),
        "{name}: held_max on {key}"
    );
    let after = read(replica, key).await;
    let expected = expected.or(before);
    assert_eq!(after, expected, "{name}: record stored under {key}");
    status
}

/// A missing key reads as `None`, with an epoch.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_missing_key(replica: &dyn Replica) {
    let reply = replica.read("t:{missing}").await.expect("read");
    assert_eq!(reply.record, None, "{}: a missing key", replica.name());
    let epoch = replica.ping().await.expect("ping");
    assert_eq!(
        reply.epoch,
        epoch,
        "{}: read and ping epochs",
        replica.name()
    );
}

/// An upsert on a missing key stores the delta as it is: values with
/// non-UTF-8 bytes, empty values, removed fields, metadata.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_upsert_then_read(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{upsert}";
    let stamp = stamp_at(now_ms, 10, 0, 1);
    let mut delta = live_record(now_ms);
    delta.origin = Some(stamp);
    let delta = with_field(
        delta,
        "bytes",
        FieldEntry::value(stamp, vec![0, 0xff, 0x80, b'\n']),
    );
    let delta = with_field(delta, "empty", FieldEntry::value(stamp, Vec::new()));
    let delta = with_field(delta, "gone", FieldEntry::removed(stamp));
    let delta = with_field(delta, "ünï", FieldEntry::value(stamp, "ok"));
    let status = merge_checked(replica, key, &delta, MergeMode::Upsert, now_ms).await;
    assert_eq!(status, MergeStatus::Applied);
    assert_eq!(
        read(replica, key).await,
        Some(delta),
        "{}: upsert then read",
        replica.name()
    );
}

/// Fields merge one by one (the larger stamp wins); expiry by maximum, cap
/// by minimum.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_field_wise_merge(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{fields}";
    let (old, mid, new) = (
        stamp_at(now_ms, 30, 0, 1),
        stamp_at(now_ms, 20, 0, 2),
        stamp_at(now_ms, 10, 0, 1),
    );
    let first = with_field(live_record(now_ms), "cart", FieldEntry::value(mid, "a"));
    merge_checked(replica, key, &first, MergeMode::Upsert, now_ms).await;
    let mut second = with_field(live_record(now_ms), "cart", FieldEntry::value(old, "stale"));
    second = with_field(second, "theme", FieldEntry::value(old, "dark"));
    second.expiry_ms += 1000;
    second.cap_ms -= 1000;
    merge_checked(replica, key, &second, MergeMode::Upsert, now_ms).await;
    let third = with_field(live_record(now_ms), "cart", FieldEntry::value(new, "b"));
    merge_checked(replica, key, &third, MergeMode::Upsert, now_ms).await;
    let stored = read(replica, key).await.expect("stored");
    let name = replica.name();
    assert_eq!(stored.get("cart"), Some(&b"b"[..]), "{name}: newest cart");
    assert_eq!(
        stored.get("theme"),
        Some(&b"dark"[..]),
        "{name}: other field kept"
    );
    assert_eq!(
        stored.expiry_ms, second.expiry_ms,
        "{name}: expiry is the max"
    );
    assert_eq!(stored.cap_ms, second.cap_ms, "{name}: cap is the min");
}

/// Equal stamps: the larger rest of the stored form wins, whatever the
/// order of arrival (byte order, not locale order; 0xff above ASCII; a value
/// above a removal).
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_equal_stamp_tie_break(replica: &dyn Replica, now_ms: u64) {
    let stamp = stamp_at(now_ms, 5, 7, 3);
    let cases: [(&str, FieldEntry, FieldEntry); 4] = [
        (
            "ascii",
            FieldEntry::value(stamp, "b"),
            FieldEntry::value(stamp, "a"),
        ),
        (
            "high",
            FieldEntry::value(stamp, vec![0xff]),
            FieldEntry::value(stamp, "Z"),
        ),
        (
            "prefix",
            FieldEntry::value(stamp, "ab"),
            FieldEntry::value(stamp, "a"),
        ),
        (
            "removal",
            FieldEntry::value(stamp, ""),
            FieldEntry::removed(stamp),
        ),
    ];
    for (index, (case, winner, loser)) in cases.into_iter().enumerate() {
        for (order, (first, second)) in [(&winner, &loser), (&loser, &winner)]
            .into_iter()
            .enumerate()
        {
            let key = format!("t:{{tie-{index}-{order}}}");
            let a = with_field(live_record(now_ms), "f", first.clone());
            let b = with_field(live_record(now_ms), "f", second.clone());
            merge_checked(replica, &key, &a, MergeMode::Upsert, now_ms).await;
            merge_checked(replica, &key, &b, MergeMode::Upsert, now_ms).await;
            let stored = read(replica, &key).await.expect("stored");
            assert_eq!(
                stored.fields.get("f"),
                Some(&winner),
                "{}: tie-break case {case}, order {order}",
                replica.name()
            );
        }
    }
}

/// A tombstone wins over every field; a later non-tombstone write is `Gone`
/// and changes nothing; a tombstone again is applied.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_tombstone_wins(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{tomb}";
    let name = replica.name();
    let live = with_field(
        live_record(now_ms),
        "user",
        FieldEntry::value(stamp_at(now_ms, 50, 0, 1), "alice"),
    );
    merge_checked(replica, key, &live, MergeMode::Upsert, now_ms).await;
    let mut tomb = live_record(now_ms);
    tomb.tombstone = Some(stamp_at(now_ms, 40, 0, 2));
    assert_eq!(
        merge_checked(replica, key, &tomb, MergeMode::Upsert, now_ms).await,
        MergeStatus::Applied
    );
    let stored = read(replica, key).await.expect("tombstone stored");
    assert!(
        stored.is_tombstone() && stored.fields.is_empty(),
        "{name}: tombstone holds no fields"
    );
    let late = with_field(
        live_record(now_ms),
        "user",
        FieldEntry::value(stamp_at(now_ms, 1, 0, 1), "mallory"),
    );
    assert_eq!(
        merge_checked(replica, key, &late, MergeMode::Upsert, now_ms).await,
        MergeStatus::Gone,
        "{name}: write on a tombstone"
    );
    let mut tomb2 = live_record(now_ms);
    tomb2.tombstone = Some(stamp_at(now_ms, 45, 0, 2));
    assert_eq!(
        merge_checked(replica, key, &tomb2, MergeMode::Upsert, now_ms).await,
        MergeStatus::Applied
    );
    let stored = read(replica, key).await.expect("tombstone stored");
    assert_eq!(
        stored.tombstone, tomb.tombstone,
        "{name}: tombstone stamp is the max"
    );
}

/// A conditional create: applied on a missing key, applied again for its own
/// retry (same origin), `Exists` (nothing written) for another origin.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_create(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{create}";
    let name = replica.name();
    let origin = stamp_at(now_ms, 30, 0, 1);
    let mut create = with_field(
        live_record(now_ms),
        "user",
        FieldEntry::value(origin, "alice"),
    );
    create.origin = Some(origin);
    assert_eq!(
        merge_checked(replica, key, &create, MergeMode::Create, now_ms).await,
        MergeStatus::Applied,
        "{name}: create"
    );
    assert_eq!(
        merge_checked(replica, key, &create, MergeMode::Create, now_ms).await,
        MergeStatus::Applied,
        "{name}: retried create"
    );
    let other_origin = stamp_at(now_ms, 20, 0, 9);
    let mut collision = with_field(
        live_record(now_ms),
        "user",
        FieldEntry::value(other_origin, "bob"),
    );
    collision.origin = Some(other_origin);
    assert_eq!(
        merge_checked(replica, key, &collision, MergeMode::Create, now_ms).await,
        MergeStatus::Exists,
        "{name}: colliding create"
    );
    assert_eq!(
        read(replica, key).await.expect("kept").get("user"),
        Some(&b"alice"[..])
    );
    // A create without an origin on a record with one is another record.
    let mut anonymous = live_record(now_ms);
    anonymous.origin = None;
    assert_eq!(
        merge_checked(replica, key, &anonymous, MergeMode::Create, now_ms).await,
        MergeStatus::Exists
    );
    // The same create on a deleted record: Gone, not Exists.
    let mut tomb = live_record(now_ms);
    tomb.tombstone = Some(stamp_at(now_ms, 5, 0, 1));
    tomb.origin = Some(origin);
    merge_checked(replica, key, &tomb, MergeMode::Upsert, now_ms).await;
    assert_eq!(
        merge_checked(replica, key, &create, MergeMode::Create, now_ms).await,
        MergeStatus::Gone,
        "{name}: create on its own tombstone"
    );
}

/// A partial delta on a missing key makes a partial record; one full copy
/// clears the flag (AND); a tombstone is never partial.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_partial_flag(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{partial}";
    let name = replica.name();
    let mut partial = with_field(
        live_record(now_ms),
        "a",
        FieldEntry::value(stamp_at(now_ms, 9, 0, 1), "1"),
    );
    partial.partial = true;
    merge_checked(replica, key, &partial, MergeMode::Upsert, now_ms).await;
    assert!(
        read(replica, key).await.expect("stored").partial,
        "{name}: partial on create"
    );
    merge_checked(replica, key, &partial, MergeMode::Upsert, now_ms).await;
    assert!(
        read(replica, key).await.expect("stored").partial,
        "{name}: partial AND partial"
    );
    let full = with_field(
        live_record(now_ms),
        "b",
        FieldEntry::value(stamp_at(now_ms, 8, 0, 1), "2"),
    );
    merge_checked(replica, key, &full, MergeMode::Upsert, now_ms).await;
    assert!(
        !read(replica, key).await.expect("stored").partial,
        "{name}: one full copy clears partial"
    );
    let key = "t:{partial-tomb}";
    merge_checked(replica, key, &partial, MergeMode::Upsert, now_ms).await;
    let mut tomb = live_record(now_ms);
    tomb.tombstone = Some(stamp_at(now_ms, 1, 0, 1));
    tomb.partial = true;
    merge_checked(replica, key, &tomb, MergeMode::Upsert, now_ms).await;
    assert!(
        !read(replica, key).await.expect("stored").partial,
        "{name}: a tombstone is never partial"
    );
}

/// Entries whose `until` is before `now` are dropped by the merge, delta and
/// stored entries alike; the others stay.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_until_pruning(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{until}";
    let name = replica.name();
    let stamp = stamp_at(now_ms, 3, 0, 1);
    let mut delta = live_record(now_ms);
    delta = with_field(
        delta,
        "past",
        FieldEntry::value(stamp, "x").with_until(now_ms - 1),
    );
    delta = with_field(
        delta,
        "now",
        FieldEntry::value(stamp, "y").with_until(now_ms),
    );
    delta = with_field(
        delta,
        "soon",
        FieldEntry::value(stamp, "z").with_until(now_ms + 1000),
    );
    delta = with_field(
        delta,
        "gone-soon",
        FieldEntry::removed(stamp).with_until(now_ms + 1000),
    );
    delta = with_field(delta, "plain", FieldEntry::value(stamp, "w"));
    merge_checked(replica, key, &delta, MergeMode::Upsert, now_ms).await;
    let stored = read(replica, key).await.expect("stored");
    let names: Vec<&str> = stored.fields.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["gone-soon", "now", "plain", "soon"],
        "{name}: entries past until dropped"
    );
    // Later, the stored entries past their until go too.
    let later = now_ms + 2000;
    merge_checked(replica, key, &live_record(now_ms), MergeMode::Upsert, later).await;
    let stored = read(replica, key).await.expect("stored");
    let names: Vec<&str> = stored.fields.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["plain"],
        "{name}: stored entries past until dropped"
    );
}

/// `held_max` is the largest stamp held before the merge: fields, tombstone,
/// origin; `None` for a missing key.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_held_max(replica: &dyn Replica, now_ms: u64) {
    let key = "t:{held}";
    let name = replica.name();
    let origin = stamp_at(now_ms, 5, 0, 1);
    let mut first = with_field(
        live_record(now_ms),
        "a",
        FieldEntry::value(stamp_at(now_ms, 50, 0, 1), "1"),
    );
    first.origin = Some(origin);
    let reply = replica
        .merge(key, &first, MergeMode::Upsert, now_ms)
        .await
        .expect("merge");
    assert_eq!(reply.held_max, None, "{name}: nothing held before");
    let second = with_field(
        live_record(now_ms),
        "b",
        FieldEntry::removed(stamp_at(now_ms, 2, 0, 1)),
    );
    let reply = replica
        .merge(key, &second, MergeMode::Upsert, now_ms)
        .await
        .expect("merge");
    assert_eq!(
        reply.held_max,
        Some(origin),
        "{name}: the origin was the largest"
    );
    let reply = replica
        .merge(key, &live_record(now_ms), MergeMode::Upsert, now_ms)
        .await
        .expect("merge");
    assert_eq!(
        reply.held_max,
        Some(stamp_at(now_ms, 2, 0, 1)),
        "{name}: a removed field counts"
    );
}

/// The epoch exists, and stays the same across pings, reads and merges.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_epoch_is_stable(replica: &dyn Replica, now_ms: u64) {
    let name = replica.name();
    let first = replica.ping().await.expect("ping");
    let second = replica.ping().await.expect("ping");
    assert_eq!(first, second, "{name}: ping twice");
    let read = replica.read("t:{epoch}").await.expect("read");
    assert_eq!(read.epoch, first, "{name}: read epoch");
    let merged = replica
        .merge("t:{epoch}", &live_record(now_ms), MergeMode::Upsert, now_ms)
        .await
        .expect("merge");
    assert_eq!(merged.epoch, first, "{name}: merge epoch");
}

/// `mark_epoch_complete` with another id changes nothing; with the current
/// id it marks the epoch complete, visible in every reply.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_mark_epoch_complete(replica: &dyn Replica) {
    let name = replica.name();
    let epoch = replica.ping().await.expect("ping");
    if !epoch.complete {
        let wrong = epoch.id.wrapping_add(1);
        assert!(
            !replica.mark_epoch_complete(wrong).await.expect("mark"),
            "{name}: wrong id refused"
        );
        assert_eq!(
            replica.ping().await.expect("ping"),
            epoch,
            "{name}: wrong id changed nothing"
        );
    }
    assert!(
        replica.mark_epoch_complete(epoch.id).await.expect("mark"),
        "{name}: right id"
    );
    let complete = Epoch {
        id: epoch.id,
        complete: true,
    };
    assert_eq!(
        replica.ping().await.expect("ping"),
        complete,
        "{name}: ping after mark"
    );
    assert_eq!(
        replica.read("t:{nothing}").await.expect("read").epoch,
        complete,
        "{name}: read after mark"
    );
    assert!(
        replica.mark_epoch_complete(epoch.id).await.expect("mark"),
        "{name}: marking twice"
    );
}

/// Following scan pages from `"0"` returns every key written (keys may
/// repeat across pages).
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_scan_covers_all_keys(replica: &dyn Replica, now_ms: u64) {
    let name = replica.name();
    replica.wipe().await.expect("wipe");
    let written: BTreeSet<String> = (0..SCAN_KEY_COUNT)
        .map(|i| format!("t:{{scan-{i}}}"))
        .collect();
    for key in &written {
        replica
            .merge(key, &live_record(now_ms), MergeMode::Upsert, now_ms)
            .await
            .expect("merge");
    }
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_owned();
    for _ in 0..SCAN_PAGES_MAX {
        let page = replica.scan(&cursor, 4).await.expect("scan");
        seen.extend(page.keys);
        match page.next_cursor {
            Some(next) => cursor = next,
            None => {
                assert_eq!(
                    seen, written,
                    "{name}: scan returns exactly the keys written"
                );
                return;
            }
        }
    }
    panic!("{name}: scan did not finish within {SCAN_PAGES_MAX} pages");
}

/// `wipe` deletes every record and starts a new, incomplete epoch.
///
/// # Panics
///
/// When the rule is broken.
pub async fn check_wipe_starts_a_new_epoch(replica: &dyn Replica, now_ms: u64) {
    let name = replica.name();
    let key = "t:{wiped}";
    replica
        .merge(key, &live_record(now_ms), MergeMode::Upsert, now_ms)
        .await
        .expect("merge");
    let before = replica.ping().await.expect("ping");
    replica.mark_epoch_complete(before.id).await.expect("mark");
    replica.wipe().await.expect("wipe");
    let after = replica.ping().await.expect("ping");
    assert_ne!(after.id, before.id, "{name}: a wipe makes a new epoch");
    assert!(!after.complete, "{name}: a new epoch is incomplete");
    assert_eq!(read(replica, key).await, None, "{name}: records wiped");
    let page = replica.scan("0", 100).await.expect("scan");
    assert!(page.keys.is_empty(), "{name}: nothing left to scan");
}
