//! `SCAN` under the prefix (every primary in Cluster mode), `UNLINK`, and
//! `wipe`.

use fred::prelude::*;

use super::wire::{glob_escape, split_cursor};
use super::{Inner, SCAN_COUNT_MAX, WIPE_BATCH};
use crate::error::ReplicaError;
use crate::replica::ScanPage;

impl Inner {
    pub(super) async fn scan_page(
        &self,
        cursor: &str,
        count: usize,
    ) -> Result<ScanPage, ReplicaError> {
        let nodes = self.scan_nodes();
        let bad_cursor = || ReplicaError::Refused {
            detail: format!("{}: bad scan cursor {cursor:?}", self.name),
            source: None,
        };
        let (node_index, redis_cursor) = split_cursor(cursor).ok_or_else(bad_cursor)?;
        let node = nodes.get(node_index).ok_or_else(bad_cursor)?;
        let (next, full_keys) = self.scan_raw(node, redis_cursor, count).await?;
        let keys = full_keys
            .iter()
            .filter(|key| {
                **key != self.epoch_key
                    && **key != self.run_key
                    && **key != self.lease_key
                    && **key != self.renewal_key
                    && !self.is_witness_key(key)
            })
            .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_owned))
            .collect();
        let next_cursor = match (next.as_str(), self.clustered) {
            ("0", _) if node_index + 1 < nodes.len() => Some(format!("{}:0", node_index + 1)),
            ("0", _) => None,
            (next, true) => Some(format!("{node_index}:{next}")),
            (next, false) => Some(next.to_owned()),
        };
        Ok(ScanPage { keys, next_cursor })
    }

    /// The nodes a scan walks: one `None` (the client's node) unless
    /// clustered, else every primary, in a stable order.
    pub(super) fn scan_nodes(&self) -> Vec<Option<Server>> {
        if !self.clustered {
            return vec![None];
        }
        let mut nodes = self
            .client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default();
        nodes.sort_by_key(|server| server.to_string());
        nodes.into_iter().map(Some).collect()
    }

    /// One `SCAN` page of full Redis keys under the prefix, on one node.
    pub(super) async fn scan_raw(
        &self,
        node: &Option<Server>,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), ReplicaError> {
        let (client, _) = self.bulk_link();
        self.ensure_usable_on(client).await?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let count = Some(count.clamp(1, SCAN_COUNT_MAX) as u32);
        let call = async {
            let (next, keys): (String, Vec<Key>) = match node {
                Some(server) => {
                    client
                        .with_cluster_node(server.clone())
                        .scan_page(cursor.to_owned(), pattern, count, None)
                        .await?
                }
                None => {
                    client
                        .scan_page(cursor.to_owned(), pattern, count, None)
                        .await?
                }
            };
            let keys = keys
                .iter()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect();
            Ok::<_, fred::error::Error>((next, keys))
        };
        self.finish("scan", None, tokio::time::timeout(self.timeout, call).await)
    }

    /// Deletes full Redis keys (in Cluster mode one by one: they may live in
    /// different slots).
    pub(super) async fn unlink(&self, keys: Vec<String>) -> Result<(), ReplicaError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.ensure_usable().await?;
        let call = async {
            if self.clustered {
                let deletes = keys.iter().map(|key| self.client.unlink::<i64, _>(key));
                for result in futures::future::join_all(deletes).await {
                    result?;
                }
            } else {
                self.client.unlink::<i64, _>(keys).await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        self.finish(
            "unlink",
            None,
            tokio::time::timeout(self.timeout, call).await,
        )
    }

    pub(super) async fn wipe_all(&self) -> Result<(), ReplicaError> {
        self.confirmed.forget();
        self.unlink(self.epoch_key_names()).await?;
        for node in self.scan_nodes() {
            let mut cursor = "0".to_owned();
            loop {
                let (next, keys) = self.scan_raw(&node, &cursor, WIPE_BATCH).await?;
                self.unlink(keys).await?;
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        self.unlink(self.epoch_key_names()).await?;
        self.confirmed.forget();
        Ok(())
    }
}
