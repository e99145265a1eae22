//! Client fingerprints (hijack protection) and CSRF tokens.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::FingerprintConfig;
use super::id::SessionId;
use super::keys::hex;

/// Attributes of the client making a request, as the app sees them.
///
/// ```
/// use quorum_sessions::session::ClientInfo;
/// let client = ClientInfo::default().ip("203.0.113.7").user_agent("curl/8.5");
/// assert_eq!(client.user_agent.as_deref(), Some("curl/8.5"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's IP address, as text.
    pub ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Accept-Language` header.
    pub accept_language: Option<String>,
}

impl ClientInfo {
    /// Sets the IP address.
    pub fn ip(mut self, ip: impl Into<String>) -> ClientInfo {
        self.ip = Some(ip.into());
        self
    }

    /// Sets the user agent.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> ClientInfo {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Sets the accepted languages.
    pub fn accept_language(mut self, accept_language: impl Into<String>) -> ClientInfo {
        self.accept_language = Some(accept_language.into());
        self
    }

    /// SHA-256 (hex) of the user agent and the attributes `config` selects,
    /// each length-prefixed so that no two attribute lists hash alike.
    pub fn fingerprint(&self, config: &FingerprintConfig) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"quorum-sessions fingerprint v1");
        let mut part = |label: &[u8], value: Option<&str>| {
            hasher.update(label);
            match value {
                Some(value) => {
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
                None => hasher.update(u64::MAX.to_be_bytes()),
            }
        };
        part(b"ua", self.user_agent.as_deref());
        if config.ip {
            part(b"ip", self.ip.as_deref());
        }
        if config.accept_language {
            part(b"al", self.accept_language.as_deref());
        }
        hex(&hasher.finalize())
    }
}

/// Constant-time equality of two fingerprints (fixed-length hex).
pub(crate) fn fingerprints_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Length of a CSRF token's text form (HMAC-SHA256, hex).
pub const CSRF_TOKEN_LEN: usize = 64;
/// Shortest CSRF secret accepted, in bytes.
pub const CSRF_SECRET_MIN_BYTES: usize = 32;

/// CSRF tokens: `HMAC-SHA256(secret, "csrf v1" ‖ session id)`, hex. A token
/// is bound to one session id (a rotated id needs a new token) and checked in
/// constant time. Every app server must share the secret.
///
/// ```
/// use quorum_sessions::session::{Csrf, SessionId};
/// let csrf = Csrf::new(&[7u8; 32]).unwrap();
/// let id = SessionId::generate();
/// let token = csrf.token(&id);
/// assert!(csrf.verify(&id, &token));
/// assert!(!csrf.verify(&SessionId::generate(), &token));
/// assert!(!csrf.verify(&id, "short"));
/// ```
#[derive(Clone)]
pub struct Csrf {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csrf { secret: <redacted> }")
    }
}

/// The CSRF secret is shorter than [`CSRF_SECRET_MIN_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a CSRF secret needs at least {CSRF_SECRET_MIN_BYTES} bytes, got {0}")]
pub struct WeakCsrfSecret(pub usize);

impl Csrf {
    /// A token maker over `secret` (at least 32 random bytes, shared by
    /// every app server).
    ///
    /// # Errors
    ///
    /// [`WeakCsrfSecret`] for a shorter secret.
    pub fn new(secret: &[u8]) -> Result<Csrf, WeakCsrfSecret> {
        if secret.len() < CSRF_SECRET_MIN_BYTES {
            return Err(WeakCsrfSecret(secret.len()));
        }
        Ok(Csrf {
            secret: secret.to_vec(),
        })
    }

    fn mac(&self, id: &SessionId) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(b"quorum-sessions csrf v1\0");
        mac.update(id.to_string().as_bytes());
        mac
    }

    /// The token of session `id` ([`CSRF_TOKEN_LEN`] hex characters).
    pub fn token(&self, id: &SessionId) -> String {
        hex(&self.mac(id).finalize().into_bytes())
    }

    /// True when `token` is the token of `id`. The length is checked first
    /// (it is public), then the bytes in constant time.
    pub fn verify(&self, id: &SessionId, token: &str) -> bool {
        if token.len() != CSRF_TOKEN_LEN {
            return false;
        }
        let expected = self.token(id);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_binds_the_configured_attributes_only() {
        let config = FingerprintConfig::default();
        let a = ClientInfo::default().user_agent("ua").ip("1.1.1.1");
        let b = ClientInfo::default().user_agent("ua").ip("2.2.2.2");
        assert_eq!(
            a.fingerprint(&config),
            b.fingerprint(&config),
            "IP not bound by default"
        );
        let with_ip = FingerprintConfig {
            ip: true,
            ..config.clone()
        };
        assert_ne!(a.fingerprint(&with_ip), b.fingerprint(&with_ip));
        let other_ua = ClientInfo::default().user_agent("ub").ip("1.1.1.1");
        assert_ne!(a.fingerprint(&config), other_ua.fingerprint(&config));
        // Length prefixes: moving bytes between attributes changes the hash.
        let x = ClientInfo::default().user_agent("ab").accept_language("c");
        let y = ClientInfo::default().user_agent("a").accept_language("bc");
        assert_ne!(x.fingerprint(&config), y.fingerprint(&config));
        assert_eq!(a.fingerprint(&config).len(), 64);
    }

    #[test]
    fn csrf_tokens_are_fixed_length_and_bound_to_the_id_and_secret() {
        assert_eq!(Csrf::new(&[1; 31]).unwrap_err(), WeakCsrfSecret(31));
        let csrf = Csrf::new(&[1; 32]).unwrap();
        let other = Csrf::new(&[2; 32]).unwrap();
        let id = SessionId::generate();
        let token = csrf.token(&id);
        assert_eq!(token.len(), CSRF_TOKEN_LEN);
        assert!(csrf.verify(&id, &token));
        assert!(!other.verify(&id, &token));
        assert!(!csrf.verify(&id, &token.to_uppercase()));
        assert!(!csrf.verify(&id, &token[..63]));
        assert!(!csrf.verify(&id, ""));
        let mut flipped = token.into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(!csrf.verify(&id, std::str::from_utf8(&flipped).unwrap()));
        assert!(!format!("{csrf:?}").contains("1, 1"));
    }
}
