//! Proves that the Lua merge inside Redis and the Rust merge agree exactly.
//!
//! A seeded RNG makes random operation histories (10,260 merges in 36
//! concurrent streams, each moving to a fresh key every 20 to 60 operations,
//! about 250 keys in all): upserts and conditional creates, tombstones, field removals,
//! `until` entries (some already past), equal stamps with different values,
//! stamps and expiries near 2^48, empty deltas, empty values, non-UTF-8
//! bytes, tombstone deltas carrying fields, lifetime caps in the past. Each
//! operation goes through `RedisReplica::merge` (the Lua script, on a real
//! Redis container) and through the pure `apply_merge` on an in-memory model
//! (plus the one Redis-only rule: a record whose effective expiry is not after
//! `now` is deleted). After every operation the statuses, `held_max` and the
//! record read back (`RedisReplica::read`) must equal the model's, field by
//! field; at the end a scan must list exactly the model's keys. The test also
//! checks that the interesting cases really occurred (ties, Gone, Exists,
//! pruning, deletions), so a generator change cannot silently weaken it, and
//! that the merges went through multi-record calls (the streams run
//! concurrently, so merges wait for calls in flight and leave together;
//! counted by the replica and by `INFO commandstats`).
//!
//! Stored formats (issue 15 part 6): every delta is sent through a replica
//! set to write its format (`StoredFormat::V1` or `V2`, two replicas on the
//! one Redis), a third of the streams write format 1 only (records without
//! summaries, as builds before them wrote), a third format 2 only, and a
//! third mostly format 2 with format-1 writers among them (a rolling
//! deploy). The model is the same `apply_merge` (format merged by maximum),
//! and the record read back carries the stored `m:v`: so the written hash
//! is format 1 exactly when both sides were. At the end every stored hash
//! is checked raw: format 1 holds no summary (what a build that reads only
//! format 1 requires), format 2 holds `m:h`.
//!
//! The seed is printed; set `QS_DIFF_SEED=<n>` to replay one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use fred::prelude::*;
use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::{apply_merge, MergeMode, MergeStatus, Replica};
use quorum_sessions::stamp::{PHYSICAL_MAX, WRITER_MAX};
use quorum_sessions::testing::wall_clock_ms;
use quorum_sessions::{FieldEntry, Record, Stamp, StoredFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Streams of operations; each walks through several keys.
const KEY_COUNT: usize = 36;
/// Operations per stream: 10,260 in all.
const OPS_PER_KEY: usize = 285;
const HOUR_MS: u64 = 3_600_000;
const FIELD_NAMES: [&str; 6] = ["a", "b", "cart:1", "ü", "x y", "long-field-name-0123456789"];

/// One generated operation.
#[derive(Clone, Debug)]
struct Op {
    delta: Record,
    mode: MergeMode,
    now_ms: u64,
}

/// Counts of the cases that occurred, to prove coverage.
#[derive(Default)]
struct Coverage {
    applied: AtomicUsize,
    gone: AtomicUsize,
    exists: AtomicUsize,
    ties: AtomicUsize,
    pruned: AtomicUsize,
    deleted: AtomicUsize,
    /// Merges whose result stayed format 1 (both sides format 1).
    kept_v1: AtomicUsize,
    /// Merges of a format-2 delta into a stored format-1 record.
    upgraded: AtomicUsize,
    /// Merges of a format-1 delta into a stored format-2 record.
    v1_into_v2: AtomicUsize,
}

struct Generator {
    rng: ChaCha8Rng,
    /// Whether entries may carry an `until`. Half the streams never do, so
    /// that their records stay on the merge's fast path (only the fields a
    /// delta names are read); the other half take the whole-hash path.
    untils: bool,
    /// The chance that a delta is written in format 1 (else format 2).
    v1_share: f64,
    base_ms: u64,
}

impl Generator {
    /// Few distinct values, so equal stamps happen often.
    fn stamp(&mut self) -> Stamp {
        if self.rng.random_bool(0.5) {
            // A tiny set: the same stamp with different values is common.
            let physical = [self.base_ms - 1, PHYSICAL_MAX][self.rng.random_range(0..2)];
            return Stamp::new(physical, 0, [1, WRITER_MAX][self.rng.random_range(0..2)]);
        }
        let physical = match self.rng.random_range(0..10) {
            0 => PHYSICAL_MAX,
            1 => PHYSICAL_MAX - 1,
            n => self.base_ms - (n as u64),
        };
        let logical = [0, 1, u32::MAX][self.rng.random_range(0..3)];
        let writer = [1, 2, WRITER_MAX][self.rng.random_range(0..3)];
        Stamp::new(physical, logical, writer)
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..8) {
            0 => Vec::new(),
            1 => vec![0xff],
            2 => vec![0x80, 0x00, 0xfe, b'a'],
            3 => b"a".to_vec(),
            4 => b"b".to_vec(),
            5 => b"ab".to_vec(),
            6 => "é€".as_bytes().to_vec(),
            _ => {
                let len = self.rng.random_range(0..64);
                (0..len).map(|_| self.rng.random()).collect()
            }
        }
    }

    fn until(&mut self, now_ms: u64) -> u64 {
        match self.rng.random_range(0..6) {
            0 => now_ms - 5_000,
            1 => now_ms - 1,
            2 => now_ms,
            3 => now_ms + 1,
            4 => now_ms + 5_000,
            _ => PHYSICAL_MAX,
        }
    }

    fn entry(&mut self, now_ms: u64) -> FieldEntry {
        let stamp = self.stamp();
        let entry = if self.rng.random_bool(0.25) {
            FieldEntry::removed(stamp)
        } else {
            FieldEntry::value(stamp, self.value())
        };
        if self.untils && self.rng.random_bool(0.3) {
            entry.with_until(self.until(now_ms))
        } else {
            entry
        }
    }

    /// Expiry or cap: an hour ahead, near 2^48, or (rarely) already past.
    fn time_limit(&mut self, now_ms: u64) -> u64 {
        match self.rng.random_range(0..100) {
            0 => now_ms - self.rng.random_range(0..2_000),
            1..=10 => PHYSICAL_MAX - self.rng.random_range(0..3),
            _ => self.base_ms + HOUR_MS + self.rng.random_range(0..2_000),
        }
    }

    fn op(&mut self) -> Op {
        // `now` wanders around the real time, not monotonically.
        let now_ms = self.base_ms - 10_000 + self.rng.random_range(0..20_000);
        let mut delta = Record::new(self.time_limit(now_ms), self.time_limit(now_ms));
        for _ in 0..self.rng.random_range(0..=4) {
            let name = FIELD_NAMES[self.rng.random_range(0..FIELD_NAMES.len())];
            delta.fields.insert(name.to_owned(), self.entry(now_ms));
        }
        if self.rng.random_bool(0.02) {
            delta.tombstone = Some(self.stamp());
            if self.rng.random_bool(0.7) {
                delta.fields.clear(); // usually a clean tombstone; else fields ride along
            }
        }
        if self.rng.random_bool(0.3) {
            delta.origin = Some(self.stamp());
        }
        delta.partial = self.rng.random_bool(0.2);
        // The format the delta is written in: which replica sends it.
        delta.format = if self.rng.random_bool(self.v1_share) {
            1
        } else {
            2
        };
        let mode = if self.rng.random_bool(0.1) {
            MergeMode::Create
        } else {
            MergeMode::Upsert
        };
        Op {
            delta,
            mode,
            now_ms,
        }
    }
}

/// The model's answer for one operation: status, held_max, new state.
fn model_step(
    stored: Option<&Record>,
    op: &Op,
    coverage: &Coverage,
) -> (MergeStatus, Option<Stamp>, Option<Record>) {
    let held = stored.and_then(Record::max_stamp);
    let (status, merged) = apply_merge(stored, &op.delta, op.mode, op.now_ms);
    count_ties(stored, &op.delta, coverage);
    if status == MergeStatus::Applied {
        let counter = match (stored.map(|s| s.format), op.delta.format) {
            (None | Some(1), 1) => Some(&coverage.kept_v1),
            (Some(1), 2) => Some(&coverage.upgraded),
            (Some(2), 1) => Some(&coverage.v1_into_v2),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    let next = match (status, merged) {
        (MergeStatus::Applied, Some(merged)) if merged.is_expired(op.now_ms) => {
            // The one Redis-only rule: a dead record is deleted.
            coverage.deleted.fetch_add(1, Ordering::Relaxed);
            None
        }
        (MergeStatus::Applied, Some(merged)) => {
            let mut entries = stored
                .into_iter()
                .flat_map(|s| s.fields.values())
                .chain(op.delta.fields.values());
            let past_until = entries.any(|e| e.until_ms.is_some_and(|u| u < op.now_ms));
            if merged.tombstone.is_none() && past_until {
                coverage.pruned.fetch_add(1, Ordering::Relaxed);
            }
            Some(merged)
        }
        (_, _) => stored.cloned(),
    };
    let counter = match status {
        MergeStatus::Applied => &coverage.applied,
        MergeStatus::Gone => &coverage.gone,
        MergeStatus::Exists => &coverage.exists,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    (status, held, next)
}

fn count_ties(stored: Option<&Record>, delta: &Record, coverage: &Coverage) {
    let Some(stored) = stored else { return };
    for (name, entry) in &delta.fields {
        if let Some(mine) = stored.fields.get(name) {
            if mine.stamp == entry.stamp && mine != entry {
                coverage.ties.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs one key's history on Redis and on the model, comparing after each op.
async fn run_key(replicas: &Replicas, key: String, ops: Vec<Op>, coverage: &Coverage, seed: u64) {
    let mut model: Option<Record> = None;
    let epoch = replicas.v2.ping().await.expect("ping");
    for (index, op) in ops.iter().enumerate() {
        let context = || format!("seed {seed}, key {key}, op {index}: {op:?}");
        let (status, held, next) = model_step(model.as_ref(), op, coverage);
        let replica = replicas.writing(op.delta.format);
        let reply = replica
            .merge(&key, &op.delta, op.mode, op.now_ms)
            .await
            .unwrap_or_else(|e| panic!("merge failed: {e}; {}", context()));
        assert_eq!(reply.status, status, "status; {}", context());
        assert_eq!(reply.held_max, held, "held_max; {}", context());
        assert_eq!(reply.epoch, epoch, "epoch changed; {}", context());
        let read = replica
            .read(&key)
            .await
            .unwrap_or_else(|e| panic!("read failed: {e}; {}", context()));
        compare_records(read.record.as_ref(), next.as_ref(), &context);
        model = next;
    }
}

/// Two replicas on the one Redis (one key prefix, one epoch), one per
/// stored format they write.
struct Replicas {
    v1: RedisReplica,
    v2: RedisReplica,
}

impl Replicas {
    /// The replica that writes stored format `format`.
    fn writing(&self, format: u8) -> &RedisReplica {
        match format {
            1 => &self.v1,
            _ => &self.v2,
        }
    }
}

/// Field by field first (a clearer message), then the whole record.
fn compare_records(redis: Option<&Record>, model: Option<&Record>, context: &dyn Fn() -> String) {
    let (Some(redis), Some(model)) = (redis, model) else {
        assert_eq!(redis, model, "presence; {}", context());
        return;
    };
    let names: BTreeSet<&String> = redis.fields.keys().chain(model.fields.keys()).collect();
    for name in names {
        assert_eq!(
            redis.fields.get(name),
            model.fields.get(name),
            "field {name:?}; {}",
            context()
        );
    }
    assert_eq!(redis, model, "record metadata; {}", context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_merge_equals_rust_merge_on_random_histories() {
    let seed = std::env::var("QS_DIFF_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("differential seed: {seed} (replay with QS_DIFF_SEED={seed})");

    let nodes = support::RedisNodes::start(1).await;
    let mut config = nodes.node(0).replica_config();
    config.request_timeout = std::time::Duration::from_secs(5); // a loaded CI box
    config.stored_format = StoredFormat::V2;
    let replica = RedisReplica::connect(config.clone())
        .await
        .expect("connect");
    replica.wipe().await.expect("wipe");
    config.stored_format = StoredFormat::V1;
    let replicas = Replicas {
        v1: RedisReplica::connect(config).await.expect("connect"),
        v2: replica,
    };
    let replica = &replicas.v2;

    let mut generator = Generator {
        rng: ChaCha8Rng::seed_from_u64(seed),
        untils: true,
        v1_share: 0.0,
        base_ms: wall_clock_ms(),
    };
    // Each of KEY_COUNT streams moves to a fresh key every 20..60 operations:
    // a tombstoned key would otherwise answer Gone for the rest of the run.
    let mut histories: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for stream in 0..KEY_COUNT {
        generator.untils = stream % 2 == 0;

        let mut left = OPS_PER_KEY;
        let mut segment = 0;
        while left > 0 {
            // Format 1 only, format 2 only, or both (mostly format 1 on
            // even segments, so that records written in format 1 get
            // upgraded: a rolling deploy).
            generator.v1_share = [1.0, 0.0, [0.8, 0.3][segment % 2]][stream % 3];
            let len = generator.rng.random_range(20..60).min(left);
            let ops = (0..len).map(|_| generator.op()).collect();
            histories.insert(format!("d:{{k{stream}-{segment}}}"), ops);
            left -= len;
            segment += 1;
        }
    }

    // Keys are independent: their histories run concurrently (fred pipelines
    // them), each one in order.
    let coverage = Coverage::default();
    let runs = histories
        .iter()
        .map(|(key, ops)| run_key(&replicas, key.clone(), ops.clone(), &coverage, seed));
    futures::future::join_all(runs).await;

    let mut scanned = BTreeSet::new();
    let mut cursor = "0".to_owned();
    loop {
        let page = replica.scan(&cursor, 100).await.expect("scan");
        scanned.extend(page.keys);
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    let mut expected = BTreeSet::new();
    let prefix = quorum_sessions::replica::redis::DEFAULT_KEY_PREFIX;
    for key in histories.keys() {
        let Some(record) = replica.read(key).await.expect("read").record else {
            continue;
        };
        expected.insert(key.clone());
        // The raw hash: format 1 without a summary, format 2 with `m:h`.
        let raw: std::collections::HashMap<String, Vec<u8>> = replica
            .client()
            .hgetall(format!("{prefix}{key}"))
            .await
            .expect("HGETALL");
        let has = |name: &str| raw.contains_key(name);
        assert_eq!(
            raw["m:v"],
            record.format.to_string().into_bytes(),
            "seed {seed}, key {key}"
        );
        match record.format {
            1 => assert!(
                !has("m:h") && !has("m:u"),
                "seed {seed}, key {key}: a format-1 hash holds a summary"
            ),
            _ => assert!(
                has("m:h"),
                "seed {seed}, key {key}: a format-2 hash without m:h"
            ),
        }
    }
    assert_eq!(
        scanned, expected,
        "seed {seed}: scan lists exactly the stored keys"
    );

    let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let (applied, gone, exists) = (
        count(&coverage.applied),
        count(&coverage.gone),
        count(&coverage.exists),
    );
    let (ties, pruned, deleted) = (
        count(&coverage.ties),
        count(&coverage.pruned),
        count(&coverage.deleted),
    );
    let (kept_v1, upgraded, v1_into_v2) = (
        count(&coverage.kept_v1),
        count(&coverage.upgraded),
        count(&coverage.v1_into_v2),
    );
    eprintln!("differential: formats: {kept_v1} merges stayed format 1, {upgraded} upgraded 1 -> 2, {v1_into_v2} format-1 deltas into format 2");
    assert!(
        kept_v1 >= 1_000 && upgraded >= 25 && v1_into_v2 >= 200,
        "seed {seed}: too few format cases"
    );
    eprintln!(
        "differential: {} ops; applied {applied}, gone {gone}, exists {exists}, ties {ties}, pruned {pruned}, deleted {deleted}",
        applied + gone + exists
    );
    assert!(applied + gone + exists >= 10_000);
    assert!(
        gone >= 50 && exists >= 50,
        "seed {seed}: too few Gone/Exists cases"
    );
    assert!(
        ties >= 100,
        "seed {seed}: too few equal-stamp ties ({ties})"
    );
    assert!(
        pruned >= 50 && deleted >= 20,
        "seed {seed}: too few prunes/deletions"
    );
    // Both ways through the script ran: HMGET only on the fast path (which
    // reads the fields a delta names; a format-1 record, without summary,
    // goes on to the whole hash after it), HGETALL inside scripts only on
    // the whole-hash path (reads add to it: compare with the merges).
    let stats: String = replica
        .client()
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    let calls = |command: &str| -> usize {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let (fast, whole) = (calls("hmget"), calls("hgetall"));
    eprintln!("differential: {fast} merges on the fast path; {whole} HGETALL (whole-hash merges and reads)");
    assert!(
        fast >= 2_000,
        "seed {seed}: too few fast-path merges ({fast})"
    );
    // The streams run concurrently, so merges wait while calls are in
    // flight and leave together: many records per call, fewer script calls
    // than merges (EVALSHA also counts pings: 1 per key).
    let merges = (applied + gone + exists) as u64;
    let (one, two) = (
        replicas.v1.merge_call_stats(),
        replicas.v2.merge_call_stats(),
    );
    let batching = quorum_sessions::replica::redis::MergeCallStats {
        calls: one.calls + two.calls,
        records: one.records + two.records,
        multi_record_calls: one.multi_record_calls + two.multi_record_calls,
        largest_call: one.largest_call.max(two.largest_call),
        ..two
    };
    let script_calls = calls("evalsha") as u64;
    eprintln!("differential: {batching:?}; {script_calls} EVALSHA");
    assert_eq!(batching.records, merges, "seed {seed}: every merge counted");
    assert!(
        batching.multi_record_calls >= 100 && batching.largest_call >= 4,
        "seed {seed}: too few multi-record merge calls: {batching:?}"
    );
    assert!(
        script_calls < merges,
        "seed {seed}: {script_calls} EVALSHA for {merges} merges"
    );
}
