//! A readable trace of one run's events (the `replay` command).
//!
//! The run records its events here: cluster events (faults starting and
//! ending, restarts, the heal, convergence), client operations invoked, and
//! client operations answered (with the record a read returned, printed
//! compactly, and the violation the checker flagged on it, if any).
//!
//! Two ways to print them:
//!
//! - **summary** (the default): every cluster event and, around each one,
//!   the operations on the session that fared worst just after it (see
//!   [`Trace::lines`]); when the checker flagged violations, the flagged
//!   operations (the first [`VIOLATIONS_SHOWN`]) and the operations before
//!   them on the same session instead.
//!   At most `max_events` lines ([`SUMMARY_LINES_MAX`] from the command
//!   line), then one line that says how many events were left out and that
//!   `--all` prints every one.
//! - **all**: every event in order (invocations too), at most `max_events`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use quorum_sessions::{Record, Stamp};

/// Most trace lines the default (summary) replay prints.
pub const SUMMARY_LINES_MAX: usize = 120;
/// Operations shown around each cluster event in the summary.
pub const OPS_PER_EVENT: usize = 3;
/// The window around a cluster event in which its operations are chosen, ms.
pub const EVENT_WINDOW_MS: u64 = 250;
/// Earlier operations on the same session shown before a flagged one.
pub const VIOLATION_CONTEXT: usize = 4;
/// Flagged operations shown (the first ones), each with its context.
pub const VIOLATIONS_SHOWN: usize = 10;
/// An operation this slow (µs) counts as hurt by a fault.
const SLOW_US: u64 = 10_000;
/// Fields of a record printed before `+N more`.
const RECORD_FIELDS_MAX: usize = 5;
/// Characters of a text value printed before `..`.
pub const VALUE_CHARS_MAX: usize = 8;

/// What to keep.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// Every event in order (`--all`) instead of the summary.
    pub all: bool,
    /// Lines printed at most; later ones are counted, not printed.
    pub max_events: usize,
    /// Keep only events about this key (e.g. `s:{0000042}`); cluster events
    /// are always kept. The summary then shows every answer on the key.
    pub key: Option<String>,
    /// Skip the events before this virtual time, ms.
    pub from_ms: u64,
}

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// About the whole cluster: a fault, a restart, the heal, convergence.
    Cluster,
    /// A client operation was sent.
    Invoked,
    /// A client operation was answered.
    Answered {
        /// It failed (write quorum not reached, read unavailable).
        failed: bool,
        /// Virtual time it took, µs.
        latency_us: u64,
        /// The violation the checker counted on it, if any.
        violation: Option<&'static str>,
    },
}

#[derive(Clone, Debug)]
struct Event {
    at_us: u64,
    key: Option<String>,
    kind: EventKind,
    text: String,
}

/// The trace being written.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    options: TraceOptions,
    events: Vec<Event>,
    /// Events that matched in `all` mode but did not fit.
    dropped: u64,
    /// Sessions the checker flagged at the end (lost writes, diverged keys).
    flagged_keys: BTreeSet<String>,
}

impl Trace {
    /// An empty trace.
    pub fn new(options: TraceOptions) -> Trace {
        Trace {
            options,
            ..Trace::default()
        }
    }

    /// True when an event of `kind` about `key` (`None`: about the whole
    /// cluster) at `now_us` is wanted (in `all` mode, counts it as left out
    /// when the trace is full). Invocations are not kept for the summary:
    /// an answer line says what was asked.
    pub fn wants(&mut self, key: Option<&str>, kind: EventKind, now_us: u64) -> bool {
        if now_us / 1000 < self.options.from_ms {
            return false;
        }
        if let (Some(wanted), Some(key)) = (&self.options.key, key) {
            if wanted != key {
                return false;
            }
        }
        if !self.options.all {
            return kind != EventKind::Invoked;
        }
        if self.events.len() >= self.options.max_events {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// Records an event at virtual time `now_us`.
    pub fn push(&mut self, now_us: u64, key: Option<&str>, kind: EventKind, text: String) {
        self.events.push(Event {
            at_us: now_us,
            key: key.map(str::to_owned),
            kind,
            text,
        });
    }

    /// Marks sessions the checker flagged after the run (lost writes,
    /// diverged keys): the summary shows their last operations.
    pub fn flag_keys<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>) {
        self.flagged_keys
            .extend(keys.into_iter().map(str::to_owned));
    }

    /// True when some event carries a violation or a session was flagged.
    pub fn has_violations(&self) -> bool {
        !self.flagged_keys.is_empty()
            || self.events.iter().any(|e| {
                matches!(
                    e.kind,
                    EventKind::Answered {
                        violation: Some(_),
                        ..
                    }
                )
            })
    }

    /// The lines to print, stamped with the virtual time.
    pub fn lines(&self) -> Vec<String> {
        let shown: Vec<usize> = if self.options.all {
            (0..self.events.len()).collect()
        } else {
            self.summary()
                .into_iter()
                .take(self.options.max_events)
                .collect()
        };
        shown.into_iter().map(|i| self.render(i)).collect()
    }

    /// Events recorded or matched but not printed.
    pub fn omitted(&self) -> u64 {
        if self.options.all {
            return self.dropped;
        }
        let shown = self.summary().len().min(self.options.max_events);
        (self.events.len() - shown) as u64
    }

    fn render(&self, index: usize) -> String {
        let event = &self.events[index];
        let (mark, suffix) = match event.kind {
            EventKind::Cluster => ("**", String::new()),
            EventKind::Answered {
                violation: Some(violation),
                ..
            } => ("!!", format!("   <- {violation}")),
            _ => ("  ", String::new()),
        };
        format!(
            "{:>7}.{:03} ms {mark} {}{suffix}",
            event.at_us / 1000,
            event.at_us % 1000,
            event.text
        )
    }

    /// The events the summary shows, in order.
    fn summary(&self) -> Vec<usize> {
        let mut answers_by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut selected = BTreeSet::new();
        for (index, event) in self.events.iter().enumerate() {
            match (&event.kind, &event.key) {
                (EventKind::Cluster, _) => {
                    selected.insert(index);
                }
                (EventKind::Answered { .. }, Some(key)) => {
                    answers_by_key.entry(key).or_default().push(index);
                }
                _ => {}
            }
        }
        if self.options.key.is_some() {
            // One session's trace is short: all of it.
            selected.extend(answers_by_key.values().flatten());
        } else if self.has_violations() {
            let flagged = self.events.iter().enumerate().filter(|(_, e)| {
                matches!(
                    e.kind,
                    EventKind::Answered {
                        violation: Some(_),
                        ..
                    }
                )
            });
            for (index, event) in flagged.take(VIOLATIONS_SHOWN) {
                let answers = &answers_by_key[event.key.as_deref().expect("answers have keys")];
                let at = answers.partition_point(|&i| i < index);
                let from = at.saturating_sub(VIOLATION_CONTEXT);
                selected.extend(&answers[from..=at]);
            }
            for key in &self.flagged_keys {
                if let Some(answers) = answers_by_key.get(key.as_str()) {
                    let from = answers.len().saturating_sub(VIOLATION_CONTEXT);
                    selected.extend(&answers[from..]);
                }
            }
        } else {
            let clusters: Vec<usize> = selected.iter().copied().collect();
            for cluster in clusters {
                selected.extend(self.around(cluster, &answers_by_key));
            }
        }
        selected.into_iter().collect()
    }

    /// The answers shown around cluster event `cluster`: of the sessions
    /// answered within [`EVENT_WINDOW_MS`] after it, the one whose
    /// operation fared worst (failed, then slow, then the first); its last
    /// answer before the event and its first answers after, at most
    /// [`OPS_PER_EVENT`] in all.
    fn around(&self, cluster: usize, answers_by_key: &HashMap<&str, Vec<usize>>) -> Vec<usize> {
        let at_us = self.events[cluster].at_us;
        let window_us = EVENT_WINDOW_MS * 1000;
        let mut worst: Option<(u8, &str)> = None;
        for event in self.events[cluster + 1..]
            .iter()
            .take_while(|e| e.at_us < at_us + window_us)
        {
            let (
                EventKind::Answered {
                    failed, latency_us, ..
                },
                Some(key),
            ) = (event.kind, &event.key)
            else {
                continue;
            };
            let hurt = if failed {
                2
            } else {
                u8::from(latency_us >= SLOW_US)
            };
            if worst.is_none_or(|(best, _)| hurt > best) {
                worst = Some((hurt, key));
            }
        }
        let Some((_, key)) = worst else {
            return Vec::new();
        };
        let answers = &answers_by_key[key];
        let first_after = answers.partition_point(|&i| i < cluster);
        let before = answers[..first_after]
            .last()
            .filter(|&&i| self.events[i].at_us + window_us >= at_us);
        let after = answers[first_after..]
            .iter()
            .take_while(|&&i| self.events[i].at_us < at_us + window_us);
        before
            .into_iter()
            .chain(after)
            .take(OPS_PER_EVENT)
            .copied()
            .collect()
    }
}

/// A stamp in a few characters: the last five hex digits of its physical
/// time (ms), `.logical` when not zero, `/` and the last two hex digits of
/// its writer: `3f2a1/9c`, `3f2a1.2/9c`.
pub fn short_stamp(stamp: Stamp) -> String {
    let mut text = format!("{:05x}", stamp.physical_ms & 0xf_ffff);
    if stamp.logical != 0 {
        write!(text, ".{:x}", stamp.logical).expect("to a String");
    }
    write!(text, "/{:02x}", stamp.writer & 0xff).expect("to a String");
    text
}

/// A field value in a few characters: printable text cut after
/// [`VALUE_CHARS_MAX`] characters (`..`), the simulator's 8-byte counters as
/// `#n`, other bytes as the hex of the first four (`..` if longer).
pub fn short_value(value: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(value) {
        if !text.is_empty() && !text.chars().any(char::is_control) {
            let mut chars = text.chars();
            let head: String = chars.by_ref().take(VALUE_CHARS_MAX).collect();
            return if chars.next().is_some() {
                format!("{head}..")
            } else {
                head
            };
        }
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(value) {
        return format!("#{}", u64::from_be_bytes(bytes));
    }
    let mut text: String = value.iter().take(4).map(|b| format!("{b:02x}")).collect();
    if value.len() > 4 {
        text.push_str("..");
    }
    text
}

/// A signed duration in ms, readably: `+30s`, `-1.5s`, `+250ms`, `+2h`.
pub fn short_duration(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let ms = ms.unsigned_abs();
    let body = if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else if ms < 120_000 {
        format!("{}s", ms / 1_000)
    } else if ms < 7_200_000 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    };
    format!("{sign}{body}")
}

/// A record on one line: `{user=#12@3f2a1/9c, csrf=#13@3f2a1/9c}
/// exp=+30s`, the expiry (the effective one: the earlier of expiry and cap)
/// relative to `clock_ms`, the reader's clock. A removed field shows as
/// `name=-`, a deleted record as `deleted@stamp`, a copy that may lack
/// fields is marked `partial`.
pub fn compact_record(record: &Record, clock_ms: u64) -> String {
    let mut text = String::new();
    if let Some(stamp) = record.tombstone {
        write!(text, "deleted@{} ", short_stamp(stamp)).expect("to a String");
    }
    text.push('{');
    for (at, (name, entry)) in record.fields.iter().enumerate() {
        if at == RECORD_FIELDS_MAX {
            write!(text, ", +{} more", record.fields.len() - at).expect("to a String");
            break;
        }
        if at > 0 {
            text.push_str(", ");
        }
        let value = entry.value.as_deref().map_or("-".to_owned(), short_value);
        write!(text, "{name}={value}@{}", short_stamp(entry.stamp)).expect("to a String");
    }
    text.push('}');
    let expiry = record.effective_expiry_ms() as i64 - clock_ms as i64;
    write!(text, " exp={}", short_duration(expiry)).expect("to a String");
    if record.partial {
        text.push_str(" partial");
    }
    text
}

/// A virtual duration in µs: `2 ms`, `2.350 ms`.
pub fn short_latency(us: u64) -> String {
    if us.is_multiple_of(1000) {
        format!("{} ms", us / 1000)
    } else {
        format!("{}.{:03} ms", us / 1000, us % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorum_sessions::FieldEntry;

    fn answer(failed: bool, latency_us: u64, violation: Option<&'static str>) -> EventKind {
        EventKind::Answered {
            failed,
            latency_us,
            violation,
        }
    }

    /// `all` mode keeps every event in order up to `max_events`, counts the
    /// rest, and honours `--key` and `--from-ms`.
    #[test]
    fn the_full_trace_is_bounded_and_filtered() {
        let mut trace = Trace::new(TraceOptions {
            all: true,
            max_events: 2,
            key: Some("k".into()),
            from_ms: 1,
        });
        assert!(
            !trace.wants(Some("k"), EventKind::Invoked, 500),
            "before from_ms"
        );
        assert!(!trace.wants(Some("other"), EventKind::Invoked, 2_000));
        for at in [2_000, 3_000, 4_000] {
            if trace.wants(None, EventKind::Cluster, at) {
                trace.push(at, None, EventKind::Cluster, "event".into());
            }
        }
        let lines = trace.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(trace.omitted(), 1);
        assert_eq!(lines[0], "      2.000 ms ** event");
    }

    /// A trace with many ordinary operations: the summary keeps every
    /// cluster event and, around each, at most OPS_PER_EVENT operations on
    /// the session that fared worst (here the one whose read failed);
    /// everything else is counted as left out.
    #[test]
    fn the_summary_shows_faults_and_the_worst_operations_around_them() {
        let mut trace = Trace::new(TraceOptions {
            max_events: SUMMARY_LINES_MAX,
            ..TraceOptions::default()
        });
        assert!(
            !trace.wants(Some("a"), EventKind::Invoked, 0),
            "no invocations"
        );
        let mut at = 0;
        for round in 0..1_000 {
            at += 100;
            let key = format!("s{}", round % 7);
            trace.push(
                at,
                Some(&key),
                answer(false, 2_000, None),
                format!("ok {key}"),
            );
            if round == 500 {
                trace.push(at, None, EventKind::Cluster, "fault starts".into());
                trace.push(
                    at + 50,
                    Some("hurt"),
                    answer(true, 2_000, None),
                    "hurt".into(),
                );
                trace.push(
                    at + 60,
                    Some("hurt"),
                    answer(false, 1_000, None),
                    "hurt 2".into(),
                );
            }
        }
        let lines = trace.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].ends_with("** fault starts"));
        assert!(lines[1].ends_with("hurt"));
        assert!(lines[2].ends_with("hurt 2"));
        assert_eq!(trace.omitted(), 1_000);
    }

    /// When the checker flagged an operation, the summary shows it (marked,
    /// with the violation's name) and the operations before it on the same
    /// session, not the operations around faults.
    #[test]
    fn the_summary_shows_violations_with_their_context() {
        let mut trace = Trace::new(TraceOptions {
            max_events: SUMMARY_LINES_MAX,
            ..TraceOptions::default()
        });
        trace.push(0, None, EventKind::Cluster, "fault".into());
        trace.push(10, Some("other"), answer(true, 0, None), "other".into());
        for at in 1..=10 {
            trace.push(
                at * 1_000,
                Some("k"),
                answer(false, 0, None),
                format!("k{at}"),
            );
        }
        trace.push(
            11_000,
            Some("k"),
            answer(false, 0, Some("stale read")),
            "bad".into(),
        );
        let lines = trace.lines();
        assert_eq!(lines.len(), 2 + VIOLATION_CONTEXT, "{lines:#?}");
        assert!(lines[1].ends_with("k7"), "{lines:#?}");
        assert!(lines.last().unwrap().contains("!! bad   <- stale read"));
    }

    /// Of many flagged operations, the summary shows the first
    /// VIOLATIONS_SHOWN (each with its context).
    #[test]
    fn the_summary_shows_the_first_violations() {
        let mut trace = Trace::new(TraceOptions {
            max_events: SUMMARY_LINES_MAX,
            ..TraceOptions::default()
        });
        for at in 0..100 {
            let key = format!("k{at}");
            trace.push(
                at,
                Some(&key),
                answer(false, 0, Some("stale read")),
                key.clone(),
            );
        }
        let lines = trace.lines();
        assert_eq!(lines.len(), VIOLATIONS_SHOWN);
        assert!(lines
            .last()
            .unwrap()
            .contains(&format!("k{}", VIOLATIONS_SHOWN - 1)));
    }

    /// Sessions the final check flagged (lost writes, diverged keys) show
    /// their last VIOLATION_CONTEXT operations, though no operation carries
    /// the violation.
    #[test]
    fn the_summary_shows_the_last_operations_of_flagged_sessions() {
        let mut trace = Trace::new(TraceOptions {
            max_events: SUMMARY_LINES_MAX,
            ..TraceOptions::default()
        });
        for at in 0..20 {
            trace.push(at, Some("lost"), answer(false, 0, None), format!("op{at}"));
            trace.push(at, Some("fine"), answer(true, 0, None), "fine".into());
        }
        assert!(!trace.has_violations());
        trace.flag_keys(["lost"]);
        assert!(trace.has_violations());
        let lines = trace.lines();
        assert_eq!(lines.len(), VIOLATION_CONTEXT, "{lines:#?}");
        assert!(lines[VIOLATION_CONTEXT - 1].ends_with("op19"));
    }

    /// The summary never prints more than `max_events` lines, and says how
    /// many events it left out.
    #[test]
    fn the_summary_is_bounded() {
        let mut trace = Trace::new(TraceOptions {
            max_events: 10,
            ..TraceOptions::default()
        });
        for at in 0..50 {
            trace.push(at * 1_000_000, None, EventKind::Cluster, "fault".into());
        }
        assert_eq!(trace.lines().len(), 10);
        assert_eq!(trace.omitted(), 40);
    }

    /// Stamps, values and durations print in a few characters, and a record
    /// on one short line (the old trace printed a record's Debug form,
    /// about a thousand characters).
    #[test]
    fn records_print_compactly() {
        let stamp = Stamp::new(1_700_000_123_456, 0, 0xabc_def);
        assert_eq!(short_stamp(stamp), "74a40/ef");
        assert_eq!(short_stamp(Stamp::new(0x12_3456, 3, 7)), "23456.3/07");
        assert_eq!(short_value(b"alice"), "alice");
        assert_eq!(short_value(b"alice@example.com"), "alice@ex..");
        assert_eq!(short_value(&42u64.to_be_bytes()), "#42");
        assert_eq!(short_value(&[0, 1, 2, 3, 4]), "00010203..");
        assert_eq!(short_duration(30_000), "+30s");
        assert_eq!(short_duration(-1_500), "-1.5s");
        assert_eq!(short_duration(250), "+250ms");
        assert_eq!(short_duration(1_800_000), "+30m");
        assert_eq!(short_latency(2_000), "2 ms");
        assert_eq!(short_latency(2_350), "2.350 ms");

        let mut record = Record::new(1_030_000, 5_000_000);
        record
            .fields
            .insert("user".into(), FieldEntry::value(stamp, b"alice".to_vec()));
        record.fields.insert(
            "cart:1".into(),
            FieldEntry::value(stamp, 2u64.to_be_bytes().to_vec()),
        );
        assert_eq!(
            compact_record(&record, 1_000_000),
            "{cart:1=#2@74a40/ef, user=alice@74a40/ef} exp=+30s"
        );
        record.partial = true;
        record.tombstone = Some(stamp);
        assert!(compact_record(&record, 1_000_000).starts_with("deleted@74a40/ef {"));
        assert!(compact_record(&record, 1_000_000).ends_with(" partial"));
    }
}
