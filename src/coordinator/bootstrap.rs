//! Learning the replicas' epochs at start ([`Coordinator::initialize`]),
//! marking a brand-new cluster complete, and the operator's override when
//! too many replicas lost their data ([`Coordinator::accept_data_loss`]).

use tracing::warn;

use crate::core::ReplicaIndex;
use crate::error::Result;
use crate::replica::Epoch;

use super::Coordinator;

impl Coordinator {
    /// Pings every replica to learn its epoch. When every replica answers,
    /// none is complete and none holds a key, the cluster is new: every epoch
    /// is marked complete (misses count from then on). Returns the number of
    /// replicas that answered.
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
        if epochs.len() == self.replica_count() && epochs.iter().all(|(_, e)| !e.complete) {
            self.bootstrap_fresh_cluster(&epochs).await;
        }
        epochs.len()
    }

    async fn bootstrap_fresh_cluster(&self, epochs: &[(ReplicaIndex, Epoch)]) {
        for &(index, _) in epochs {
            let replica = self.inner.replicas[index].clone();
            match self.call(index, replica.scan("0", 1)).await {
                Ok(page) if page.keys.is_empty() => {}
                _ => return, // holds data, or unknown: refilled by anti-entropy instead
            }
        }
        for &(index, epoch) in epochs {
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

    /// Operator override: marks replica `index`'s current epoch complete
    /// without a refill, so that its misses count again. Use it only after
    /// more than N − W replicas lost their data at once, when no pass can
    /// prove a refill complete and reads stay `Unavailable`: writes
    /// acknowledged only by the lost replicas are gone, and accepting that is
    /// the point of the call. Returns `false` if the replica's epoch changed
    /// meanwhile.
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
