//! Learning the replicas' epochs at start ([`Coordinator::initialize`]),
//! marking a brand-new cluster complete, and the operator's override when
//! too many replicas lost their data ([`Coordinator::accept_data_loss`]).
//!
//! A cluster is new only when every replica answers, none is complete and
//! none holds a key, **by a whole SCAN** ([`BOOTSTRAP_SCAN_PAGES_MAX`]): a
//! Redis may answer the first page (or many) empty with a cursor that is not
//! `"0"`. Every replica in a new, incomplete epoch *with data* is a
//! full-cluster restart with persistence (every Redis reloaded its RDB/AOF)
//! — or, as far as the coordinator can tell, a restart of every Redis empty
//! that took writes (creates, touches) before the next tick scanned it:
//! the data may lack acknowledged writes and logouts, no pass can prove a
//! refill complete, and nothing is marked complete: reads stay
//! `Unavailable` until the operator decides (README, "Runbook: a
//! full-cluster restart with persistence"; [`Coordinator::accept_data_loss`]).
//! Telling the two apart (keys loaded from a snapshot against keys written
//! since) is not done yet: both go to the operator.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use crate::core::ReplicaIndex;
use crate::error::Result;
use crate::replica::Epoch;

use super::Coordinator;

/// Most SCAN pages [`Coordinator::initialize`] reads from one replica to
/// decide that it holds no key, [`AntiEntropyConfig::scan_batch`] keys
/// asked per page. A replica whose scan is not over by then (a Redis
/// database shared with more foreign keys than that, and no key of ours),
/// or whose scan fails, is not taken for empty: the cluster is not
/// bootstrapped by itself (the background task asks again), and the
/// operator decides ([`Coordinator::accept_data_loss`]).
///
/// [`AntiEntropyConfig::scan_batch`]: crate::AntiEntropyConfig::scan_batch
pub const BOOTSTRAP_SCAN_PAGES_MAX: usize = 1_000;

/// What a whole scan of one replica found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contents {
    /// The scan ended without a key.
    Empty,
    /// A key was seen (the scan stops there).
    Data,
    /// The scan failed or did not end within [`BOOTSTRAP_SCAN_PAGES_MAX`].
    Unknown,
}

impl Coordinator {
    /// Pings every replica to learn its epoch. When every replica answers,
    /// none is complete and none holds a key (a whole SCAN, not its first
    /// page), the cluster is new: every epoch is marked complete (misses
    /// count from then on). When every replica answers in a new, incomplete
    /// epoch and one holds data (a full-cluster restart with persistence),
    /// nothing is marked complete: reads stay `Unavailable` until the
    /// operator calls [`Coordinator::accept_data_loss`] (counted in
    /// [`CoordinatorStats::bootstraps_refused`](crate::CoordinatorStats)).
    /// The background task calls it again while no replica is readable.
    /// Returns the number of replicas that answered.
    pub async fn initialize(&self) -> usize {
        let results = self
            .on_every_replica(|replica| async move { replica.ping().await })
            .await;
        let mut epochs = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            if let Ok(epoch) = result {
                self.observe_epoch(index, epoch);
                epochs.push((index, epoch));
            }
        }
        if self.config().bootstrap_new_cluster
            && epochs.len() == self.replica_count()
            && epochs.iter().all(|(_, e)| !e.complete)
        {
            self.bootstrap_fresh_cluster(&epochs).await;
        }
        epochs.len()
    }

    async fn bootstrap_fresh_cluster(&self, epochs: &[(ReplicaIndex, Epoch)]) {
        let mut with_data = Vec::new();
        for &(index, _) in epochs {
            match self.contents(index).await {
                Contents::Empty => {}
                Contents::Data => with_data.push(self.inner.replicas[index].name()),
                Contents::Unknown => return, // asked again on the next tick
            }
        }
        if !with_data.is_empty() {
            let first = self
                .inner
                .counters
                .bootstraps_refused
                .fetch_add(1, Ordering::Relaxed)
                == 0;
            let message = "every replica is in a new, incomplete epoch and some hold data \
                 (a full-cluster restart from persistence?): nothing is trusted, reads are \
                 Unavailable until the operator decides (Coordinator::accept_data_loss, \
                 README: \"Runbook: a full-cluster restart with persistence\")";
            if first {
                warn!(?with_data, "{message}");
            } else {
                debug!(?with_data, "{message}");
            }
            return;
        }
        for &(index, epoch) in epochs {
            if self.lock().epochs.is_write_only(index) {
                continue; // marked by a coordinator that reads it
            }
            let replica = self.inner.replicas[index].clone();
            if let Ok(true) = self
                .call(index, replica.mark_epoch_complete(epoch.id))
                .await
            {
                self.lock().epochs.mark_complete(index, epoch.id);
            }
        }
        tracing::info!(
            replicas = epochs.len(),
            "new cluster: every replica's epoch marked complete"
        );
    }

    /// Scans replica `index` until its first key or the end of the scan,
    /// at most [`BOOTSTRAP_SCAN_PAGES_MAX`] pages: an empty page with a
    /// cursor says nothing.
    async fn contents(&self, index: ReplicaIndex) -> Contents {
        let replica = self.inner.replicas[index].clone();
        let count = self.config().anti_entropy.scan_batch;
        let mut cursor = "0".to_owned();
        for _ in 0..BOOTSTRAP_SCAN_PAGES_MAX {
            let Ok(page) = self.call(index, replica.scan(&cursor, count)).await else {
                return Contents::Unknown;
            };
            if !page.keys.is_empty() {
                return Contents::Data;
            }
            match page.next_cursor {
                Some(next) => cursor = next,
                None => return Contents::Empty,
            }
        }
        Contents::Unknown
    }

    /// The replicas in a known epoch that is not complete (they lost data
    /// and are not refilled yet), and whether they are more than anti-entropy
    /// can refill (fewer complete replicas than a refill needs as sources):
    /// then only the operator ([`accept_data_loss`](Self::accept_data_loss))
    /// can make reads conclusive again.
    pub(crate) fn data_loss(&self) -> (Vec<String>, bool) {
        let n = self.replica_count();
        let state = self.lock();
        let lost: Vec<String> = (0..n)
            .filter(|&i| {
                state.epochs.current(i).is_some()
                    && !state.epochs.is_readable(i)
                    && !state.epochs.is_write_only(i)
            })
            .map(|i| self.inner.replicas[i].name().to_owned())
            .collect();
        let complete = (0..n).filter(|&i| state.epochs.is_readable(i)).count();
        let sources = crate::core::anti_entropy::sources_needed(n, self.config().write_quorum);
        let stuck = !lost.is_empty() && complete < sources;
        (lost, stuck)
    }

    /// Operator override: marks replica `index`'s current epoch complete
    /// without a refill, so that its misses count again. Returns `false` if
    /// the replica's epoch changed meanwhile.
    ///
    /// Use it only when no anti-entropy pass can prove a refill complete and
    /// reads stay `Unavailable`; writes acknowledged only by the lost data
    /// are gone, and accepting that is the point of the call:
    ///
    /// - **more than N − W replicas lost their data at once** (restarted
    ///   empty): first run one [`Coordinator::anti_entropy`] pass that
    ///   covers every replica (it copies what the survivors hold into the
    ///   lost ones, marking nothing), then call
    ///   [`accept_data_loss_of`](Self::accept_data_loss_of) with the epoch
    ///   each lost replica had during that pass, for **every** lost replica
    ///   (what `qs-admin accept-data-loss` does). Marking a lost replica
    ///   that was *not* refilled first would let its misses, with another's,
    ///   prove absent the sessions a survivor still holds;
    /// - **a full-cluster restart with persistence**: every replica came
    ///   back from its own RDB/AOF snapshot in a new, incomplete epoch
    ///   ([`Coordinator::initialize`] refuses to take that for a new
    ///   cluster; [`CoordinatorStats::bootstraps_refused`] counts it). The
    ///   snapshots may lack acknowledged sessions and logouts made after
    ///   them. First run [`Coordinator::anti_entropy`] once: with no
    ///   complete replica it marks nothing, but it merges every replica's
    ///   data into the others (a logout in any snapshot wins everywhere).
    ///   Then call this on **every** replica. Logouts newer than every
    ///   snapshot are undone: if that is not acceptable, empty the replicas
    ///   instead (`FLUSHALL` on each): the next [`Coordinator::initialize`]
    ///   (the background task calls it) bootstraps an empty cluster, and
    ///   every user logs in again. See the README, "Runbook: a full-cluster
    ///   restart with persistence".
    ///
    /// [`CoordinatorStats::bootstraps_refused`]: crate::CoordinatorStats::bootstraps_refused
    ///
    /// # Errors
    ///
    /// The replica's error when it cannot be reached.
    ///
    /// # Panics
    ///
    /// If `index` is not a replica index.
    pub async fn accept_data_loss(
        &self,
        index: ReplicaIndex,
    ) -> Result<bool, crate::error::ReplicaError> {
        let replica = self.inner.replicas[index].clone();
        let epoch = self.call(index, replica.ping()).await?;
        self.accept_data_loss_of(index, epoch.id).await
    }

    /// [`accept_data_loss`](Self::accept_data_loss) of one epoch: marks
    /// replica `index` complete only if it is still in epoch `epoch_id`
    /// (e.g. the epoch a pass just refilled; one that restarted since is
    /// left alone and `false` returned).
    ///
    /// # Errors
    ///
    /// The replica's error when it cannot be reached, and
    /// [`ReplicaError::Refused`](crate::ReplicaError) for a replica this
    /// coordinator holds write-only (`ClusterConfig::write_only`): a server
    /// that does not read it does not decide it is complete.
    ///
    /// # Panics
    ///
    /// If `index` is not a replica index.
    pub async fn accept_data_loss_of(
        &self,
        index: ReplicaIndex,
        epoch_id: u64,
    ) -> Result<bool, crate::error::ReplicaError> {
        let replica = self.inner.replicas[index].clone();
        if self.lock().epochs.is_write_only(index) {
            return Err(crate::error::ReplicaError::Refused {
                detail: format!("{} is write-only for this coordinator", replica.name()),
                source: None,
            });
        }
        let epoch = crate::replica::Epoch {
            id: epoch_id,
            complete: false,
        };
        let marked = self
            .call(index, replica.mark_epoch_complete(epoch.id))
            .await?;
        if marked {
            self.lock().epochs.mark_complete(index, epoch.id);
            warn!(
                replica = replica.name(),
                "epoch marked complete by the operator: data loss accepted"
            );
        }
        Ok(marked)
    }
}
