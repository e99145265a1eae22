//! Pure helpers of `RedisReplica`: error mapping, epoch and cursor parsing,
//! key escaping for logs and `SCAN`, the delta as sent.

use std::time::Duration;

use fred::bytes::{Bytes, BytesMut};
use fred::prelude::ErrorKind;
use rand::Rng;

use crate::codec;
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::Epoch;
use crate::stamp::parse_hex;

/// Characters of a key that logs may show (a key holds a session id).
pub(super) const LOG_KEY_CHARS: usize = 8;

/// The first word of the scripts' error reply to a run id that is not the
/// one of the Redis process running them (see `stale_run_id` in
/// `common.lua`).
pub(super) const STALE_RUN_ID_ERROR: &str = "STALERUN";

/// True when `error` is the scripts' reply to a stale run id.
pub(super) fn is_stale_run_id(error: &fred::error::Error) -> bool {
    error.details().split_whitespace().next() == Some(STALE_RUN_ID_ERROR)
}

/// Maps a fred error: server error replies by their first word, the rest by
/// fred's kind.
pub(super) fn map_error(replica: &str, error: fred::error::Error, after: Duration) -> ReplicaError {
    if super::reconnect::is_dropped_connection(&error) {
        return unavailable(replica, error);
    }
    match error.kind() {
        ErrorKind::Timeout => return ReplicaError::Timeout { after },
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure => {
            return unavailable(replica, error)
        }
        _ => {}
    }
    let first = error.details().split_whitespace().next().unwrap_or("");
    match first {
        "CORRUPT" | "WRONGTYPE" => ReplicaError::Corrupt {
            detail: format!("{replica}: {}", error.details()),
        },
        // STALERUN: a script carried the run id of another Redis process
        // than the one that ran it (a request fred wrote on a new
        // connection), and changed nothing: retry once the run id is learnt
        // again.
        "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK"
        | STALE_RUN_ID_ERROR => unavailable(replica, error),
        // NOWITNESS, NEWPROCESS: a Cluster slot lost what the epoch covers
        // (see `witness.rs`); made again once the epoch is renewed.
        word if super::witness::is_witness_error_word(word) => unavailable(replica, error),
        _ if matches!(error.kind(), ErrorKind::Sentinel | ErrorKind::Cluster) => {
            unavailable(replica, error)
        }
        // OOM, READONLY, NOPERM, BUSY, NOAUTH, script errors (ERR …), …
        _ => ReplicaError::Refused {
            detail: format!("{replica}: {}", error.details()),
            source: Some(Box::new(error)),
        },
    }
}

pub(super) fn unavailable(replica: &str, error: fred::error::Error) -> ReplicaError {
    ReplicaError::Unavailable {
        detail: format!("{replica}: {error}"),
        source: Some(Box::new(error)),
    }
}

/// A fresh random epoch id, 16 hex digits.
pub(super) fn epoch_candidate() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Parses `16 hex ‖ ":c" | ":n"`.
pub(super) fn parse_epoch(text: &[u8]) -> Option<Epoch> {
    if text.len() != 18 {
        return None;
    }
    let id = parse_epoch_id(&text[..16])?;
    let complete = match &text[16..] {
        b":c" => true,
        b":n" => false,
        _ => return None,
    };
    Some(Epoch { id, complete })
}

/// An epoch id alone: 16 lowercase hex digits (as a record's `m:ep` holds
/// it).
pub(super) fn parse_epoch_id(text: &[u8]) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    parse_hex(text)
}

/// Escapes the glob characters of `text` for `SCAN MATCH`.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// At most the first [`LOG_KEY_CHARS`] characters of a key, for logs.
pub(super) fn short_key(key: &str) -> &str {
    match key.char_indices().nth(LOG_KEY_CHARS) {
        Some((end, _)) => &key[..end],
        None => key,
    }
}

/// Splits a scan cursor: `"node:cursor"` (Cluster) or a plain cursor.
pub(super) fn split_cursor(cursor: &str) -> Option<(usize, &str)> {
    match cursor.split_once(':') {
        Some((node, rest)) => Some((node.parse().ok()?, rest)),
        None => Some((0, cursor)),
    }
}

/// The delta as it is sent: a tombstone's fields and partial flag are
/// dropped first (the merge drops them anyway, and the encoded form of a
/// tombstone holds none).
pub(super) fn delta_for_wire(delta: &Record) -> std::borrow::Cow<'_, Record> {
    if delta.tombstone.is_some() && (!delta.fields.is_empty() || delta.partial) {
        let mut clean = delta.clone();
        clean.fields.clear();
        clean.partial = false;
        return std::borrow::Cow::Owned(clean);
    }
    std::borrow::Cow::Borrowed(delta)
}

/// Room for one field's pair beyond its name and value bytes: `f:`, the
/// stamp, the kind and an until.
const PAIR_OVERHEAD: usize = 2 + 32 + 1 + 12;

/// The hash pairs of `delta` as script arguments (name, value, name, …, in
/// the order of [`codec::visit_pairs`]), encoded into one buffer: each is a
/// slice of it, so the clones fred makes of every argument cost a reference
/// count instead of an allocation each (allocation is the client's largest
/// cost of a write otherwise). `format` is the delta's `m:v`: the stored
/// format the replica is set to write, which `merge.lua` takes as the
/// format of the result unless the stored record's is higher.
pub(super) fn delta_args(delta: &Record, format: u8) -> Vec<Bytes> {
    let size = 128
        + delta
            .fields
            .iter()
            .map(|(name, entry)| {
                name.len() + entry.value.as_ref().map_or(0, Vec::len) + PAIR_OVERHEAD
            })
            .sum::<usize>();
    let mut buffer = BytesMut::with_capacity(size);
    let mut ends = Vec::with_capacity(2 * codec::pair_count(delta));
    codec::visit_pairs_as(delta, format, |name, value| {
        buffer.extend_from_slice(name);
        ends.push(buffer.len());
        buffer.extend_from_slice(value);
        ends.push(buffer.len());
    });
    let mut rest = buffer.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let piece = rest.split_to(end - start);
            start = end;
            piece
        })
        .collect()
}

/// The bytes of a string reply frame; `None` for any other frame.
pub(super) fn blob(frame: &fred::types::Resp3Frame) -> Option<&[u8]> {
    match frame {
        fred::types::Resp3Frame::BlobString { data, .. }
        | fred::types::Resp3Frame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::Stamp;

    /// A script's answer to a stale run id is retryable (the request did
    /// not reach the process it was meant for), not a refusal.
    #[test]
    fn a_stale_run_id_reply_is_unavailable() {
        let reply = "STALERUN the run id passed is not the one of this Redis process";
        let error = fred::error::Error::new(ErrorKind::Unknown, reply);
        assert!(is_stale_run_id(&error));
        let mapped = map_error("node", error, Duration::from_millis(100));
        assert!(
            matches!(mapped, ReplicaError::Unavailable { .. }),
            "{mapped:?}"
        );
        let other = fred::error::Error::new(ErrorKind::Unknown, "ERR STALERUN");
        assert!(!is_stale_run_id(&other));
    }

    /// The one-buffer script arguments are exactly the codec's pairs, in
    /// order, for a delta with values, removed fields, untils, a big value
    /// (beyond the first size estimate) and record metadata.
    #[test]
    fn delta_args_are_the_codec_pairs_in_order() {
        let stamp = Stamp::new(1_700_000_000_000, 3, 9);
        let mut delta = Record::new(1_700_000_600_000, 1_700_007_200_000);
        delta.partial = true;
        delta.origin = Some(stamp);
        delta
            .fields
            .insert("a".into(), crate::record::FieldEntry::value(stamp, "x"));
        delta.fields.insert(
            "big".into(),
            crate::record::FieldEntry::value(stamp, vec![7u8; 5000]),
        );
        delta.fields.insert(
            "gone".into(),
            crate::record::FieldEntry {
                stamp,
                value: None,
                until_ms: Some(1_700_000_900_000),
            },
        );
        let expected: Vec<Vec<u8>> = codec::encode_pairs(&delta)
            .into_iter()
            .flat_map(|(name, value)| [name, value])
            .collect();
        let args: Vec<Vec<u8>> = delta_args(&delta, delta.format)
            .iter()
            .map(|b| b.to_vec())
            .collect();
        assert_eq!(args, expected);
        // The setting's format, whatever the record's.
        let as_one = delta_args(&delta, 1);
        assert_eq!((&as_one[0][..], &as_one[1][..]), (&b"m:v"[..], &b"1"[..]));
        assert_eq!(as_one.len(), expected.len());
    }

    #[test]
    fn epochs_parse_only_in_their_exact_form() {
        assert_eq!(
            parse_epoch(b"00000000000000ff:c"),
            Some(Epoch {
                id: 255,
                complete: true
            })
        );
        assert_eq!(
            parse_epoch(b"ffffffffffffffff:n"),
            Some(Epoch {
                id: u64::MAX,
                complete: false
            })
        );
        assert_eq!(parse_epoch(b"00000000000000ff:x"), None);
        assert_eq!(parse_epoch(b"00000000000000FF:c"), None);
        assert_eq!(parse_epoch(b"0000000000000ff:c"), None);
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("qs:"), "qs:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn logs_show_at_most_eight_characters_of_a_key() {
        assert_eq!(short_key("s:{abcdefghijkl}"), "s:{abcde");
        assert_eq!(short_key("s:{é}"), "s:{é}");
        assert_eq!(short_key("ééééééééé"), "éééééééé");
    }

    #[test]
    fn cursors_split_into_node_and_redis_cursor() {
        assert_eq!(split_cursor("0"), Some((0, "0")));
        assert_eq!(split_cursor("1234"), Some((0, "1234")));
        assert_eq!(split_cursor("2:77"), Some((2, "77")));
        assert_eq!(split_cursor("x:77"), None);
    }

    #[test]
    fn a_tombstone_delta_is_sent_without_fields() {
        let mut delta = Record::new(10, 10);
        delta.fields.insert(
            "a".into(),
            crate::FieldEntry::value(Stamp::new(1, 0, 1), "x"),
        );
        delta.partial = true;
        assert!(matches!(
            delta_for_wire(&delta),
            std::borrow::Cow::Borrowed(_)
        ));
        delta.tombstone = Some(Stamp::new(2, 0, 1));
        let wire = delta_for_wire(&delta);
        assert!(wire.fields.is_empty());
        assert!(!wire.partial);
    }

    #[test]
    fn server_errors_map_by_their_first_word() {
        let map = |text: &str| {
            map_error(
                "r",
                fred::error::Error::new(ErrorKind::Unknown, text.to_owned()),
                Duration::from_millis(5),
            )
        };
        assert!(matches!(
            map("CORRUPT bad entry"),
            ReplicaError::Corrupt { .. }
        ));
        assert!(matches!(
            map("WRONGTYPE Operation"),
            ReplicaError::Corrupt { .. }
        ));
        assert!(matches!(
            map("OOM command not allowed"),
            ReplicaError::Refused { .. }
        ));
        assert!(matches!(
            map("READONLY You can't"),
            ReplicaError::Refused { .. }
        ));
        assert!(matches!(
            map("NOPERM this user"),
            ReplicaError::Refused { .. }
        ));
        assert!(matches!(
            map("BUSY Redis is busy"),
            ReplicaError::Refused { .. }
        ));
        assert!(matches!(
            map("ERR user_script:1"),
            ReplicaError::Refused { .. }
        ));
        assert!(matches!(
            map("LOADING Redis is loading"),
            ReplicaError::Unavailable { .. }
        ));
        let io = fred::error::Error::new(ErrorKind::IO, "reset");
        assert!(matches!(
            map_error("r", io, Duration::ZERO),
            ReplicaError::Unavailable { .. }
        ));
        let canceled = fred::error::Error::new(ErrorKind::Canceled, "x");
        assert!(matches!(
            map_error("r", canceled, Duration::ZERO),
            ReplicaError::Unavailable { .. }
        ));
        let timeout = fred::error::Error::new(ErrorKind::Timeout, "x");
        assert!(matches!(
            map_error("r", timeout, Duration::ZERO),
            ReplicaError::Timeout { .. }
        ));
    }
}
