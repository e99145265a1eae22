//! Many keys per round trip, for anti-entropy: `Replica::read_many` and
//! `Replica::merge_many` on Redis (standalone and Sentinel; Cluster mode
//! takes the one-key-at-a-time defaults).
//!
//! - `read_many`: `MGET <epoch> <epoch:run>`, `HGETALL` of every key,
//!   `MGET <epoch> <epoch:run>` again, in one fred pipeline. The two `MGET`s
//!   bracket every `HGETALL` exactly as they bracket the one of a single
//!   read (see the module docs of `replica::redis`), so one epoch answers for the
//!   whole batch.
//! - `merge_many`: a refill creates nearly every record it sends, and the
//!   merge script is costly (it moves every byte of the record in and out of
//!   Lua). A record that is absent is created with `RESTORE` of its `DUMP`
//!   payload built here (`dump.rs`), without `REPLACE`: Redis creates it only
//!   if the key is absent, atomically, and answers `BUSYKEY` otherwise; those
//!   keys, and records already past their expiry, go through the merge
//!   script. On an absent key the merge script stores exactly the delta
//!   normalized at `now` (`apply_merge` with nothing stored), with
//!   `PEXPIREAT` at its effective expiry plus [`EXPIRY_MARGIN_MS`]: the
//!   payload holds that record's hash pairs and `RESTORE … ABSTTL` sets that
//!   expiry. The creates are bracketed by the epoch like `read_many`.

use std::sync::Arc;

use fred::clients::Pipeline;
use fred::prelude::*;

use super::{dump, Inner, EXPIRY_MARGIN_MS};
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{Epoch, MergeMode, MergeReply, MergeStatus, ReadReply};

/// An error for every key of a batch that failed as a whole.
pub(super) fn for_each_key<T>(count: usize, error: &ReplicaError) -> Vec<Result<T, ReplicaError>> {
    (0..count).map(|_| Err(duplicate(error))).collect()
}

/// The same error, without its source (which cannot be cloned).
pub(super) fn duplicate(error: &ReplicaError) -> ReplicaError {
    match error {
        ReplicaError::Unavailable { detail, .. } => ReplicaError::Unavailable {
            detail: detail.clone(),
            source: None,
        },
        ReplicaError::Timeout { after } => ReplicaError::Timeout { after: *after },
        ReplicaError::Corrupt { detail } => ReplicaError::Corrupt {
            detail: detail.clone(),
        },
        ReplicaError::Refused { detail, .. } => ReplicaError::Refused {
            detail: detail.clone(),
            source: None,
        },
        ReplicaError::Skipped => ReplicaError::Skipped,
    }
}

impl Inner {
    /// `Replica::read_many`, see the module docs.
    pub(super) async fn read_batch(&self, keys: &[String]) -> Vec<Result<ReadReply, ReplicaError>> {
        if self.clustered || keys.is_empty() {
            return futures::future::join_all(keys.iter().map(|key| self.read_record(key))).await;
        }
        for key in keys {
            if let Err(error) = self.check_key(key) {
                return for_each_key(keys.len(), &error);
            }
        }
        let commands = keys
            .iter()
            .map(|key| KeyCommand::Hgetall(self.redis_key(key)))
            .collect();
        let (epoch, hashes) = match self.bracketed(commands).await {
            Ok(answers) => answers,
            Err(error) => return for_each_key(keys.len(), &error),
        };
        keys.iter()
            .zip(hashes)
            .map(|(key, hash)| {
                let hash = hash.map_err(|error| self.map_command_error("read", key, error))?;
                let (record, _) = self.decode_hash(key, hash)?;
                Ok(ReadReply { record, epoch })
            })
            .collect()
    }

    /// `Replica::merge_many`, see the module docs.
    pub(super) async fn merge_batch(
        self: &Arc<Self>,
        items: &[(String, Arc<Record>)],
        now_ms: u64,
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        let merge_one = |index: usize| {
            let (key, delta) = &items[index];
            self.merge_queued(key, delta, MergeMode::Upsert, now_ms)
        };
        if self.clustered || items.is_empty() {
            return futures::future::join_all((0..items.len()).map(merge_one)).await;
        }
        // The record each absent key gets, with its Redis TTL, or `None`
        // when the merge script must decide (past its expiry, or refused).
        let mut creates: Vec<Option<(Vec<u8>, i64)>> = items
            .iter()
            .map(|(key, delta)| {
                self.check_key(key).ok()?;
                let effective = delta.effective_expiry_ms();
                if effective <= now_ms {
                    return None;
                }
                let at = i64::try_from(effective + EXPIRY_MARGIN_MS).ok()?;
                // Normalizing drops fields of a tombstone and entries past
                // their `until`: copy the record only when there are some.
                let normal = delta.tombstone.is_none()
                    && delta
                        .fields
                        .values()
                        .all(|e| e.until_ms.is_none_or(|u| u >= now_ms));
                let payload = if normal {
                    delta.check_shape().ok()?;
                    dump::record_payload(delta, self.stored_format)
                } else {
                    let mut record = (**delta).clone();
                    record.normalize(now_ms);
                    record.check_shape().ok()?;
                    dump::record_payload(&record, self.stored_format)
                };
                Some((payload, at))
            })
            .collect();
        let to_create: Vec<usize> = (0..items.len()).filter(|&i| creates[i].is_some()).collect();
        let commands: Vec<KeyCommand> = to_create
            .iter()
            .map(|&index| {
                let (payload, at) = creates[index].take().expect("a payload");
                KeyCommand::Restore {
                    key: self.redis_key(&items[index].0),
                    at,
                    payload,
                }
            })
            .collect();
        let restored = if commands.is_empty() {
            Ok((None, Vec::new()))
        } else {
            self.bracketed(commands)
                .await
                .map(|(epoch, answers)| (Some(epoch), answers))
        };
        let (epoch, answers) = match restored {
            Ok(answers) => answers,
            Err(error) => return for_each_key(items.len(), &error),
        };
        // Keys not created (present, refused, expired) take the merge script.
        let mut replies: Vec<Option<Result<MergeReply, ReplicaError>>> =
            (0..items.len()).map(|_| None).collect();
        for (&index, answer) in to_create.iter().zip(answers) {
            let epoch = epoch.expect("an epoch when something was created");
            replies[index] = match answer {
                Ok(_) => Some(Ok(MergeReply {
                    status: MergeStatus::Applied,
                    epoch,
                    held_max: None,
                })),
                // BUSYKEY: the key exists; anything else: let the script say.
                Err(_) => None,
            };
        }
        let rest = replies
            .iter()
            .enumerate()
            .filter(|(_, reply)| reply.is_none())
            .map(|(index, _)| index)
            .collect::<Vec<_>>();
        let merged = futures::future::join_all(rest.iter().map(|&index| merge_one(index))).await;
        for (index, reply) in rest.into_iter().zip(merged) {
            replies[index] = Some(reply);
        }
        replies
            .into_iter()
            .map(|reply| reply.expect("every key answered"))
            .collect()
    }

    /// Runs one command per key between two `MGET`s of the epoch and run
    /// keys, in one fred pipeline, and returns the epoch that held for all
    /// of them (see `read_many` in the module docs) and each command's
    /// answer, in order.
    async fn bracketed(
        &self,
        commands: Vec<KeyCommand>,
    ) -> Result<(Epoch, Vec<Result<Value, fred::error::Error>>), ReplicaError> {
        // On the bulk connection: see `Inner::bulk`.
        let (client, identity) = self.bulk_link();
        self.ensure_usable_on(client).await?;
        let (generation, run_id) = self.run_id_on(client, identity).await?;
        let count = commands.len();
        let deadline = self.timeout * BATCH_TIMEOUT_FACTOR;
        let call = async {
            // The pipeline's own deadline is the batch's (fred applies the
            // first command's timeout to the whole pipeline; the default is
            // one request's).
            let options = Options {
                timeout: Some(deadline),
                ..Options::default()
            };
            let pipeline = Pipeline::from(client.with_options(&options));
            let ids = || vec![self.epoch_fred_key.clone(), self.run_fred_key.clone()];
            // Queuing only stores the command: each await returns at once.
            pipeline.mget::<(), _>(ids()).await?;
            for command in commands {
                match command {
                    KeyCommand::Hgetall(key) => pipeline.hgetall::<(), _>(key).await?,
                    KeyCommand::Restore { key, at, payload } => {
                        pipeline
                            .restore::<(), _>(
                                key,
                                at,
                                Value::Bytes(payload.into()),
                                false,
                                true,
                                None,
                                None,
                            )
                            .await?
                    }
                }
            }
            pipeline.mget::<(), _>(ids()).await?;
            Ok::<_, fred::error::Error>(Box::pin(pipeline.try_all::<Value>()).await)
        };
        let mut answers = self.finish("batch", None, tokio::time::timeout(deadline, call).await)?;
        identity.check(&self.name, client, generation)?;
        if answers.len() != count + 2 {
            // fred answers a pipeline that failed as a whole (timed out,
            // connection lost) with that one error.
            return Err(match answers.pop() {
                Some(Err(error)) if answers.is_empty() => {
                    self.map_command_error("batch", "", error)
                }
                _ => self.malformed("batch"),
            });
        }
        let after = answers.pop().expect("two MGETs");
        let before = answers.remove(0);
        let ids = |answer: Result<Value, fred::error::Error>| {
            answer.map_err(|error| self.map_command_error("batch", "", error))
        };
        let epoch = self.epoch_between(ids(before)?, ids(after)?, &run_id)?;
        if !epoch.is_some_and(|epoch| epoch.complete) {
            // The keyspace may have changed: reads confirm it again.
            self.confirmed.forget();
        }
        let epoch = match epoch {
            Some(epoch) => epoch,
            None => Box::pin(self.new_epoch_after_read()).await?,
        };
        Ok((epoch, answers))
    }
}

/// One command of a [`Inner::bracketed`] batch.
enum KeyCommand {
    Hgetall(String),
    Restore {
        key: String,
        at: i64,
        payload: Vec<u8>,
    },
}

/// A batch may take longer than one request: its deadline is this many
/// request deadlines.
const BATCH_TIMEOUT_FACTOR: u32 = 4;
