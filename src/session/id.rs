//! Session ids: 122 random bits from the OS CSPRNG, one strict textual form.
//!
//! The only accepted form is a version-4 UUID written as 32 lowercase hex
//! digits, without hyphens or braces (`uuid::Uuid::simple`): the version
//! nibble is `4` and the variant nibble one of `8`, `9`, `a`, `b`. Anything
//! else — upper case, hyphens, whitespace, another length, another version —
//! is refused by [`SessionId::parse`] before any replica is contacted, so user
//! input never reaches a key unchecked.

use std::fmt;
use std::str::FromStr;

/// Length of a session id's text form.
pub const SESSION_ID_LEN: usize = 32;

/// Characters of an id that logs and `Debug` output may show.
const REDACTED_CHARS: usize = 8;

/// A session id. `Display` prints the full id (for the cookie); `Debug`
/// prints only its first 8 characters, so a `{:?}` in a log line never leaks
/// a usable id.
///
/// ```
/// use quorum_sessions::session::SessionId;
/// let id = SessionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(SessionId::parse(&text).unwrap(), id);
/// assert!(SessionId::parse("0123456789ab4def8123456789abcdef").is_ok());
/// assert!(SessionId::parse("0123456789AB4DEF8123456789ABCDEF").is_err()); // upper case
/// assert!(SessionId::parse("01234567-89ab-4def-8123-456789abcdef").is_err()); // hyphens
/// assert!(!format!("{id:?}").contains(&text)); // Debug is redacted
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u128);

/// Why a string is not a session id. Carries no part of the input (it may
/// be an attacker's cookie, and errors end up in logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    /// Not exactly 32 characters.
    #[error("a session id is 32 characters, got {0}")]
    Length(usize),
    /// A character other than `0-9a-f`.
    #[error("a session id holds only lowercase hex digits")]
    Character,
    /// Hex, but not a version-4 UUID (version or variant bits).
    #[error("a session id is a version-4 UUID")]
    Version,
}

impl SessionId {
    /// A new id: 122 random bits from the operating system's CSPRNG
    /// (`uuid::Uuid::new_v4`, through `getrandom`).
    pub fn generate() -> SessionId {
        SessionId(uuid::Uuid::new_v4().as_u128())
    }

    /// An id made from 16 bytes, with the version-4 bits set: for seeded
    /// simulations and tests through
    /// [`SessionStore::with_id_generator`](super::SessionStore::with_id_generator).
    /// Production ids come from [`generate`](Self::generate).
    pub fn from_random_bytes(bytes: [u8; 16]) -> SessionId {
        SessionId(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .as_u128(),
        )
    }

    /// Parses the canonical form (see the module docs).
    ///
    /// # Errors
    ///
    /// [`InvalidSessionId`] for any other input.
    pub fn parse(text: &str) -> Result<SessionId, InvalidSessionId> {
        if text.len() != SESSION_ID_LEN {
            return Err(InvalidSessionId::Length(text.len()));
        }
        let mut value: u128 = 0;
        for byte in text.bytes() {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                _ => return Err(InvalidSessionId::Character),
            };
            value = (value << 4) | u128::from(digit);
        }
        SessionId::from_u128(value)
    }

    /// The id whose 128 bits are `value`.
    ///
    /// # Errors
    ///
    /// [`InvalidSessionId::Version`] unless the bits are a version-4 UUID.
    pub fn from_u128(value: u128) -> Result<SessionId, InvalidSessionId> {
        let uuid = uuid::Uuid::from_u128(value);
        let v4 = uuid.get_version_num() == 4 && uuid.get_variant() == uuid::Variant::RFC4122;
        if v4 {
            Ok(SessionId(value))
        } else {
            Err(InvalidSessionId::Version)
        }
    }

    /// The 128 bits.
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// The first 8 characters followed by `…`, for logs.
    pub fn redacted(&self) -> String {
        let text = self.to_string();
        format!("{}…", &text[..REDACTED_CHARS])
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.redacted())
    }
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(text: &str) -> Result<SessionId, InvalidSessionId> {
        SessionId::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_form_parses() {
        let id = SessionId::generate();
        let text = id.to_string();
        assert_eq!(SessionId::parse(&text), Ok(id));
        let hyphenated = uuid::Uuid::from_u128(id.as_u128()).hyphenated().to_string();
        let cases = [
            ("", InvalidSessionId::Length(0)),
            (&hyphenated[..], InvalidSessionId::Length(36)),
            (&text[..31], InvalidSessionId::Length(31)),
            (
                "0123456789abcdef0123456789abcdeF",
                InvalidSessionId::Character,
            ),
            (
                "0123456789abcdef0123456789abcde ",
                InvalidSessionId::Character,
            ),
            (
                "0123456789abcdef0123456789abcd*?",
                InvalidSessionId::Character,
            ),
            // 32 hex digits, but version 1.
            (
                "0123456789ab1def8123456789abcdef",
                InvalidSessionId::Version,
            ),
            // version 4, wrong variant.
            (
                "0123456789ab4def0123456789abcdef",
                InvalidSessionId::Version,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(SessionId::parse(input), Err(expected), "{input:?}");
        }
        assert!(SessionId::parse(&text.to_uppercase()).is_err() || text == text.to_uppercase());
        let multibyte = "é".repeat(16);
        assert_eq!(multibyte.len(), 32);
        assert_eq!(
            SessionId::parse(&multibyte),
            Err(InvalidSessionId::Character)
        );
    }

    #[test]
    fn generated_ids_are_version_4_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(SessionId::from_u128(a.as_u128()).is_ok());
        let seeded = SessionId::from_random_bytes([7; 16]);
        assert_eq!(SessionId::parse(&seeded.to_string()), Ok(seeded));
    }

    #[test]
    fn debug_never_shows_the_whole_id() {
        let id = SessionId::generate();
        let debug = format!("{id:?}");
        assert!(!debug.contains(&id.to_string()));
        assert!(debug.contains(&id.to_string()[..8]));
    }
}
