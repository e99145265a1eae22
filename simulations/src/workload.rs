//! The session-like workload: which client operation comes next, on which
//! session. It knows only what a client (an app server's request handler)
//! knows: the sessions it created and their idle timeout and lifetime cap.

use std::rc::Rc;

use rand::Rng;

use crate::config::WorkloadConfig;

/// Index of a session in [`Workload::sessions`].
pub type SessionIndex = u32;

/// The fields sessions hold. Creates write the first two; updates and
/// removals pick among the others (a cart item per field, as the design
/// recommends for collections).
pub const FIELD_NAMES: [&str; 5] = ["user", "csrf", "theme", "cart:1", "cart:2"];
/// Fields written by a create.
pub const CREATE_FIELDS: [u8; 2] = [0, 1];
/// First field index updates and removals use.
const MUTABLE_FIELDS_START: u8 = 2;

/// A set of fields (indexes into [`FIELD_NAMES`]), as a bit mask: no
/// allocation on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(u8);

const _: () = assert!(FIELD_NAMES.len() <= 8, "a FieldSet holds at most 8 fields");

impl FieldSet {
    /// The set of these fields.
    pub fn of(fields: &[u8]) -> FieldSet {
        let mut set = FieldSet::default();
        for &field in fields {
            set.insert(field);
        }
        set
    }

    /// Adds a field.
    pub fn insert(&mut self, field: u8) {
        assert!((field as usize) < FIELD_NAMES.len(), "field index in range");
        self.0 |= 1 << field;
    }

    /// True when the field is in the set.
    pub fn contains(self, field: u8) -> bool {
        self.0 & (1 << field) != 0
    }

    /// Number of fields.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields, in index order.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..FIELD_NAMES.len() as u8).filter(move |&f| self.contains(f))
    }
}

/// Sessions whose key has exactly [`KEY_DIGITS`] digits (all but the last
/// few of a run of more than ten million sessions).
pub(crate) const PADDED_KEYS: SessionIndex = 10_000_000;
/// Digits of a session key's index, zero-padded.
const KEY_DIGITS: usize = 7;

/// A session's record key, `s:{NNNNNNN}`, held as the session's index: no
/// string is built or compared to find a record. It orders exactly as the
/// key strings do (the order of a replica's key scan), and displays as the
/// key string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(pub SessionIndex);

impl SessionKey {
    /// The key a string names, if it is a session key (`s:{` + the index's
    /// digits, zero-padded to seven + `}`), as [`session_key`]
    /// writes them.
    #[inline]
    pub fn parse(key: &str) -> Option<SessionKey> {
        // The usual form, exactly `KEY_DIGITS` digits, without `str::parse`.
        if let [b's', b':', b'{', digits @ .., b'}'] = key.as_bytes() {
            if digits.len() == KEY_DIGITS && digits.iter().all(u8::is_ascii_digit) {
                let index = digits.iter().fold(0, |n: SessionIndex, d| {
                    n * 10 + SessionIndex::from(d - b'0')
                });
                return Some(SessionKey(index));
            }
        }
        SessionKey::parse_long(key)
    }

    #[cold]
    fn parse_long(key: &str) -> Option<SessionKey> {
        let digits = key.strip_prefix("s:{")?.strip_suffix('}')?;
        if digits.len() < KEY_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index: SessionIndex = digits.parse().ok()?;
        // Only the canonical form: no extra leading zeros.
        let canonical = digits.len() == KEY_DIGITS || !digits.starts_with('0');
        canonical.then_some(SessionKey(index))
    }
}

impl Ord for SessionKey {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.0.max(other.0) < PADDED_KEYS {
            // Same number of digits: the numbers order as their strings.
            self.0.cmp(&other.0)
        } else {
            self.cmp_strings(other)
        }
    }
}

impl SessionKey {
    #[cold]
    #[inline(never)]
    fn cmp_strings(&self, other: &Self) -> std::cmp::Ordering {
        session_key(self.0).cmp(&session_key(other.0))
    }
}

impl PartialOrd for SessionKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s:{{{:0width$}}}", self.0, width = KEY_DIGITS)
    }
}

/// The record key of session `index`.
pub fn session_key(index: SessionIndex) -> String {
    SessionKey(index).to_string()
}

/// What a client knows of one session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The record's key.
    pub key: Rc<str>,
    /// Idle timeout: every mutation sets `expiry = now + ttl`.
    pub ttl_ms: u64,
    /// Absolute lifetime cap, fixed at creation, carried by every mutation.
    pub cap_ms: u64,
    /// The create was acknowledged.
    pub created: bool,
    /// A delete was issued.
    pub deleted: bool,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// Create a new session (the caller registers it).
    Create,
    /// Read a session.
    Read(SessionIndex),
    /// Write these fields.
    Update(SessionIndex, FieldSet),
    /// Extend the expiry.
    Touch(SessionIndex),
    /// Remove one field (a field tombstone).
    RemoveField(SessionIndex, u8),
    /// Delete the session.
    Delete(SessionIndex),
}

impl ClientOp {
    /// A short name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Create => "create",
            ClientOp::Read(_) => "read",
            ClientOp::Update(..) => "update",
            ClientOp::Touch(_) => "touch",
            ClientOp::RemoveField(..) => "remove-field",
            ClientOp::Delete(_) => "delete",
        }
    }
}

/// Sessions and the operation mix.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    /// Every session ever registered.
    pub sessions: Vec<SessionInfo>,
    /// Sessions clients still use, oldest first.
    active: Vec<SessionIndex>,
    cumulative: [u32; 7],
}

impl Workload {
    /// An empty workload.
    pub fn new(config: &WorkloadConfig) -> Workload {
        let w = config.weights;
        let mut running = 0;
        let cumulative = [
            w.read,
            w.update,
            w.touch,
            w.remove_field,
            w.create,
            w.delete,
            w.revisit,
        ]
        .map(|weight| {
            running += weight;
            running
        });
        assert!(running > 0, "some operation must have a weight");
        Workload {
            config: config.clone(),
            sessions: Vec::new(),
            active: Vec::new(),
            cumulative,
        }
    }

    /// The next operation. Creates come first while no session is active.
    pub fn next_op<R: Rng + ?Sized>(&mut self, rng: &mut R) -> ClientOp {
        if self.active.is_empty() {
            return ClientOp::Create;
        }
        let total = self.cumulative[6];
        let pick = rng.random_range(0..total);
        let kind = self.cumulative.iter().position(|&c| pick < c).unwrap_or(0);
        if kind == 4 {
            return ClientOp::Create;
        }
        if kind == 6 {
            let index = rng.random_range(0..self.sessions.len());
            return ClientOp::Read(index as SessionIndex);
        }
        let session = self.pick_active(rng);
        match kind {
            0 => ClientOp::Read(session),
            1 => {
                let count = rng.random_range(1..=3usize);
                let mut fields = FieldSet::default();
                while fields.len() < count {
                    fields.insert(rng.random_range(MUTABLE_FIELDS_START..FIELD_NAMES.len() as u8));
                }
                ClientOp::Update(session, fields)
            }
            2 => ClientOp::Touch(session),
            3 => ClientOp::RemoveField(
                session,
                rng.random_range(MUTABLE_FIELDS_START..FIELD_NAMES.len() as u8),
            ),
            _ => ClientOp::Delete(session),
        }
    }

    fn pick_active<R: Rng + ?Sized>(&self, rng: &mut R) -> SessionIndex {
        const HOT: usize = 6;
        let len = self.active.len();
        let position = if len > HOT && rng.random_bool(self.config.hot_probability) {
            len - 1 - rng.random_range(0..HOT)
        } else {
            rng.random_range(0..len)
        };
        self.active[position]
    }

    /// Registers a new session created at `now_ms` on its coordinator's
    /// clock; its TTL and cap are drawn here.
    pub fn register<R: Rng + ?Sized>(&mut self, rng: &mut R, now_ms: u64) -> SessionIndex {
        let index = self.sessions.len() as SessionIndex;
        let (ttl_ms, lifetime_ms) = if rng.random_bool(self.config.short_ttl_fraction) {
            self.config.short_ttl_ms
        } else {
            self.config.long_ttl_ms
        };
        self.sessions.push(SessionInfo {
            key: Rc::from(session_key(index)),
            ttl_ms,
            cap_ms: now_ms + lifetime_ms,
            created: false,
            deleted: false,
        });
        index
    }

    /// The create of `session` was acknowledged: clients start using it.
    pub fn on_created(&mut self, session: SessionIndex) {
        self.sessions[session as usize].created = true;
        self.active.push(session);
        if self.active.len() > self.config.active_sessions_max {
            self.active.remove(0);
        }
    }

    /// A delete of `session` was issued; most clients stop using it (some
    /// other tab may still send requests with the old cookie).
    pub fn on_delete_issued<R: Rng + ?Sized>(&mut self, rng: &mut R, session: SessionIndex) {
        self.sessions[session as usize].deleted = true;
        if rng.random_bool(0.7) {
            if let Some(position) = self.active.iter().position(|&s| s == session) {
                self.active.remove(position);
            }
        }
    }

    /// The session.
    pub fn session(&self, session: SessionIndex) -> &SessionInfo {
        &self.sessions[session as usize]
    }

    /// Sessions clients still use.
    pub fn active_count(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_mix_follows_the_weights_and_creates_first() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut workload = Workload::new(&WorkloadConfig::default());
        assert_eq!(workload.next_op(&mut rng), ClientOp::Create);
        for _ in 0..10 {
            let session = workload.register(&mut rng, 1_000);
            workload.on_created(session);
        }
        let mut reads = 0;
        for _ in 0..10_000 {
            match workload.next_op(&mut rng) {
                ClientOp::Read(_) => reads += 1,
                ClientOp::Update(_, fields) => {
                    assert!((1..=3).contains(&fields.len()));
                    assert!(fields.iter().all(|f| f >= MUTABLE_FIELDS_START));
                }
                _ => {}
            }
        }
        // read 50 + revisit 6 of 100.
        assert!((5_200..6_000).contains(&reads), "{reads}");
    }

    #[test]
    fn the_active_pool_is_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let config = WorkloadConfig {
            active_sessions_max: 5,
            ..WorkloadConfig::default()
        };
        let mut workload = Workload::new(&config);
        for _ in 0..20 {
            let session = workload.register(&mut rng, 0);
            workload.on_created(session);
        }
        assert_eq!(workload.active_count(), 5);
        assert_eq!(&*workload.session(3).key, "s:{0000003}");
    }

    #[test]
    fn session_keys_order_and_parse_as_their_strings() {
        let indexes = [
            0,
            3,
            42,
            999_999,
            1_000_000,
            9_999_999,
            10_000_000,
            10_000_001,
            12_345_678,
            99_999_999,
            100_000_000,
            SessionIndex::MAX,
        ];
        for &a in &indexes {
            let key = session_key(a);
            assert_eq!(SessionKey::parse(&key), Some(SessionKey(a)), "{key}");
            for &b in &indexes {
                assert_eq!(
                    SessionKey(a).cmp(&SessionKey(b)),
                    key.cmp(&session_key(b)),
                    "{a} vs {b}"
                );
            }
        }
        assert_eq!(session_key(7), "s:{0000007}");
        for bad in [
            "",
            "s:{}",
            "s:{123}",
            "s:{00000001}",
            "s:{000000a}",
            "x:{0000001}",
        ] {
            assert_eq!(SessionKey::parse(bad), None, "{bad}");
        }
    }
}
