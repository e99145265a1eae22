//! The Lua script calls (`EVALSHA` under the deadline, run id filled in,
//! reloaded on `NOSCRIPT`, made again after a dropped connection) and the
//! merge of one record.

use fred::prelude::*;
use fred::types::scripts::Script;

use super::wire::{self, delta_args, delta_for_wire, epoch_candidate};
use super::{run_id_placeholder, RedisReplica, Via, EXPIRY_MARGIN_ARG, MERGE_RUN_ID_SLOT};
use crate::error::ReplicaError;
use crate::record::Record;
use crate::replica::{MergeMode, MergeReply, MergeStatus};
use crate::stamp::{encode_ms, Stamp, PHYSICAL_MAX};

impl RedisReplica {
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

    /// The script keys: the record key, then the epoch and run keys
    /// (standalone and Sentinel only; see the module docs on Cluster mode).
    pub(super) fn script_keys(&self, key: &str) -> Vec<Key> {
        let mut keys = Vec::with_capacity(3);
        keys.push(Key::from(self.redis_key(key)));
        if !self.clustered {
            keys.push(self.epoch_fred_key.clone());
            keys.push(self.run_fred_key.clone());
        }
        keys
    }

    pub(super) async fn merge_record(
        &self,
        key: &str,
        delta: &Record,
        mode: MergeMode,
        now_ms: u64,
    ) -> Result<MergeReply, ReplicaError> {
        self.check_key(key)?;
        let delta = delta_for_wire(delta);
        if let Err(detail) = delta.check_shape() {
            return Err(ReplicaError::Refused {
                detail: format!("{}: invalid delta: {detail}", self.name),
                source: None,
            });
        }
        let mode = match mode {
            MergeMode::Upsert => "u",
            MergeMode::Create => "c",
        };
        let now = encode_ms(now_ms.min(PHYSICAL_MAX));
        let candidate = epoch_candidate();
        let pairs = delta_args(&delta);
        let request = || {
            let mut args = Vec::with_capacity(5 + pairs.len());
            args.push(Value::from_static_str(mode));
            args.push(Value::from(now.as_str()));
            args.push(Value::from(candidate.as_str()));
            args.push(Value::from_static_str(EXPIRY_MARGIN_ARG));
            args.push(run_id_placeholder());
            args.extend(pairs.iter().cloned().map(Value::Bytes));
            (self.script_keys(key), args)
        };
        let (reply, via) = self
            .eval(
                "merge",
                &self.merge_script,
                request,
                Some(MERGE_RUN_ID_SLOT),
                Some(key),
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(self.malformed("merge"));
        };
        let [status, epoch, held] = items.as_slice() else {
            return Err(self.malformed("merge"));
        };
        let status = match status.as_bytes() {
            Some(b"applied") => MergeStatus::Applied,
            Some(b"gone") => MergeStatus::Gone,
            Some(b"exists") => MergeStatus::Exists,
            _ => return Err(self.malformed("merge")),
        };
        let held_max = match held.as_bytes() {
            Some(b"") => None,
            Some(text) => Some(Stamp::decode(text).ok_or_else(|| self.malformed("merge"))?),
            None => return Err(self.malformed("merge")),
        };
        let epoch = self.epoch_from(Some(epoch), via).await?;
        Ok(MergeReply {
            status,
            epoch,
            held_max,
        })
    }
}
