//! `FaultyReplica<R>`: wraps any replica and injects faults, steered at run
//! time through a [`FaultHandle`].
//!
//! Faults: `down` (every call errors at once), `hang` (calls never answer; the
//! coordinator's deadline ends them), `delay` (fixed, or uniform in a range
//! drawn from a seeded RNG), `drop_ack` (writes are applied, their replies
//! lost), `corrupt` (calls fail as if the data did not decode), and `wipe`
//! (the inner replica loses everything).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Epoch, MergeMode, MergeReply, ReadReply, Replica, ScanPage};
use crate::error::ReplicaError;
use crate::record::Record;

/// The fault currently injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass every call through.
    None,
    /// Fail every call with [`ReplicaError::Unavailable`].
    Down,
    /// Never answer.
    Hang,
    /// Answer after a fixed delay.
    Delay(Duration),
    /// Answer after a delay drawn uniformly from `min..=max` (seeded).
    DelayBetween {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Apply writes, then lose the reply (reported as unreachable).
    DropAck,
    /// Answer every read with [`ReplicaError::Corrupt`] (undecodable data).
    Corrupt,
}

#[derive(Debug)]
struct Control {
    fault: Fault,
    rng: StdRng,
}

/// Steers one [`FaultyReplica`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    control: Arc<Mutex<Control>>,
    wipe_target: Arc<dyn Replica>,
}

impl FaultHandle {
    /// Sets the fault.
    pub fn set(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Every call fails at once.
    pub fn down(&self) {
        self.set(Fault::Down);
    }

    /// Calls never answer.
    pub fn hang(&self) {
        self.set(Fault::Hang);
    }

    /// Calls answer after `delay`.
    pub fn delay(&self, delay: Duration) {
        self.set(Fault::Delay(delay));
    }

    /// Writes are applied but their replies lost.
    pub fn drop_ack(&self) {
        self.set(Fault::DropAck);
    }

    /// Back to normal.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// The inner replica loses everything, epoch included.
    ///
    /// # Errors
    ///
    /// What the inner replica's `wipe` returns.
    pub async fn wipe(&self) -> Result<(), ReplicaError> {
        self.wipe_target.wipe().await
    }

    /// The current fault.
    pub fn current(&self) -> Fault {
        self.lock().fault.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A replica with injected faults. See the module docs.
#[derive(Debug)]
pub struct FaultyReplica<R: Replica> {
    inner: Arc<R>,
    handle: FaultHandle,
}

impl<R: Replica> FaultyReplica<R> {
    /// Wraps `inner`; `seed` drives the random delays.
    pub fn new(inner: R, seed: u64) -> (FaultyReplica<R>, FaultHandle) {
        let inner = Arc::new(inner);
        let handle = FaultHandle {
            control: Arc::new(Mutex::new(Control {
                fault: Fault::None,
                rng: StdRng::seed_from_u64(seed),
            })),
            wipe_target: inner.clone(),
        };
        (
            FaultyReplica {
                inner,
                handle: handle.clone(),
            },
            handle,
        )
    }

    /// The wrapped replica.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Applies the fault before a call: `Err` for `Down`, waits for delays,
    /// never returns for `Hang`. Returns whether the reply must be dropped.
    async fn before_call(&self) -> Result<bool, ReplicaError> {
        let wait = {
            let mut control = self.handle.lock();
            match control.fault.clone() {
                Fault::None => None,
                Fault::DropAck => return Ok(true),
                Fault::Corrupt => {
                    return Err(ReplicaError::Corrupt {
                        detail: format!("{} holds undecodable data (injected)", self.inner.name()),
                    })
                }
                Fault::Down => {
                    return Err(ReplicaError::Unavailable {
                        detail: format!("{} is down (injected)", self.inner.name()),
                        source: None,
                    })
                }
                Fault::Hang => Some(Duration::MAX),
                Fault::Delay(delay) => Some(delay),
                Fault::DelayBetween { min, max } => Some(control.rng.random_range(min..=max)),
            }
        };
        match wait {
            Some(Duration::MAX) => std::future::pending().await,
            Some(delay) => tokio::time::sleep(delay).await,
            None => {}
        }
        Ok(false)
    }

    fn dropped(&self) -> ReplicaError {
        ReplicaError::Unavailable {
            detail: format!("reply from {} lost (injected)", self.inner.name()),
            source: None,
        }
    }
}

#[async_trait]
impl<R: Replica> Replica for FaultyReplica<R> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        self.before_call().await?;
        self.inner.read(key).await
    }

    async fn merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        let drop_reply = self.before_call().await?;
        let reply = self.inner.merge(key, delta, mode, now_ms).await?;
        if drop_reply {
            return Err(self.dropped());
        }
        Ok(reply)
    }

    async fn scan(&self, cursor: &str, count: usize) -> Result<ScanPage, ReplicaError> {
        self.before_call().await?;
        self.inner.scan(cursor, count).await
    }

    async fn ping(&self) -> Result<Epoch, ReplicaError> {
        self.before_call().await?;
        self.inner.ping().await
    }

    async fn mark_epoch_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        self.before_call().await?;
        self.inner.mark_epoch_complete(epoch_id).await
    }

    async fn acquire_lease(
        &self,
        owner: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, ReplicaError> {
        self.before_call().await?;
        self.inner.acquire_lease(owner, ttl).await
    }

    async fn release_lease(&self, owner: u64) -> Result<(), ReplicaError> {
        self.before_call().await?;
        self.inner.release_lease(owner).await
    }

    async fn wipe(&self) -> Result<(), ReplicaError> {
        self.inner.wipe().await
    }
}
