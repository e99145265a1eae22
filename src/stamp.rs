//! Hybrid logical clock stamps.
//!
//! A [`Stamp`] is `(physical_ms, logical, writer)`, totally ordered in that
//! order. Its text form is fixed-width lowercase hex (12 + 8 + 12 = 32
//! characters) so that comparing two encoded stamps byte by byte gives the same
//! answer as comparing the numbers: the Lua merge script relies on this and
//! never parses a number.
//!
//! [`Hlc`] is the clock each coordinator keeps. It is pure: the caller hands it
//! `now_ms`; it never reads a clock itself.

use std::fmt;

/// Number of characters of an encoded stamp.
pub const STAMP_LEN: usize = 32;
/// Largest physical time a stamp can carry (48 bits of milliseconds: year 10889).
pub const PHYSICAL_MAX: u64 = (1 << 48) - 1;
/// Largest writer id (48 bits).
pub const WRITER_MAX: u64 = (1 << 48) - 1;

const _: () = assert!(STAMP_LEN == 12 + 8 + 12);

/// A hybrid-logical-clock value: the version of one field or of a tombstone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (wall clock, advanced by what was seen).
    pub physical_ms: u64,
    /// Counter that orders stamps within one millisecond.
    pub logical: u32,
    /// The coordinator that made the stamp; breaks ties between writers.
    pub writer: u64,
}

impl Stamp {
    /// The smallest stamp.
    pub const ZERO: Stamp = Stamp {
        physical_ms: 0,
        logical: 0,
        writer: 0,
    };

    /// Builds a stamp.
    ///
    /// # Panics
    ///
    /// If `physical_ms` or `writer` exceeds 48 bits: such a stamp cannot be
    /// encoded fixed-width, and no caller should ever make one.
    pub fn new(physical_ms: u64, logical: u32, writer: u64) -> Stamp {
        assert!(physical_ms <= PHYSICAL_MAX, "physical time beyond 48 bits");
        assert!(writer <= WRITER_MAX, "writer id beyond 48 bits");
        Stamp {
            physical_ms,
            logical,
            writer,
        }
    }

    /// Appends the 32-character fixed-width hex form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        write!(
            out,
            "{:012x}{:08x}{:012x}",
            self.physical_ms, self.logical, self.writer
        )
        .expect("writing to a Vec cannot fail");
    }

    /// The 32-character fixed-width hex form.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(STAMP_LEN);
        self.encode_into(&mut out);
        String::from_utf8(out).expect("hex is ASCII")
    }

    /// Parses the fixed-width form. Returns `None` unless `text` is exactly
    /// 32 lowercase hex digits.
    pub fn decode(text: &[u8]) -> Option<Stamp> {
        if text.len() != STAMP_LEN {
            return None;
        }
        let physical_ms = parse_hex(&text[0..12])?;
        let logical = u32::try_from(parse_hex(&text[12..20])?).ok()?;
        let writer = parse_hex(&text[20..32])?;
        Some(Stamp {
            physical_ms,
            logical,
            writer,
        })
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Parses lowercase hex (at most 16 digits); `None` on any other byte.
pub(crate) fn parse_hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    // A table lookup per digit: every read decodes a stamp per field.
    let mut value: u64 = 0;
    for &byte in text {
        let digit = HEX_DIGITS[usize::from(byte)];
        if digit == NOT_HEX {
            return None;
        }
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

const NOT_HEX: u8 = 0xff;

/// The value of each lowercase hex digit, [`NOT_HEX`] for any other byte.
static HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Fixed-width (12 hex digits) form of a millisecond time, so string order
/// equals numeric order (expiries, lifetime caps, field `until`s).
pub fn encode_ms(ms: u64) -> String {
    assert!(ms <= PHYSICAL_MAX, "time beyond 48 bits");
    format!("{ms:012x}")
}

/// A duration in whole milliseconds, saturating at `u64::MAX` (the unit of
/// every time this crate stores or compares).
pub(crate) fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Parses [`encode_ms`] output.
pub fn decode_ms(text: &[u8]) -> Option<u64> {
    if text.len() != 12 {
        return None;
    }
    parse_hex(text)
}

/// A stamp or expiry was too far ahead of the local clock and was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("time {seen_ms} ms is {ahead_ms} ms ahead of the local clock (limit {limit_ms} ms)")]
pub struct ClockSkew {
    /// The time that was seen.
    pub seen_ms: u64,
    /// How far ahead of the local clock it was.
    pub ahead_ms: u64,
    /// The configured `max_clock_skew`.
    pub limit_ms: u64,
}

/// The hybrid logical clock of one coordinator.
///
/// ```
/// use quorum_sessions::stamp::Hlc;
/// let mut clock = Hlc::new(7, 1_000);
/// let a = clock.tick(5_000);
/// let b = clock.tick(5_000); // same millisecond: the logical part grows
/// assert!(b > a);
/// // A stamp seen from another writer moves the clock forward (receive rule).
/// clock.observe(quorum_sessions::Stamp::new(5_500, 3, 9), 5_000).unwrap();
/// assert!(clock.tick(5_000) > quorum_sessions::Stamp::new(5_500, 3, 9));
/// ```
#[derive(Clone, Debug)]
pub struct Hlc {
    writer: u64,
    max_skew_ms: u64,
    last_physical_ms: u64,
    last_logical: u32,
    rejected_count: u64,
}

impl Hlc {
    /// A clock for `writer` that refuses times more than `max_skew_ms` ahead.
    ///
    /// # Panics
    ///
    /// If `writer` exceeds 48 bits.
    pub fn new(writer: u64, max_skew_ms: u64) -> Hlc {
        assert!(writer <= WRITER_MAX, "writer id beyond 48 bits");
        Hlc {
            writer,
            max_skew_ms,
            last_physical_ms: 0,
            last_logical: 0,
            rejected_count: 0,
        }
    }

    /// This clock's writer id.
    pub fn writer(&self) -> u64 {
        self.writer
    }

    /// How many stamps were refused for being too far ahead.
    pub fn rejected_count(&self) -> u64 {
        self.rejected_count
    }

    /// A new stamp, larger than every stamp made or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        if now_ms > self.last_physical_ms {
            self.last_physical_ms = now_ms.min(PHYSICAL_MAX);
            self.last_logical = 0;
        } else if self.last_logical == u32::MAX {
            // The logical counter is exhausted: borrow the next millisecond.
            self.last_physical_ms += 1;
            self.last_logical = 0;
        } else {
            self.last_logical += 1;
        }
        Stamp::new(self.last_physical_ms, self.last_logical, self.writer)
    }

    /// Checks that a time seen from elsewhere is not too far ahead.
    ///
    /// # Errors
    ///
    /// [`ClockSkew`] when `seen_ms` exceeds `now_ms + max_skew`; the refusal is
    /// counted.
    pub fn check(&mut self, seen_ms: u64, now_ms: u64) -> Result<(), ClockSkew> {
        let limit = now_ms.saturating_add(self.max_skew_ms);
        if seen_ms > limit {
            self.rejected_count += 1;
            return Err(ClockSkew {
                seen_ms,
                ahead_ms: seen_ms - now_ms,
                limit_ms: self.max_skew_ms,
            });
        }
        Ok(())
    }

    /// The receive rule: moves the clock past `seen`, so the next tick wins
    /// over it.
    ///
    /// # Errors
    ///
    /// [`ClockSkew`] (and the clock does not move) when `seen` is more than
    /// `max_skew` ahead of `now_ms`.
    pub fn observe(&mut self, seen: Stamp, now_ms: u64) -> Result<(), ClockSkew> {
        self.check(seen.physical_ms, now_ms)?;
        let mine = (self.last_physical_ms, self.last_logical);
        let theirs = (seen.physical_ms, seen.logical);
        if theirs > mine {
            self.last_physical_ms = theirs.0;
            self.last_logical = theirs.1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_digits_are_lowercase_hex_only() {
        assert_eq!(parse_hex(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        for byte in 0..=255u8 {
            let expected = (byte as char)
                .to_digit(16)
                .filter(|_| !byte.is_ascii_uppercase());
            assert_eq!(parse_hex(&[byte]), expected.map(u64::from), "byte {byte}");
        }
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"00000000000000000"), None, "17 digits");
    }

    #[test]
    fn tick_is_strictly_increasing_even_when_the_wall_clock_goes_back() {
        let mut clock = Hlc::new(1, 1000);
        let a = clock.tick(10_000);
        let b = clock.tick(9_000);
        let c = clock.tick(10_000);
        assert!(a < b && b < c);
        assert_eq!(b.physical_ms, 10_000);
    }

    #[test]
    fn observe_refuses_and_counts_far_future_stamps() {
        let mut clock = Hlc::new(1, 1000);
        let far = Stamp::new(20_000, 0, 2);
        assert!(clock.observe(far, 10_000).is_err());
        assert_eq!(clock.rejected_count(), 1);
        assert!(
            clock.tick(10_000) < far,
            "a refused stamp must not move the clock"
        );
        clock.observe(Stamp::new(10_900, 5, 2), 10_000).unwrap();
        assert_eq!(clock.tick(10_000), Stamp::new(10_900, 6, 1));
    }

    #[test]
    fn decode_rejects_bad_text() {
        assert_eq!(Stamp::decode(b""), None);
        assert_eq!(Stamp::decode(&[b'0'; 31]), None);
        assert_eq!(Stamp::decode(b"0000000000000000000000000000000G"), None);
        assert_eq!(Stamp::decode(b"000000000000000000000000000000A0"), None);
    }

    proptest! {
        #[test]
        fn encoding_order_equals_stamp_order(
            a in (0..=PHYSICAL_MAX, any::<u32>(), 0..=WRITER_MAX),
            b in (0..=PHYSICAL_MAX, any::<u32>(), 0..=WRITER_MAX),
        ) {
            let a = Stamp::new(a.0, a.1, a.2);
            let b = Stamp::new(b.0, b.1, b.2);
            prop_assert_eq!(a.cmp(&b), a.encode().as_bytes().cmp(b.encode().as_bytes()));
            prop_assert_eq!(Stamp::decode(a.encode().as_bytes()), Some(a));
        }
    }
}
