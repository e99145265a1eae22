//! Session-layer configuration, its defaults and named limits.

use std::time::Duration;

use crate::config::Limits;
use crate::error::ConfigError;
pub(crate) use crate::stamp::duration_ms;

/// Ids tried by one create before giving up ([`SessionError::IdCollisions`](super::SessionError::IdCollisions)).
/// With 122 random bits a second attempt is already astronomically unlikely.
pub const CREATE_ATTEMPTS_MAX: u32 = 4;
/// Longest user id, in bytes.
pub const USER_ID_MAX_BYTES: usize = 256;
/// Longest role, data key, collection name or item id, in bytes.
pub const NAME_MAX_BYTES: usize = 96;
/// Longest client attribute (IP, user agent) stored with a session; longer
/// ones are cut (the fingerprint hashes the whole value).
pub const CLIENT_ATTRIBUTE_MAX_BYTES: usize = 512;
/// Session-record fields the layer itself writes (user, role, times, client,
/// fingerprint, login stamp).
pub const SYSTEM_FIELD_COUNT: usize = 8;
/// Index entries one reader considers (newest first): bounds the work of
/// listing, limiting and logging out a user.
pub const USER_INDEX_ENTRIES_MAX: usize = 1024;
/// Session writes in flight at once during "log out everywhere" and
/// evictions.
pub const USER_WRITES_IN_FLIGHT_MAX: usize = 16;
/// Largest admin page.
pub const ADMIN_PAGE_MAX: usize = 1000;
/// Distinct users the admin stats count exactly; beyond it the count is an
/// estimate (HyperLogLog, about 1 % error) and flagged approximate.
pub const STATS_DISTINCT_USERS_MAX: usize = 100_000;
/// Distinct roles the admin stats count; the rest are counted under
/// [`STATS_OTHER_ROLE`].
pub const STATS_ROLES_MAX: usize = 64;
/// Role name under which roles past [`STATS_ROLES_MAX`] are counted.
pub const STATS_OTHER_ROLE: &str = "(other)";
/// Role name under which sessions without a role are counted.
pub const STATS_NO_ROLE: &str = "(none)";

/// Which client attributes, besides the user agent, the fingerprint binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FingerprintConfig {
    /// Bind the client IP. Default `false`: mobile clients change address
    /// often, and a proxy may hide it.
    pub ip: bool,
    /// Bind the `Accept-Language` header. Default `true`.
    pub accept_language: bool,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        FingerprintConfig {
            ip: false,
            accept_language: true,
        }
    }
}

/// Everything the session layer needs besides the coordinator. Every field
/// has a default; see the table in the [module docs](super).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Sliding (idle) timeout: a session not used for this long expires.
    /// Default 30 minutes.
    pub idle_timeout: Duration,
    /// A read extends the session only when less than this remains of the
    /// idle timeout, so most reads write nothing. Default 15 minutes. Must be
    /// at most `idle_timeout`.
    pub refresh_threshold: Duration,
    /// Absolute lifetime cap from creation, whatever the activity; also the
    /// grace of tombstones. Default 24 hours.
    pub absolute_lifetime: Duration,
    /// Live sessions per user: the newest this many by creation stamp; older
    /// ones are evicted (tombstoned) by any reader that sees more. `None`:
    /// no limit. Default `Some(10)`.
    pub max_sessions_per_user: Option<usize>,
    /// Bind sessions to a client fingerprint (hijack protection). Default
    /// `None` (off).
    pub fingerprint: Option<FingerprintConfig>,
    /// Largest JSON value of one data key or item, in bytes. Default 16 KiB.
    pub max_value_bytes: usize,
    /// Largest session (names and values of every field), in bytes. Default
    /// 64 KiB.
    pub max_session_bytes: usize,
    /// Most data keys plus items in one session. Default 100.
    pub max_fields: usize,
    /// Attempts to tombstone the old id during [`regenerate`](super::SessionStore::regenerate).
    /// Default 5.
    pub rotation_delete_attempts: u32,
    /// Delay before the first retry of that tombstone, doubled at each
    /// retry. Default 50 ms.
    pub rotation_retry_delay: Duration,
    /// Keys per SCAN page for the admin statistics walk. Default 500.
    pub admin_scan_page: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            refresh_threshold: Duration::from_secs(15 * 60),
            absolute_lifetime: Duration::from_secs(24 * 60 * 60),
            max_sessions_per_user: Some(10),
            fingerprint: None,
            max_value_bytes: 16 * 1024,
            max_session_bytes: 64 * 1024,
            max_fields: 100,
            rotation_delete_attempts: 5,
            rotation_retry_delay: Duration::from_millis(50),
            admin_scan_page: 500,
        }
    }
}

impl SessionConfig {
    /// Checks every rule, against the coordinator's input limits too.
    ///
    /// # Errors
    ///
    /// The first rule broken, naming the field.
    ///
    /// ```
    /// use quorum_sessions::config::Limits;
    /// use quorum_sessions::session::SessionConfig;
    /// assert!(SessionConfig::default().validate(&Limits::default()).is_ok());
    /// let bad = SessionConfig { max_sessions_per_user: Some(0), ..SessionConfig::default() };
    /// assert_eq!(bad.validate(&Limits::default()).unwrap_err().field, "max_sessions_per_user");
    /// ```
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        let positive = [
            ("idle_timeout", self.idle_timeout),
            ("refresh_threshold", self.refresh_threshold),
            ("absolute_lifetime", self.absolute_lifetime),
            ("rotation_retry_delay", self.rotation_retry_delay),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.refresh_threshold > self.idle_timeout {
            return Err(ConfigError::new(
                "refresh_threshold",
                "must be at most idle_timeout",
            ));
        }
        if self.idle_timeout > self.absolute_lifetime {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be at most absolute_lifetime",
            ));
        }
        if self.absolute_lifetime > Duration::from_secs(10 * 365 * 24 * 3600) {
            return Err(ConfigError::new(
                "absolute_lifetime",
                "must be at most 10 years",
            ));
        }
        if self.max_sessions_per_user == Some(0) {
            return Err(ConfigError::new(
                "max_sessions_per_user",
                "must be at least 1 (or None)",
            ));
        }
        self.validate_sizes(limits)?;
        let counts = [
            (
                "rotation_delete_attempts",
                self.rotation_delete_attempts as usize,
            ),
            ("admin_scan_page", self.admin_scan_page),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if self.admin_scan_page > ADMIN_PAGE_MAX {
            return Err(ConfigError::new(
                "admin_scan_page",
                format!("must be at most {ADMIN_PAGE_MAX}"),
            ));
        }
        Ok(())
    }

    fn validate_sizes(&self, limits: &Limits) -> Result<(), ConfigError> {
        if self.max_value_bytes == 0 || self.max_value_bytes > limits.max_value_bytes {
            return Err(ConfigError::new(
                "max_value_bytes",
                format!(
                    "must be in 1..={} (the coordinator's limit)",
                    limits.max_value_bytes
                ),
            ));
        }
        if self.max_session_bytes < self.max_value_bytes {
            return Err(ConfigError::new(
                "max_session_bytes",
                "must be at least max_value_bytes",
            ));
        }
        if self.max_fields == 0 {
            return Err(ConfigError::new("max_fields", "must be at least 1"));
        }
        // One save may remove every field and add as many: both fit one write.
        if 2 * self.max_fields + SYSTEM_FIELD_COUNT > limits.max_fields_per_write {
            return Err(ConfigError::new(
                "max_fields",
                format!(
                    "2 × max_fields + {SYSTEM_FIELD_COUNT} must be at most the coordinator's max_fields_per_write ({})",
                    limits.max_fields_per_write
                ),
            ));
        }
        // `i:` + collection + `:` + item must fit a field name.
        if 3 + 2 * NAME_MAX_BYTES > limits.max_field_name_bytes {
            return Err(ConfigError::new(
                "limits.max_field_name_bytes",
                format!("must be at least {}", 3 + 2 * NAME_MAX_BYTES),
            ));
        }
        Ok(())
    }

    pub(crate) fn idle_ms(&self) -> u64 {
        duration_ms(self.idle_timeout)
    }

    pub(crate) fn refresh_ms(&self) -> u64 {
        duration_ms(self.refresh_threshold)
    }

    pub(crate) fn lifetime_ms(&self) -> u64 {
        duration_ms(self.absolute_lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_field() {
        let base = SessionConfig::default;
        let limits = Limits::default();
        let cases: Vec<(SessionConfig, &str)> = vec![
            (
                SessionConfig {
                    idle_timeout: Duration::ZERO,
                    ..base()
                },
                "idle_timeout",
            ),
            (
                SessionConfig {
                    refresh_threshold: Duration::from_secs(3600),
                    ..base()
                },
                "refresh_threshold",
            ),
            (
                SessionConfig {
                    absolute_lifetime: Duration::from_secs(60),
                    ..base()
                },
                "idle_timeout",
            ),
            (
                SessionConfig {
                    max_sessions_per_user: Some(0),
                    ..base()
                },
                "max_sessions_per_user",
            ),
            (
                SessionConfig {
                    max_value_bytes: 1 << 30,
                    ..base()
                },
                "max_value_bytes",
            ),
            (
                SessionConfig {
                    max_session_bytes: 10,
                    ..base()
                },
                "max_session_bytes",
            ),
            (
                SessionConfig {
                    max_fields: 1000,
                    ..base()
                },
                "max_fields",
            ),
            (
                SessionConfig {
                    rotation_delete_attempts: 0,
                    ..base()
                },
                "rotation_delete_attempts",
            ),
            (
                SessionConfig {
                    admin_scan_page: ADMIN_PAGE_MAX + 1,
                    ..base()
                },
                "admin_scan_page",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate(&limits).unwrap_err().field, field);
        }
        assert!(base().validate(&limits).is_ok());
    }
}
