//! The two read protocols of one record (see "The scripts" in the module
//! docs of [`replica::redis`](super)): `HGETALL` alone on a confirmed epoch,
//! or bracketed by two `MGET <epoch> <epoch:run>`; and the decoding of the
//! hash, from fred's values or straight from the reply frame.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Resp3Frame};

use super::wire::{self, blob, short_key};
use super::{Inner, Via, FIELD_STAMP_SUMMARY, UNTIL_FLAG, WRITE_EPOCH_FIELD};
use crate::codec;
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{Epoch, ReadReply};
use crate::stamp::Stamp;

impl Inner {
    /// One [`Replica::read`] (made once more when the connection dropped
    /// under it, see `reconnect.rs`).
    pub(super) async fn read_once(&self, key: &str) -> Result<ReadReply, ReplicaError> {
        // First: the fast path reads the connection's generation before its
        // command, so a reconnection must be waited for before that.
        self.ensure_usable().await?;
        if self.clustered {
            let (hash, epoch) = Box::pin(self.epoch_bracketed(|| self.read_clustered(key))).await?;
            let (record, _) = self.decode_hash(key, hash)?;
            return Ok(ReadReply { record, epoch });
        }
        if let Some(reply) = self.read_fast(key).await? {
            return Ok(reply);
        }
        let (epoch, hash) = self.read_bracketed(key).await?;
        let (record, _) = self.decode_hash(key, hash)?;
        let epoch = match epoch {
            Some(epoch) => epoch,
            None => Box::pin(self.new_epoch_after_read()).await?,
        };
        Ok(ReadReply { record, epoch })
    }

    /// Cluster mode: the hash of `key`, read by the read script after its
    /// slot's witness check (see `witness.rs`).
    async fn read_clustered(&self, key: &str) -> Result<Value, ReplicaError> {
        let redis_key = self.redis_key(key);
        let witness = self.witness_of(redis_key.as_bytes());
        let request = || (vec![Key::from(redis_key.as_str()), witness.clone()], vec![]);
        let (hash, _) = self
            .eval("read", &self.read_script, request, None, Some(key))
            .await?;
        Ok(hash)
    }

    /// A read when an epoch was confirmed complete on the current
    /// connection (see the module docs): `HGETALL <key>` alone when it finds
    /// a record whose last merge ran in that epoch (`m:ep`); otherwise (a
    /// miss, a record written in another epoch or by a refill) `MGET
    /// <epoch> <epoch:run>` next on the same connection, and the read
    /// counts if that shows the confirmed epoch. `Ok(None)`: no confirmation
    /// to rely on, or the `MGET` did not show it (the confirmation is then
    /// dropped): take the bracketed path.
    pub(super) async fn read_fast(&self, key: &str) -> Result<Option<ReadReply>, ReplicaError> {
        let Some((generation, run_id)) = self.identity.cached(&self.client) else {
            return Ok(None);
        };
        let Some(epoch_id) = self.confirmed.get(generation, std::time::Instant::now()) else {
            return Ok(None);
        };
        let decoded = self.hgetall(key).await;
        self.identity.check(&self.name, &self.client, generation)?;
        let (record, written_in) = decoded?;
        let epoch = Epoch {
            id: epoch_id,
            complete: true,
        };
        if record.is_some() && written_in == Some(epoch_id) {
            return Ok(Some(ReadReply { record, epoch }));
        }
        // Boxed: see `run_id`.
        let call = Box::pin(self.client.mget::<Value, _>(self.epoch_ids()));
        let after = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        self.identity.check(&self.name, &self.client, generation)?;
        if self.epoch_in(after, &run_id)? != Some(epoch) {
            self.confirmed.forget();
            return Ok(None);
        }
        Ok(Some(ReadReply { record, epoch }))
    }

    /// One read outside Cluster mode: `MGET <epoch> <epoch:run>`, `HGETALL
    /// <key>`, `MGET <epoch> <epoch:run>` again, as one fred pipeline (one
    /// message to the connection task, one write; Redis runs them in that
    /// order). Returns the epoch that held while the hash was read (see the
    /// module docs: `None` when there was none made by this process, or it
    /// changed), then the hash.
    pub(super) async fn read_bracketed(
        &self,
        key: &str,
    ) -> Result<(Option<Epoch>, Value), ReplicaError> {
        self.ensure_usable().await?;
        let (generation, run_id) = self.run_id().await?;
        let via = Via::now(generation);
        // Boxed: see `run_id`.
        let call = Box::pin(async {
            let pipeline = self.client.pipeline();
            let () = pipeline.mget(self.epoch_ids()).await?;
            let () = pipeline.hgetall(self.redis_key(key)).await?;
            let () = pipeline.mget(self.epoch_ids()).await?;
            pipeline.all::<Vec<Value>>().await
        });
        let answers = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        let Ok([before, hash, after]) = <[Value; 3]>::try_from(answers) else {
            return Err(self.malformed("read"));
        };
        self.identity.check(&self.name, &self.client, generation)?;
        let epoch = self.epoch_between(before, after, &run_id)?;
        match epoch {
            Some(epoch) => self.note_epoch(Some(via), epoch),
            None => self.confirmed.forget(),
        }
        Ok((epoch, hash))
    }

    /// `HGETALL` of the record `key`, under the deadline, decoded from the
    /// reply frame itself: fred's typed `hgetall` would build a hash map of
    /// owned values first (hashing every field name, checking every value
    /// for UTF-8) only for us to take it apart again, on the hottest path.
    pub(super) async fn hgetall(
        &self,
        key: &str,
    ) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        self.ensure_usable().await?;
        let command = CustomCommand::new_static("HGETALL", ClusterHash::FirstKey, false);
        // Boxed: see `run_id`.
        let call = Box::pin(
            self.client
                .custom_raw(command, vec![Value::from(self.redis_key(key))]),
        );
        let frame = self.finish(
            "read",
            Some(key),
            tokio::time::timeout(self.timeout, call).await,
        )?;
        let error_reply = |text: String| {
            let error = fred::error::Error::new(ErrorKind::Unknown, text);
            self.map_command_error("read", key, error)
        };
        let mut pairs = Vec::new();
        match &frame {
            Resp3Frame::Array { data, .. } if data.len() % 2 == 0 => {
                pairs.reserve(data.len() / 2);
                for pair in data.chunks_exact(2) {
                    match (blob(&pair[0]), blob(&pair[1])) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            Resp3Frame::Map { data, .. } => {
                pairs.reserve(data.len());
                for (name, value) in data {
                    match (blob(name), blob(value)) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            // An error reply (a key of another type answers WRONGTYPE).
            Resp3Frame::SimpleError { data, .. } => return Err(error_reply(data.to_string())),
            Resp3Frame::BlobError { data, .. } => {
                return Err(error_reply(String::from_utf8_lossy(data).into_owned()))
            }
            _ => return Err(self.malformed("read")),
        }
        self.decode_pairs(key, pairs)
    }

    /// Decodes a hash as `HGETALL` answers it (a flat array, or a map with
    /// RESP3): the record, and the epoch id its last merge ran in (`m:ep`,
    /// kept apart from the record: it belongs to this replica, not to the
    /// data).
    pub(super) fn decode_hash(
        &self,
        key: &str,
        hash: Value,
    ) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        let mut pairs = Vec::new();
        let (flat, map);
        match hash {
            Value::Array(array) if array.len() % 2 == 0 => {
                flat = array;
                pairs.reserve(flat.len() / 2);
                for pair in flat.chunks_exact(2) {
                    match (pair[0].as_bytes(), pair[1].as_bytes()) {
                        (Some(name), Some(value)) => pairs.push((name, value)),
                        _ => return Err(self.malformed("read")),
                    }
                }
            }
            Value::Map(resp3) => {
                map = resp3.inner();
                pairs.reserve(map.len());
                for (name, value) in &map {
                    match value.as_bytes() {
                        Some(value) => pairs.push((name.as_bytes(), value)),
                        None => return Err(self.malformed("read")),
                    }
                }
            }
            _ => return Err(self.malformed("read")),
        }
        self.decode_pairs(key, pairs)
    }

    /// A record's hash pairs decoded: the record (see [`codec::decode_pairs`])
    /// and, apart, the `m:ep` of its last merge.
    pub(super) fn decode_pairs(
        &self,
        key: &str,
        mut pairs: Vec<(&[u8], &[u8])>,
    ) -> Result<(Option<Record>, Option<u64>), ReplicaError> {
        let corrupt = |detail: &str| {
            tracing::debug!(replica = %self.name, key = %short_key(key), %detail, "corrupt record");
            ReplicaError::Corrupt {
                detail: format!("{}: {detail}", self.name),
            }
        };
        let mut written_in = None;
        let mut stored_only = false;
        // The write epoch and the summaries: checked as merge.lua checks
        // them, then dropped (they are not part of the record).
        let mut at = 0;
        while at < pairs.len() {
            let (name, value) = pairs[at];
            if name == WRITE_EPOCH_FIELD {
                written_in =
                    Some(wire::parse_epoch_id(value).ok_or_else(|| corrupt("bad write epoch"))?);
            } else if name == FIELD_STAMP_SUMMARY {
                if value != b"-" && Stamp::decode(value).is_none() {
                    return Err(corrupt("bad field stamp summary"));
                }
            } else if name == UNTIL_FLAG {
                if value != b"1" {
                    return Err(corrupt("bad until flag"));
                }
            } else {
                at += 1;
                continue;
            }
            stored_only = true;
            pairs.swap_remove(at);
        }
        if stored_only && pairs.is_empty() {
            // As merge.lua sees it: a hash, but no record in it.
            return Err(corrupt("missing record metadata"));
        }
        let record = codec::decode_pairs(pairs).map_err(|detail| corrupt(&detail))?;
        Ok((record, written_in))
    }
}
