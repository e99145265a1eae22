//! The Lua script calls (`EVALSHA` under the deadline, run id filled in,
//! reloaded on `NOSCRIPT`, made again after a dropped connection) and the
//! merge call (one or more records, see `queue.rs`).

use fred::prelude::*;
use fred::types::scripts::Script;

use fred::bytes::Bytes;

use super::batch::for_each_key;
use super::wire::{self, delta_args, delta_for_wire, epoch_candidate};
use super::{run_id_placeholder, Inner, Via, EXPIRY_MARGIN_ARG, MERGE_RUN_ID_SLOT};
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{Epoch, MergeMode, MergeReply, MergeStatus};
use crate::stamp::{encode_ms, Stamp, PHYSICAL_MAX};

impl Inner {
    /// Runs a script under the deadline and maps its errors. `request`
    /// makes the keys and arguments; `args[run_id_slot]` is a placeholder
    /// for the run id, filled in here outside Cluster mode (`None`: the
    /// script takes no run id). An answer that
    /// arrives after a reconnection is refused (see `process.rs`). On
    /// `NOSCRIPT` (a restarted or flushed Redis) the script is loaded and
    /// the request made and sent again: the usual case sends what `request`
    /// made without copying it.
    ///
    /// Made once more when the connection dropped under it (see
    /// `reconnect.rs`).
    pub(super) async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        request: impl Fn() -> (Vec<Key>, Vec<Value>),
        run_id_slot: Option<usize>,
        key: Option<&str>,
    ) -> Result<(Value, Option<Via>), ReplicaError> {
        let once = || Box::pin(self.eval_once(op, script, &request, run_id_slot, key));
        self.retrying(once).await
    }

    /// One [`eval`](Self::eval).
    pub(super) async fn eval_once(
        &self,
        op: &'static str,
        script: &Script,
        request: &impl Fn() -> (Vec<Key>, Vec<Value>),
        run_id_slot: Option<usize>,
        key: Option<&str>,
    ) -> Result<(Value, Option<Via>), ReplicaError> {
        self.ensure_usable().await?;
        let (via, run_id) = if self.clustered || run_id_slot.is_none() {
            (None, run_id_placeholder())
        } else {
            let (generation, run_id) = self.run_id().await?;
            (Some(Via::now(generation)), run_id)
        };
        let call = async {
            // Boxed: see `run_id`.
            let send = || {
                let (keys, mut args) = request();
                if let Some(slot) = run_id_slot {
                    args[slot] = run_id.clone();
                }
                Box::pin(
                    self.client
                        .evalsha::<Value, _, _, _>(script.sha1().clone(), keys, args),
                )
            };
            match send().await {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    Box::pin(script.load(&self.client)).await?;
                    send().await
                }
                result => result,
            }
        };
        let outcome = tokio::time::timeout(self.timeout, call).await;
        if let (Some(via), Ok(Err(error))) = (via, &outcome) {
            if wire::is_stale_run_id(error) {
                // Nothing was written; the next request learns the run id
                // again (if no reconnection announced it already).
                self.identity.forget(via.generation);
            }
        }
        let reply = self.finish(op, key, outcome)?;
        if let Some(via) = via {
            self.identity
                .check(&self.name, &self.client, via.generation)?;
        }
        Ok((reply, via))
    }

    /// Checks and encodes one merge for [`merge_call`](Self::merge_call).
    pub(super) fn encode_merge(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<WireMerge, ReplicaError> {
        self.check_key(key)?;
        let delta = delta_for_wire(delta);
        if let Err(detail) = delta.check_shape() {
            return Err(ReplicaError::Refused {
                detail: format!("{}: invalid delta: {detail}", self.name),
                source: None,
            });
        }
        let pairs = delta_args(&delta, self.stored_format.version());
        let redis_key = self.redis_key(key);
        let size = redis_key.len() + pairs.iter().map(Bytes::len).sum::<usize>();
        Ok(WireMerge {
            key: key.to_owned(),
            redis_key: Key::from(redis_key),
            mode: match mode {
                MergeMode::Upsert => "u",
                MergeMode::Create => "c",
            },
            now: encode_ms(now_ms.min(PHYSICAL_MAX)),
            pairs,
            size,
        })
    }

    /// Merges every record of `merges` in one script call (one epoch read):
    /// each gets its own reply or error, as if merged alone. A call that
    /// fails as a whole fails every record with the same error.
    pub(super) async fn merge_call(
        &self,
        merges: &[WireMerge],
    ) -> Vec<Result<MergeReply, ReplicaError>> {
        assert!(!merges.is_empty(), "a merge call carries a record");
        assert!(
            !self.clustered || merges.len() == 1,
            "one record per call in Cluster mode (one slot)"
        );
        if self.clustered {
            // One record: its witness loss fails the call as a whole.
            let witness = self.witness_of(merges[0].redis_key.as_bytes());
            let call = || Box::pin(self.merge_call_once(merges, Some(witness.clone())));
            return match self.epoch_bracketed(call).await {
                Ok((mut replies, epoch)) => {
                    for reply in replies.iter_mut().flatten() {
                        reply.epoch = epoch;
                    }
                    replies
                }
                Err(error) => for_each_key(merges.len(), &error),
            };
        }
        match self.merge_call_once(merges, None).await {
            Ok(replies) => replies,
            Err(error) => for_each_key(merges.len(), &error),
        }
    }

    /// One [`merge_call`](Self::merge_call); in Cluster mode with the
    /// witness key of its one record's slot. `Err`: the call failed as a
    /// whole.
    async fn merge_call_once(
        &self,
        merges: &[WireMerge],
        witness: Option<Key>,
    ) -> Result<Vec<Result<MergeReply, ReplicaError>>, ReplicaError> {
        let candidate = epoch_candidate();
        let request = || {
            let mut keys = Vec::with_capacity(merges.len() + 2);
            keys.extend(merges.iter().map(|merge| merge.redis_key.clone()));
            if let Some(witness) = &witness {
                keys.push(witness.clone());
            } else {
                keys.push(self.epoch_fred_key.clone());
                keys.push(self.run_fred_key.clone());
            }
            let items = merges
                .iter()
                .map(|merge| merge.pairs.len() + 3)
                .sum::<usize>();
            let mut args = Vec::with_capacity(4 + items);
            args.push(Value::from(merges.len().to_string()));
            args.push(Value::from(candidate.as_str()));
            args.push(Value::from_static_str(EXPIRY_MARGIN_ARG));
            args.push(run_id_placeholder());
            for merge in merges {
                args.push(Value::from_static_str(merge.mode));
                args.push(Value::from(merge.now.as_str()));
                args.push(Value::from(merge.pairs.len().to_string()));
                args.extend(merge.pairs.iter().cloned().map(Value::Bytes));
            }
            (keys, args)
        };
        let key = (merges.len() == 1).then(|| merges[0].key.as_str());
        let called = self
            .eval(
                "merge",
                &self.merge_script,
                request,
                witness.is_none().then_some(MERGE_RUN_ID_SLOT),
                key,
            )
            .await;
        self.merge_calls.note(merges.len());
        let (reply, via) = called?;
        let items = match reply {
            Value::Array(items) if items.len() == 3 * merges.len() => items,
            _ => return Err(self.malformed("merge")),
        };
        let mut replies = Vec::with_capacity(merges.len());
        for (merge, answer) in merges.iter().zip(items.chunks_exact(3)) {
            let [status, epoch, held] = answer else {
                unreachable!("chunks of three")
            };
            replies.push(self.merge_reply(&merge.key, status, epoch, held, via).await);
        }
        Ok(replies)
    }

    /// One record's reply in a merge call's answer.
    async fn merge_reply(
        &self,
        key: &str,
        status: &Value,
        epoch: &Value,
        held: &Value,
        via: Option<Via>,
    ) -> Result<MergeReply, ReplicaError> {
        let status = match status.as_bytes() {
            Some(b"applied") => MergeStatus::Applied,
            Some(b"gone") => MergeStatus::Gone,
            Some(b"exists") => MergeStatus::Exists,
            Some(b"error") => {
                // This record refused (CORRUPT, a bad delta), as its own
                // error reply would be.
                let text = epoch.as_str().map(|t| t.into_owned()).unwrap_or_default();
                let error = fred::error::Error::new(fred::error::ErrorKind::Unknown, text);
                return Err(self.map_command_error("merge", key, error));
            }
            _ => return Err(self.malformed("merge")),
        };
        let held_max = match held.as_bytes() {
            Some(b"") => None,
            Some(text) => Some(Stamp::decode(text).ok_or_else(|| self.malformed("merge"))?),
            None => return Err(self.malformed("merge")),
        };
        let epoch = if self.clustered {
            // Set by `merge_call` from the epoch read around the call.
            Epoch {
                id: 0,
                complete: false,
            }
        } else {
            self.epoch_from(Some(epoch), via).await?
        };
        Ok(MergeReply {
            status,
            epoch,
            held_max,
        })
    }
}

/// One merge, checked and encoded, as a merge call sends it.
pub(super) struct WireMerge {
    /// The logical key (for logs).
    pub(super) key: String,
    redis_key: Key,
    mode: &'static str,
    /// `now`, 12 hex.
    now: String,
    /// The delta's hash pairs.
    pairs: Vec<Bytes>,
    /// Bytes of the key and the pairs: what a batch is bounded by.
    pub(super) size: usize,
}
