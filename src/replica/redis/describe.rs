//! `Replica::describe` on Redis: `DBSIZE`, `INFO server`/`INFO memory` and
//! `CONFIG GET maxmemory-policy`, on every primary in Cluster mode.

use fred::prelude::*;
use fred::types::InfoKind;

use super::Inner;
use crate::error::ReplicaError;
use crate::replica::ReplicaInfo;

impl Inner {
    pub(super) async fn describe(&self) -> Result<ReplicaInfo, ReplicaError> {
        self.ensure_usable().await?;
        let mut info = ReplicaInfo::default();
        for node in self.scan_nodes() {
            let call = async {
                let (keys, server, memory, policy) = match &node {
                    Some(server) => {
                        let node = self.client.with_cluster_node(server.clone());
                        (
                            node.dbsize::<u64>().await?,
                            node.info::<String>(Some(InfoKind::Server)).await?,
                            node.info::<String>(Some(InfoKind::Memory)).await?,
                            // Best effort: managed Redis often disables CONFIG.
                            node.config_get::<Vec<(String, String)>, _>("maxmemory-policy")
                                .await
                                .unwrap_or_default(),
                        )
                    }
                    None => (
                        self.client.dbsize::<u64>().await?,
                        self.client.info::<String>(Some(InfoKind::Server)).await?,
                        self.client.info::<String>(Some(InfoKind::Memory)).await?,
                        self.client
                            .config_get::<Vec<(String, String)>, _>("maxmemory-policy")
                            .await
                            .unwrap_or_default(),
                    ),
                };
                Ok::<_, fred::error::Error>((keys, server, memory, policy))
            };
            let (keys, server, memory, policy) = self.finish(
                "describe",
                None,
                tokio::time::timeout(self.timeout, call).await,
            )?;
            add(&mut info.keys, Some(keys));
            add(
                &mut info.used_memory_bytes,
                info_field(&memory, "used_memory"),
            );
            add(&mut info.max_memory_bytes, info_field(&memory, "maxmemory"));
            if info.version.is_none() {
                info.version = info_text(&server, "redis_version");
            }
            if let Some((_, policy)) = policy.into_iter().find(|(k, _)| k == "maxmemory-policy") {
                // Several primaries: the first that is not `noeviction` shows.
                if info
                    .eviction_policy
                    .as_deref()
                    .is_none_or(|p| p == "noeviction")
                {
                    info.eviction_policy = Some(policy);
                }
            }
        }
        Ok(info)
    }
}

fn add(total: &mut Option<u64>, value: Option<u64>) {
    if let Some(value) = value {
        *total = Some(total.unwrap_or(0) + value);
    }
}

/// `name:value` of an `INFO` reply.
fn info_text(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end().split_once(':')?;
        (key == name).then(|| value.to_owned())
    })
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info_text(info, name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory:0\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1024));
        assert_eq!(info_field(info, "maxmemory"), Some(0));
        assert_eq!(
            info_text(info, "used_memory_human").as_deref(),
            Some("1.00K")
        );
        assert_eq!(info_field(info, "missing"), None);
    }
}
