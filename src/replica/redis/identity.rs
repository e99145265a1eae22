//! Which Redis process and which epoch a reply comes from: the run id
//! learnt per connection (`process.rs`), the epoch in script replies and in
//! `MGET <epoch> <epoch:run>` answers, the epoch confirmation of
//! single-command reads (`confirmed.rs`), and the epoch script.

use fred::prelude::*;

use super::process::{self, ProcessIdentity};
use super::wire::{epoch_candidate, parse_epoch};
use super::{run_id_placeholder, Inner, Via};
use crate::error::ReplicaError;
use crate::replica::Epoch;

impl Inner {
    /// The run id of the Redis process behind the connection, and the
    /// connection generation it holds for (`INFO server` after each new
    /// connection).
    ///
    /// fred's command futures are several KB each and an async fn holds
    /// every future it awaits inline, so the ones awaited here are boxed:
    /// the request futures stay small and cheap to move.
    pub(super) async fn run_id(&self) -> Result<(u64, Value), ReplicaError> {
        self.run_id_on(&self.client, &self.identity).await
    }

    /// [`run_id`](Self::run_id) of the connection of `client`, whose
    /// reconnections `identity` counts.
    pub(super) async fn run_id_on(
        &self,
        client: &Client,
        identity: &ProcessIdentity,
    ) -> Result<(u64, Value), ReplicaError> {
        if let Some(known) = identity.cached(client) {
            return Ok(known);
        }
        let info = Box::pin(async {
            let call = process::info_server(client);
            self.finish("info", None, tokio::time::timeout(self.timeout, call).await)
        });
        identity.learn(&self.name, client, info).await
    }

    /// Notes the epoch a reply showed (see `confirmed.rs`), as of when its
    /// request was sent: a reply noted late cannot make a confirmation last
    /// beyond [`RECONFIRM_AFTER`] after the epoch was last seen standing.
    /// Cluster mode (`None`) never reads with one command.
    pub(super) fn note_epoch(&self, via: Option<Via>, epoch: Epoch) {
        if let Some(via) = via {
            self.confirmed.note(via.generation, epoch, via.sent);
        }
    }

    /// The epoch from a script reply through `via` (not in Cluster mode,
    /// where the scripts do not read it: see `epoch_bracketed` in `witness.rs`).
    pub(super) async fn epoch_from(
        &self,
        value: Option<&Value>,
        via: Option<Via>,
    ) -> Result<Epoch, ReplicaError> {
        let text = value.and_then(Value::as_bytes).unwrap_or_default();
        let epoch = parse_epoch(text).ok_or_else(|| ReplicaError::Corrupt {
            detail: format!("{}: malformed epoch in a script reply", self.name),
        })?;
        self.note_epoch(via, epoch);
        Ok(epoch)
    }

    pub(super) async fn ping_epoch(&self) -> Result<Epoch, ReplicaError> {
        if self.clustered {
            return Box::pin(self.cluster_ping()).await;
        }
        let args = vec![
            Value::from_static_str("get"),
            Value::from(epoch_candidate()),
            run_id_placeholder(),
        ];
        let request = || (self.epoch_keys(), args.clone());
        let (reply, via) = self
            .eval("ping", &self.epoch_script, request, Some(2), None)
            .await?;
        let epoch = parse_epoch(reply.as_bytes().unwrap_or_default()).ok_or_else(|| {
            ReplicaError::Corrupt {
                detail: format!("{}: malformed epoch", self.name),
            }
        })?;
        self.note_epoch(via, epoch);
        Ok(epoch)
    }

    /// After a read that found no epoch made by this process: the epoch
    /// script makes a new one (or finds the one another request made), and
    /// the read reports it incomplete whatever it says by now (the hash was
    /// read before it existed).
    pub(super) async fn new_epoch_after_read(&self) -> Result<Epoch, ReplicaError> {
        let epoch = self.ping_epoch().await?;
        Ok(Epoch {
            id: epoch.id,
            complete: false,
        })
    }

    /// The epoch script's keys: the epoch key, then the run key (not in
    /// Cluster mode: it may live in another slot).
    pub(super) fn epoch_keys(&self) -> Vec<Key> {
        let mut keys = vec![self.epoch_fred_key.clone()];
        if !self.clustered {
            keys.push(self.run_fred_key.clone());
        }
        keys
    }

    /// The epoch and run keys' names (the run key not in Cluster mode).
    pub(super) fn epoch_key_names(&self) -> Vec<String> {
        let mut keys = vec![self.epoch_key.clone()];
        if !self.clustered {
            keys.push(self.run_key.clone());
        }
        keys
    }

    /// The keys of `MGET <epoch> <epoch:run>`.
    pub(super) fn epoch_ids(&self) -> Vec<fred::types::Key> {
        vec![self.epoch_fred_key.clone(), self.run_fred_key.clone()]
    }

    /// The epoch that held between two `MGET <epoch> <epoch:run>` answers:
    /// the same epoch both times, made by the process whose run id is
    /// `run_id`, complete only if it was complete the first time. `None`
    /// when it was missing, made by another process, or changed.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Corrupt`] when the epoch key holds foreign data.
    pub(super) fn epoch_between(
        &self,
        before: Value,
        after: Value,
        run_id: &Value,
    ) -> Result<Option<Epoch>, ReplicaError> {
        let (before, after) = (
            self.epoch_in(before, run_id)?,
            self.epoch_in(after, run_id)?,
        );
        Ok(match (before, after) {
            (Some(before), Some(after)) if before.id == after.id => Some(Epoch {
                id: before.id,
                complete: before.complete && after.complete,
            }),
            _ => None,
        })
    }

    /// The epoch in one `MGET <epoch> <epoch:run>` answer, if it was made by
    /// the process whose run id is `run_id`.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Corrupt`] when the epoch key holds foreign data.
    pub(super) fn epoch_in(
        &self,
        ids: Value,
        run_id: &Value,
    ) -> Result<Option<Epoch>, ReplicaError> {
        let Value::Array(ids) = ids else {
            return Err(self.malformed("read"));
        };
        let Ok([epoch, run]) = <[Value; 2]>::try_from(ids) else {
            return Err(self.malformed("read"));
        };
        if epoch.is_null() {
            return Ok(None);
        }
        let epoch = parse_epoch(epoch.as_bytes().unwrap_or_default()).ok_or_else(|| {
            ReplicaError::Corrupt {
                detail: format!("{}: the epoch key holds foreign data", self.name),
            }
        })?;
        let made_here = run.as_bytes().is_some() && run.as_bytes() == run_id.as_bytes();
        Ok(made_here.then_some(epoch))
    }

    pub(super) async fn mark_complete(&self, epoch_id: u64) -> Result<bool, ReplicaError> {
        if self.clustered {
            return Box::pin(self.cluster_mark_complete(epoch_id)).await;
        }
        let args = vec![
            Value::from_static_str("complete"),
            Value::from(format!("{epoch_id:016x}")),
            run_id_placeholder(),
        ];
        let request = || (self.epoch_keys(), args.clone());
        let (reply, _) = self
            .eval(
                "mark_epoch_complete",
                &self.epoch_script,
                request,
                Some(2),
                None,
            )
            .await?;
        match reply {
            Value::Integer(1) => Ok(true),
            Value::Integer(0) => Ok(false),
            _ => Err(self.malformed("mark_epoch_complete")),
        }
    }
}
