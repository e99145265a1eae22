//! Which Redis process a replica's connection reaches: its run id, learnt
//! once per connection instead of by every script.
//!
//! The epoch check needs the run id of the Redis process that runs a script
//! (see the module docs of `replica::redis`). `INFO server` costs more than
//! the rest of a request, so the run id is learnt with one `INFO server` per
//! connection and passed to the scripts as an argument.
//! That is exact only if the id passed is the one of the process that runs
//! the script. A TCP connection reaches one process for its whole life (a
//! restart or a failover breaks it), so it is enough to know that the
//! `INFO` and the request went through the same connection:
//!
//! - fred announces every new connection on its reconnect channel
//!   *before* it writes any command on it (the router broadcasts, then
//!   installs the connection, or installs and broadcasts before it goes back
//!   to its queue; one task does both);
//! - [`ProcessIdentity::generation`] drains that channel without waiting and
//!   counts the connections announced so far;
//! - a run id is cached with the generation it was learnt in, and only if no
//!   connection was announced between sending `INFO` and reading its reply;
//! - a request reads the generation before it is sent and again after its
//!   reply: if a connection was announced in between, its reply may come
//!   from another process than the run id it carried, and it is refused as
//!   [`ReplicaError::Unavailable`] (the coordinator asks another replica or
//!   keeps a hint; merges are idempotent).
//!
//! A proxy that moves one client connection to another Redis process
//! without closing it would defeat this (and Redis Cluster mode does not use
//! the run id at all): connect to the Redis servers themselves.

use std::sync::Mutex;

use fred::prelude::{Client, ClientLike, EventInterface};
use fred::types::config::Server;
use fred::types::Value;
use tokio::sync::broadcast::{error::TryRecvError, Receiver};

use crate::error::ReplicaError;

/// Longest run id accepted from `INFO server` (Redis makes 40 hex digits).
const RUN_ID_MAX_BYTES: usize = 64;

struct Generations {
    reconnects: Receiver<Server>,
    count: u64,
}

/// The run id of the Redis process behind one fred client, per connection.
pub(super) struct ProcessIdentity {
    generations: Mutex<Generations>,
    /// `(generation, run id)`, the run id as a script argument.
    run_id: Mutex<Option<(u64, Value)>>,
}

impl ProcessIdentity {
    /// Subscribes to `client`'s reconnections. Call it before the client
    /// connects, so that the first connection is counted too.
    pub(super) fn new(client: &Client) -> ProcessIdentity {
        ProcessIdentity {
            generations: Mutex::new(Generations {
                reconnects: client.reconnect_rx(),
                count: 0,
            }),
            run_id: Mutex::new(None),
        }
    }

    /// Connections announced so far (without waiting). A closed channel
    /// (after `QUIT`, fred replaces it) counts as a new connection, and the
    /// replica subscribes again.
    pub(super) fn generation(&self, client: &Client) -> u64 {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loop {
            match generations.reconnects.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => generations.count += 1,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    generations.count += 1;
                    generations.reconnects = client.reconnect_rx();
                    break;
                }
            }
        }
        generations.count
    }

    /// The run id to pass to a request sent now, and the generation it is
    /// valid for (check it again with [`ProcessIdentity::check`] after the
    /// reply), if known for the current connection; `None` after a new
    /// connection (learn it with [`ProcessIdentity::learn`]).
    pub(super) fn cached(&self, client: &Client) -> Option<(u64, Value)> {
        let generation = self.generation(client);
        match &*self.lock_run_id() {
            Some((known, run_id)) if *known == generation => Some((generation, run_id.clone())),
            _ => None,
        }
    }

    /// Learns the run id with `info` (`INFO server`, sent now) and caches it
    /// for the current connection.
    ///
    /// # Errors
    ///
    /// As `info`; [`ReplicaError::Unavailable`] when the connection changed
    /// while it ran, or its answer holds no run id.
    pub(super) async fn learn(
        &self,
        name: &str,
        client: &Client,
        info: impl std::future::Future<Output = Result<String, ReplicaError>>,
    ) -> Result<(u64, Value), ReplicaError> {
        let generation = self.generation(client);
        let text = info.await?;
        self.check(name, client, generation)?;
        let run_id = parse_run_id(&text).ok_or_else(|| ReplicaError::Unavailable {
            detail: format!("{name}: INFO server answered no run_id"),
            source: None,
        })?;
        let run_id = Value::from(run_id);
        *self.lock_run_id() = Some((generation, run_id.clone()));
        Ok((generation, run_id))
    }

    /// Refuses a reply if a new connection was announced since `generation`.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Unavailable`]: the reply may come from another Redis
    /// process than the run id sent with the request.
    pub(super) fn check(
        &self,
        name: &str,
        client: &Client,
        generation: u64,
    ) -> Result<(), ReplicaError> {
        if self.generation(client) == generation {
            return Ok(());
        }
        Err(ReplicaError::Unavailable {
            detail: format!("{name}: reconnected during the request; its answer is not trusted"),
            source: None,
        })
    }

    /// Forgets the run id learnt for `generation` (a script answered that
    /// it is not the running process's): the next request learns it again.
    pub(super) fn forget(&self, generation: u64) {
        let mut run_id = self.lock_run_id();
        if matches!(&*run_id, Some((known, _)) if *known == generation) {
            *run_id = None;
        }
    }

    fn lock_run_id(&self) -> std::sync::MutexGuard<'_, Option<(u64, Value)>> {
        self.run_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// `INFO server` of `client`, as text.
pub(super) async fn info_server(client: &Client) -> Result<String, fred::error::Error> {
    client
        .info::<String>(Some(fred::types::InfoKind::Server))
        .await
}

/// The `run_id:` line of `INFO server`: a non-empty word of ASCII letters and
/// digits, at most [`RUN_ID_MAX_BYTES`] long.
pub(super) fn parse_run_id(info: &str) -> Option<&str> {
    let id = info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))?
        .trim();
    let valid = !id.is_empty()
        && id.len() <= RUN_ID_MAX_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_id_line_is_found_and_checked() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f3a9c0e1b2d\r\ntcp_port:6379\r\n";
        assert_eq!(parse_run_id(info), Some("4f3a9c0e1b2d"));
        assert_eq!(parse_run_id("# Server\r\nredis_version:7.0.15\r\n"), None);
        assert_eq!(parse_run_id("run_id:\r\n"), None);
        assert_eq!(parse_run_id("run_id:a b\r\n"), None);
        assert_eq!(
            parse_run_id(&format!("run_id:{}\r\n", "a".repeat(65))),
            None
        );
    }
}
