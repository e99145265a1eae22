//! The stored form of a [`Record`] as a flat list of `(name, value)` pairs —
//! a Redis hash.
//!
//! **Internals**: public only with the `internals` feature, for the
//! simulator and the tests; not covered by semver.
//!
//! | hash field | content |
//! | --- | --- |
//! | `f:<name>` | [`FieldEntry::encode`]: `stamp ‖ kind ‖ until? ‖ bytes` |
//! | `m:v` | format version, decimal (`1` or `2`, see [`StoredFormat`](crate::record::StoredFormat)) |
//! | `m:e` | expiry, 12 hex digits (ms) |
//! | `m:c` | lifetime cap, 12 hex digits (ms) |
//! | `m:t` | tombstone stamp (absent when live) |
//! | `m:o` | origin (creation) stamp (absent when unknown) |
//! | `m:p` | `1` when partial (absent when full) |
//!
//! A Redis replica stores two more summaries with format 2 (`m:h`, `m:u`)
//! and the write epoch (`m:ep`); they are not part of the record and not
//! made here.
//!
//! Every fixed-width field compares as text exactly as it compares as a
//! number, which is what lets the Lua merge work on strings only.

use crate::record::{check_field_name, check_format, push_ms, push_stamp, FieldEntry, Record};
use crate::stamp::{decode_ms, Stamp};

/// Prefix of the hash fields that hold record fields.
pub const FIELD_PREFIX: &str = "f:";
/// Hash field of the format version.
pub const META_FORMAT: &str = "m:v";
/// Hash field of the expiry.
pub const META_EXPIRY: &str = "m:e";
/// Hash field of the lifetime cap.
pub const META_CAP: &str = "m:c";
/// Hash field of the tombstone stamp.
pub const META_TOMBSTONE: &str = "m:t";
/// Hash field of the origin stamp.
pub const META_ORIGIN: &str = "m:o";
/// Hash field of the partial flag.
pub const META_PARTIAL: &str = "m:p";

/// Encodes a record as hash pairs (metadata first, then fields in name order).
pub fn encode_pairs(record: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs = Vec::with_capacity(pair_count(record));
    visit_pairs(record, |name, value| {
        pairs.push((name.to_vec(), value.to_vec()))
    });
    pairs
}

/// How many pairs [`encode_pairs`] makes of `record`.
pub fn pair_count(record: &Record) -> usize {
    3 + usize::from(record.tombstone.is_some())
        + usize::from(record.origin.is_some())
        + usize::from(record.partial)
        + record.fields.len()
}

/// Calls `visit` with each pair of [`encode_pairs`], in the same order,
/// built in one reused buffer (no allocation per pair).
pub fn visit_pairs(record: &Record, visit: impl FnMut(&[u8], &[u8])) {
    visit_pairs_as(record, record.format, visit);
}

/// As [`visit_pairs`], with `format` as the format version (`m:v`) instead
/// of the record's: a Redis replica writes the version of its setting.
pub fn visit_pairs_as(record: &Record, format: u8, mut visit: impl FnMut(&[u8], &[u8])) {
    let mut name = Vec::with_capacity(64);
    let mut value = Vec::with_capacity(256);
    let format = format.to_string();
    visit(META_FORMAT.as_bytes(), format.as_bytes());
    push_ms(&mut value, record.expiry_ms);
    visit(META_EXPIRY.as_bytes(), &value);
    value.clear();
    push_ms(&mut value, record.cap_ms);
    visit(META_CAP.as_bytes(), &value);
    if let Some(tombstone) = record.tombstone {
        value.clear();
        push_stamp(&mut value, tombstone);
        visit(META_TOMBSTONE.as_bytes(), &value);
    }
    if let Some(origin) = record.origin {
        value.clear();
        push_stamp(&mut value, origin);
        visit(META_ORIGIN.as_bytes(), &value);
    }
    if record.partial {
        visit(META_PARTIAL.as_bytes(), b"1");
    }
    for (field, entry) in &record.fields {
        name.clear();
        name.extend_from_slice(FIELD_PREFIX.as_bytes());
        name.extend_from_slice(field.as_bytes());
        value.clear();
        entry.encode_into(&mut value);
        visit(&name, &value);
    }
}

/// Decodes hash pairs. An empty list is "no record" (`Ok(None)`).
///
/// # Errors
///
/// A description of the first malformed item: unknown hash field, bad stamp,
/// missing metadata, unknown format version, fields on a tombstone.
pub fn decode_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Option<Record>, String>
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut record = Record::new(0, 0);
    let (mut seen_any, mut seen_format, mut seen_expiry, mut seen_cap) =
        (false, false, false, false);
    for (name, value) in pairs {
        seen_any = true;
        let (name, value) = (name.as_ref(), value.as_ref());
        match name {
            b"m:v" => {
                seen_format = true;
                record.format = parse_format(value)?;
            }
            b"m:e" => {
                seen_expiry = true;
                record.expiry_ms = decode_ms(value).ok_or("bad expiry")?;
            }
            b"m:c" => {
                seen_cap = true;
                record.cap_ms = decode_ms(value).ok_or("bad lifetime cap")?;
            }
            b"m:t" => record.tombstone = Some(Stamp::decode(value).ok_or("bad tombstone")?),
            b"m:o" => record.origin = Some(Stamp::decode(value).ok_or("bad origin")?),
            b"m:p" if value == b"1" => record.partial = true,
            _ => decode_field(&mut record, name, value)?,
        }
    }
    if !seen_any {
        return Ok(None);
    }
    if !(seen_format && seen_expiry && seen_cap) {
        return Err("missing record metadata".into());
    }
    check_format(record.format)?;
    // The rest of Record::check_shape (the names were checked one by one).
    if record.tombstone.is_some() && !record.fields.is_empty() {
        return Err("a tombstone holds fields".into());
    }
    debug_assert!(record.check_shape().is_ok());
    Ok(Some(record))
}

/// A format version as stored: decimal digits without a leading zero, as
/// `merge.lua` reads them (Rust's `parse` would take `+1` and `01`).
fn parse_format(value: &[u8]) -> Result<u8, String> {
    let canonical = matches!(value, [b'1'..=b'9', ..]) && value.iter().all(u8::is_ascii_digit);
    let number = std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok());
    match number {
        Some(version) if canonical => Ok(version),
        _ => Err("bad format version".into()),
    }
}

fn decode_field(record: &mut Record, name: &[u8], value: &[u8]) -> Result<(), String> {
    let field = name
        .strip_prefix(FIELD_PREFIX.as_bytes())
        .ok_or_else(|| format!("unknown hash field {:?}", String::from_utf8_lossy(name)))?;
    let field = std::str::from_utf8(field).map_err(|_| "field name is not UTF-8")?;
    check_field_name(field, usize::MAX)?;
    let entry =
        FieldEntry::decode(value).ok_or_else(|| format!("bad entry for field {field:?}"))?;
    record.fields.insert(field.to_owned(), entry);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record_strategy;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pairs_round_trip(record in record_strategy()) {
            prop_assert_eq!(decode_pairs(encode_pairs(&record)), Ok(Some(record)));
        }
    }

    #[test]
    fn foreign_data_is_refused() {
        assert!(decode_pairs([("name", "alice")]).is_err());
        assert!(
            decode_pairs([("m:v", "1")]).is_err(),
            "missing expiry and cap"
        );
        assert!(decode_pairs([
            ("m:v", "9"),
            ("m:e", "000000000001"),
            ("m:c", "000000000001")
        ])
        .is_err());
        assert_eq!(decode_pairs(Vec::<(String, String)>::new()), Ok(None));
    }

    /// Both formats this build reads decode; a newer one is refused with
    /// the "newer build" text, a malformed one as malformed.
    #[test]
    fn format_versions_one_and_two_are_read_and_newer_ones_refused() {
        let with = |v: &'static str| {
            decode_pairs([("m:v", v), ("m:e", "000000000001"), ("m:c", "000000000001")])
        };
        assert_eq!(with("1").map(|r| r.map(|r| r.format)), Ok(Some(1)));
        assert_eq!(with("2").map(|r| r.map(|r| r.format)), Ok(Some(2)));
        assert_eq!(
            with("3"),
            Err("written by a newer build (format 3); this build reads 1..=2".into())
        );
        for bad in ["0", "01", "+1", "", "x", "256"] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
    }
}
