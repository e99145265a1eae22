//! Read-repair: after a read, the merged record is written back to the
//! replicas whose copy differed, blocking the read or in the background as
//! configured ([`ReadRepair`]); answers that arrive after the read concluded
//! are repaired too.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, Instrument};

use crate::config::ReadRepair;
use crate::core::read::{Absence, ReadResult};
use crate::core::ReplicaIndex;
use crate::error::{ReplicaError, Result};
use crate::record::Record;
use crate::replica::{MergeMode, ReadReply};

use super::stats::bump;
use super::Coordinator;

impl Coordinator {
    pub(super) async fn read_repair(
        &self,
        key: &str,
        merged: Arc<Record>,
        targets: Vec<ReplicaIndex>,
    ) {
        let mode = self.inner.config.read_repair;
        if mode == ReadRepair::Off {
            return;
        }
        let now_ms = self.now_ms();
        let repairs = targets.into_iter().map(|index| {
            bump(&self.inner.counters.read_repairs);
            let (this, key, merged) = (self.clone(), key.to_owned(), merged.clone());
            async move {
                if let Err(error) = this.merge_on(index, &key, &merged, MergeMode::Upsert, now_ms).await {
                    debug!(replica = this.inner.replicas[index].name(), %error, "read-repair failed");
                }
            }
        });
        let repairs: Vec<_> = repairs.collect();
        match mode {
            ReadRepair::Blocking => {
                futures::future::join_all(repairs).await;
            }
            ReadRepair::Background => {
                for repair in repairs {
                    tokio::spawn(repair.in_current_span());
                }
            }
            ReadRepair::Off => {}
        }
    }

    /// Answers still in flight when a read concluded (a tombstone is final on
    /// its own, hedged requests) are collected in the background, and those
    /// that differ from the merged record are read-repaired too.
    pub(super) fn repair_late_answers<F>(
        &self,
        key: &str,
        merged: Option<Record>,
        result: &ReadResult,
        mut in_flight: FuturesUnordered<F>,
    ) where
        F: std::future::Future<Output = (ReplicaIndex, Result<(ReadReply, bool), ReplicaError>)>
            + Send
            + 'static,
    {
        let repairable = matches!(
            result,
            ReadResult::Found(_) | ReadResult::NotFound(Absence::Deleted)
        );
        let Some(merged) =
            merged.filter(|_| repairable && self.inner.config.read_repair != ReadRepair::Off)
        else {
            return;
        };
        let (this, key, merged) = (self.clone(), key.to_owned(), Arc::new(merged));
        let task = async move {
            while let Some((index, result)) = in_flight.next().await {
                let Ok((reply, _)) = result else { continue };
                if reply.record.as_ref() != Some(&*merged) {
                    bump(&this.inner.counters.read_repairs);
                    let now_ms = this.now_ms();
                    let _ = this
                        .merge_on(index, &key, &merged, MergeMode::Upsert, now_ms)
                        .await;
                }
            }
        };
        tokio::spawn(task.in_current_span());
    }
}
