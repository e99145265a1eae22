//! The stored form of a [`Record`] as a flat list of `(name, value)` pairs —
//! a Redis hash.
//!
//! **Internals**: public only with the `internals` feature, for the
//! simulator and the tests; not covered by semver.
//!
//! | hash field | content |
//! | --- | --- |
//! | `f:<name>` | [`FieldEntry::encode`]: `stamp ‖ kind ‖ until? ‖ bytes` |
//! | `m:v` | format version, decimal (`1`) |
//! | `m:e` | expiry, 12 hex digits (ms) |
//! | `m:c` | lifetime cap, 12 hex digits (ms) |
//! | `m:t` | tombstone stamp (absent when live) |
//! | `m:o` | origin (creation) stamp (absent when unknown) |
//! | `m:p` | `1` when partial (absent when full) |
//!
//! Every fixed-width field compares as text exactly as it compares as a
//! number, which is what lets the Lua merge work on strings only.

use crate::record::{check_field_name, push_ms, push_stamp, FieldEntry, Record, FORMAT_VERSION};
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
pub fn visit_pairs(record: &Record, mut visit: impl FnMut(&[u8], &[u8])) {
    let mut name = Vec::with_capacity(64);
    let mut value = Vec::with_capacity(256);
    let format = record.format.to_string();
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
                record.format = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or("bad format version")?;
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
    if record.format != FORMAT_VERSION {
        return Err(format!("unknown format version {}", record.format));
    }
    // The rest of Record::check_shape (the names were checked one by one).
    if record.tombstone.is_some() && !record.fields.is_empty() {
        return Err("a tombstone holds fields".into());
    }
    debug_assert!(record.check_shape().is_ok());
    Ok(Some(record))
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
            ("m:v", "2"),
            ("m:e", "000000000001"),
            ("m:c", "000000000001")
        ])
        .is_err());
        assert_eq!(decode_pairs(Vec::<(String, String)>::new()), Ok(None));
    }
}
