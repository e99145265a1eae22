//! A record as a `DUMP` payload, so that `RESTORE` (without `REPLACE`) can
//! create it where it is absent: an atomic "create if absent" that runs in
//! Redis's own code, with no Lua, used to refill an emptied replica quickly
//! (`RedisReplica::merge_many`).
//!
//! The payload is what `DUMP` returns for a hash: the RDB type `RDB_TYPE_HASH`
//! (4), the number of pairs and each name and value as RDB strings (a length,
//! then the bytes; no integer or LZF encodings, which are optional), then the
//! RDB version (2 bytes, little endian) and the CRC-64 (Jones polynomial,
//! reflected, as Redis's `crc64`, 8 bytes little endian) of all that precedes.
//! RDB version 9 (Redis 5.0) is accepted by every Redis since, which loads
//! such a hash into the same encoding `HSET` would have chosen.

use super::{FIELD_STAMP_SUMMARY, UNTIL_FLAG};
use crate::codec;
use crate::record::{Record, StoredFormat};

/// RDB object type of a hash stored as a plain table.
const RDB_TYPE_HASH: u8 = 4;
/// The RDB version written in the payload (Redis 5.0; Redis accepts any
/// version up to its own).
const RDB_VERSION: u16 = 9;

/// The `DUMP` payload of a hash holding `pairs`. Names must be distinct.
#[cfg(test)]
fn hash_payload<'a>(pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let count = pairs.len();
    let mut out = start(count, count * 160);
    for (name, value) in pairs {
        push_pair(&mut out, name, value);
    }
    finish(out)
}

/// The `DUMP` payload of `record` stored as a hash in `format`: the pairs of
/// [`codec::encode_pairs`] with `m:v` the format's version, and with
/// [`StoredFormat::V2`] the summaries `merge.lua` keeps (`m:h`, `m:u`), so
/// that the first write to a refilled record reads only what it changes.
/// With [`StoredFormat::V1`] no summary: a build that reads only format 1
/// reads the refilled record (the first merge then reads the whole hash).
pub(super) fn record_payload(record: &Record, format: StoredFormat) -> Vec<u8> {
    let summaries = format >= StoredFormat::V2;
    let untils = summaries && record.fields.values().any(|entry| entry.until_ms.is_some());
    let count = codec::pair_count(record) + usize::from(summaries) + usize::from(untils);
    let values: usize = record
        .fields
        .iter()
        .map(|(name, entry)| name.len() + entry.value.as_ref().map_or(0, Vec::len) + 56)
        .sum();
    let mut out = start(count, values + 144);
    codec::visit_pairs_as(record, format.version(), |name, value| {
        push_pair(&mut out, name, value)
    });
    if !summaries {
        return finish(out);
    }
    let largest = record.fields.values().map(|entry| entry.stamp).max();
    match largest {
        Some(stamp) => push_pair(&mut out, FIELD_STAMP_SUMMARY, stamp.encode().as_bytes()),
        None => push_pair(&mut out, FIELD_STAMP_SUMMARY, b"-"),
    }
    if untils {
        push_pair(&mut out, UNTIL_FLAG, b"1");
    }
    finish(out)
}

fn start(count: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 24);
    out.push(RDB_TYPE_HASH);
    push_len(&mut out, count as u64);
    out
}

fn push_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_len(out, name.len() as u64);
    out.extend_from_slice(name);
    push_len(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// RDB length encoding: 6 bits, 14 bits (big endian), or a 32- or 64-bit
/// big-endian number after a marker byte.
fn push_len(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.push(0x40 | (len >> 8) as u8);
        out.push(len as u8);
    } else if len <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Redis's CRC-64: Jones polynomial, reflected in and out, initial value 0,
/// no final xor (check value 0xe9c6d914c4b8d9ca for "123456789"). Eight
/// bytes per step ("slicing by 8", as Redis's own `crcspeed`): a refill
/// computes it over every byte it writes.
fn crc64(bytes: &[u8]) -> u64 {
    const TABLES: [[u64; 256]; 8] = crc64_tables();
    let mut crc = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = crc ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        crc = TABLES[7][(word & 0xff) as usize]
            ^ TABLES[6][((word >> 8) & 0xff) as usize]
            ^ TABLES[5][((word >> 16) & 0xff) as usize]
            ^ TABLES[4][((word >> 24) & 0xff) as usize]
            ^ TABLES[3][((word >> 32) & 0xff) as usize]
            ^ TABLES[2][((word >> 40) & 0xff) as usize]
            ^ TABLES[1][((word >> 48) & 0xff) as usize]
            ^ TABLES[0][(word >> 56) as usize];
    }
    chunks.remainder().iter().fold(crc, |crc, &byte| {
        TABLES[0][((crc ^ u64::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// `tables[0]` is the byte-at-a-time table; `tables[k][b]` is the CRC of
/// byte `b` followed by `k` zero bytes.
const fn crc64_tables() -> [[u64; 256]; 8] {
    // The Jones polynomial 0xad93d23594c935a9, bit-reversed.
    const POLY_REFLECTED: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut tables = [[0u64; 256]; 8];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][index] = crc;
        index += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut index = 0;
        while index < 256 {
            let previous = tables[k - 1][index];
            tables[k][index] = tables[0][(previous & 0xff) as usize] ^ (previous >> 8);
            index += 1;
        }
        k += 1;
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_crc64() {
        // The check value of Redis's src/crc64.c test.
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(crc64(b""), 0);
        // Eight bytes at a time agree with one at a time, at every length.
        let table = crc64_tables()[0];
        let slow = |bytes: &[u8]| {
            bytes.iter().fold(0u64, |crc, &byte| {
                table[((crc ^ u64::from(byte)) & 0xff) as usize] ^ (crc >> 8)
            })
        };
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(crc64(&data[..len]), slow(&data[..len]), "length {len}");
        }
    }

    #[test]
    fn lengths_use_the_rdb_encodings() {
        let encoded = |len| {
            let mut out = Vec::new();
            push_len(&mut out, len);
            out
        };
        assert_eq!(encoded(0), [0x00]);
        assert_eq!(encoded(63), [0x3f]);
        assert_eq!(encoded(64), [0x40, 0x40]);
        assert_eq!(encoded(16_383), [0x7f, 0xff]);
        assert_eq!(encoded(16_384), [0x80, 0x00, 0x00, 0x40, 0x00]);
        assert_eq!(encoded(1 << 32), [0x81, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn a_record_payload_holds_the_codec_pairs() {
        let mut record = Record::new(10, 20);
        record.fields.insert(
            "a".into(),
            crate::FieldEntry::value(crate::Stamp::new(1, 2, 3), "x"),
        );
        let mut pairs = codec::encode_pairs(&record);
        let summary = (
            b"m:h".to_vec(),
            crate::Stamp::new(1, 2, 3).encode().into_bytes(),
        );
        pairs.push(summary);
        let expected = hash_payload(pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        assert_eq!(record_payload(&record, StoredFormat::V2), expected);
        // Format 1: `m:v` = 1 and no summary.
        record.format = 1;
        let pairs = codec::encode_pairs(&record);
        let expected = hash_payload(pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        record.format = 2;
        assert_eq!(record_payload(&record, StoredFormat::V1), expected);
    }

    #[test]
    fn a_hash_payload_is_laid_out_as_dump_makes_it() {
        let pairs: [(&[u8], &[u8]); 1] = [(b"a", b"xy")];
        let payload = hash_payload(pairs.into_iter());
        assert_eq!(&payload[..7], &[4, 1, 1, b'a', 2, b'x', b'y']);
        assert_eq!(&payload[7..9], &[9, 0]);
        assert_eq!(
            payload[9..].to_vec(),
            crc64(&payload[..9]).to_le_bytes().to_vec()
        );
    }
}
