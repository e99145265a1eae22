//! A dropped connection to a Redis that still runs (an idle timeout, a
//! proxy, a failover, `CLIENT KILL`) costs a few milliseconds, not the
//! replica's place in the rotation.
//!
//! fred reconnects on its own, after
//! [`reconnect_delay_min`](super::RedisReplicaConfig::reconnect_delay_min)
//! (plus a jitter of up to half of it; fred's default jitter alone is up to
//! 100 ms). Meanwhile, and for the requests that were on the connection
//! when it dropped:
//!
//! - a request that finds the connection down waits up to
//!   [`reconnect_wait`](super::RedisReplicaConfig::reconnect_wait) for it
//!   to come back, instead of failing at once (which the coordinator counts
//!   as a health failure: three of them, and the replica is Down, skipped,
//!   and only probed again after a backoff that grows to seconds);
//! - a request that was on the connection when it dropped fails (fred
//!   writes a command once, see `build_client`) or is refused (its reply
//!   came through a newer connection than its run id, see `process.rs`, or
//!   its script answered `STALERUN`): it is made once more, whole, on the
//!   new connection (a new run id included), within its deadline, once
//!   that connection is up (fred reports the dropped one as connected
//!   until its reconnection delay has passed). Every
//!   request is idempotent (merges are joins, a create finds its own
//!   earlier write, epoch and lease calls set what they set).
//!
//! A Redis that is really down costs each request at most twice
//! `reconnect_wait` until the coordinator marks the replica Down and skips
//! it.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike};

use super::Inner;
use crate::error::ReplicaError;

/// Longest single wait on fred's connection notification before the state
/// is read again (its notification can be missed between the two).
const POLL: Duration = Duration::from_millis(5);

/// How often [`Inner::wait_reconnected`] looks for the new
/// connection.
const RECONNECT_POLL: Duration = Duration::from_millis(1);

/// The texts of fred's errors for a command that was on a connection when
/// it closed (it is not written twice) or that found no connection: the
/// connection dropped, not the command refused.
const DROPPED_CONNECTION_ERRORS: [&str; 2] =
    ["Too many failed write attempts", "Failed to route command"];

/// True when fred's `error` says the connection dropped under the command.
pub(super) fn is_dropped_connection(error: &fred::error::Error) -> bool {
    DROPPED_CONNECTION_ERRORS
        .iter()
        .any(|text| error.details().starts_with(text))
}

impl Inner {
    /// Waits up to `reconnect_wait` for `client` to be connected; true if
    /// it is.
    pub(super) async fn wait_connected(&self, client: &Client) -> bool {
        let deadline = Instant::now() + self.reconnect_wait;
        loop {
            if client.is_connected() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let wait = left.min(POLL);
            let started = Instant::now();
            // Boxed: see `run_id`.
            let notified = Box::pin(tokio::time::timeout(wait, client.wait_for_connect())).await;
            if matches!(notified, Ok(Err(_))) {
                // A failed attempt is announced at once: do not spin on it.
                tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
            }
        }
    }

    /// Waits up to `reconnect_wait` for a connection newer than
    /// `generation` to be up. fred still reports the dropped connection as
    /// connected until its reconnection delay has passed: a request sent
    /// then is queued, written on the next connection and refused (its run
    /// id may be stale, see `process.rs`).
    async fn wait_reconnected(&self, generation: u64) {
        let deadline = Instant::now() + self.reconnect_wait;
        while self.identity.generation(&self.client) == generation || !self.client.is_connected() {
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(RECONNECT_POLL).await;
        }
    }

    /// Runs `request` (one call on the main connection), and once more when
    /// it failed as unavailable although the connection was up when it
    /// started or was replaced while it ran (it dropped under the request),
    /// if at most half the deadline has passed. The second run waits for
    /// the new connection (see `ensure_usable`).
    pub(super) async fn retrying<T, F>(&self, request: impl Fn() -> F) -> Result<T, ReplicaError>
    where
        F: Future<Output = Result<T, ReplicaError>>,
    {
        let started = Instant::now();
        let connected = self.client.is_connected();
        let generation = self.identity.generation(&self.client);
        match request().await {
            Err(error @ ReplicaError::Unavailable { .. })
                if super::witness::is_witness_loss(&error) =>
            {
                // A lost Cluster slot: the caller renews (`witness.rs`).
                Err(error)
            }
            Err(ReplicaError::Unavailable { detail, .. })
                if started.elapsed() < self.timeout / 2
                    && (connected || self.identity.generation(&self.client) != generation) =>
            {
                tracing::debug!(
                    replica = %self.name, %detail,
                    "connection dropped during a request: made again on the new connection"
                );
                self.wait_reconnected(generation).await;
                request().await
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::prelude::ErrorKind;

    #[test]
    fn fred_dropped_connection_errors_are_recognised() {
        let dropped =
            fred::error::Error::new(ErrorKind::Unknown, "Too many failed write attempts.");
        assert!(is_dropped_connection(&dropped));
        let routed = fred::error::Error::new(ErrorKind::Unknown, "Failed to route command.");
        assert!(is_dropped_connection(&routed));
        let script = fred::error::Error::new(ErrorKind::Unknown, "ERR Too many failed");
        assert!(!is_dropped_connection(&script));
    }
}
