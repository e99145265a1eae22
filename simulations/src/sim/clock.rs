//! Virtual time: tokio's paused clock, read as true time (the servers'
//! clock) and as each app server's skewed wall clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use quorum_sessions::coordinator::WallClock;

/// The Unix time (ms) at which every run starts.
pub const START_UNIX_MS: u64 = 1_700_000_000_000;

/// The run's clock: virtual time since the run began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VirtualClock {
    base: tokio::time::Instant,
}

impl VirtualClock {
    /// Starts now (inside the run's runtime).
    pub(crate) fn start() -> VirtualClock {
        VirtualClock {
            base: tokio::time::Instant::now(),
        }
    }

    /// Virtual µs since the run began.
    pub(crate) fn elapsed_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant `us` µs after the run began.
    pub(crate) fn at_us(&self, us: u64) -> tokio::time::Instant {
        self.base + std::time::Duration::from_micros(us)
    }

    /// True Unix time, ms: the servers' clock.
    pub(crate) fn true_ms(&self) -> u64 {
        START_UNIX_MS + self.elapsed_us() / 1000
    }

    /// An app server's wall clock: true time plus `offset_ms` (which clock
    /// skew faults move while the run goes).
    pub(crate) fn wall_clock(self, offset_ms: Arc<AtomicI64>) -> WallClock {
        Arc::new(move || {
            let ms = self.true_ms() as i64 + offset_ms.load(Ordering::Relaxed);
            u64::try_from(ms).expect("clocks stay after 1970")
        })
    }
}
