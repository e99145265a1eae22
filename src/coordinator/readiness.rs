//! Readiness ([`Coordinator::readiness`]): whether this coordinator can serve
//! quorum reads and writes now, from the health and epochs it already
//! tracks (no request is sent: a load balancer may ask often).

use serde::Serialize;

use crate::core::health::Health;

use super::{Coordinator, ReplicaState};

/// Whether the coordinator can serve reads and writes now; see
/// [`Coordinator::readiness`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Readiness {
    /// A write quorum is reachable and a read quorum is reachable and readable.
    Ready,
    /// Requests would fail (or will soon): why, and which replicas.
    NotReady(NotReady),
}

impl Readiness {
    /// True for [`Readiness::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// Why the coordinator is not ready, with the facts behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NotReady {
    /// The first condition that fails, in the order of the variants.
    pub reason: NotReadyReason,
    /// Replicas marked Down (skipped, probed).
    pub down: Vec<String>,
    /// Replicas in a new epoch, not refilled yet (write-only): their misses
    /// prove nothing.
    pub refilling: Vec<String>,
    /// Replicas not Down.
    pub reachable: usize,
    /// Replicas not Down and readable (complete epoch).
    pub readable: usize,
    /// W.
    pub write_quorum: usize,
    /// Readable replicas a read needs: the larger of R and N − W + 1 (the
    /// misses that prove a session absent).
    pub read_quorum: usize,
}

/// Why the coordinator is not ready, by what the operator does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotReadyReason {
    /// [`Coordinator::shutdown`] began: reads and writes are refused.
    ShuttingDown,
    /// More replicas lost data than anti-entropy can refill: reads stay
    /// unavailable until an operator calls
    /// [`Coordinator::accept_data_loss`] (README, "Operating it").
    OperatorNeeded,
    /// Fewer than W replicas are reachable: writes fail.
    WriteQuorumUnreachable,
    /// Fewer than [`NotReady::read_quorum`] replicas are reachable and
    /// readable: reads fail until replicas come back or are refilled.
    ReadQuorumUnreadable,
}

impl Coordinator {
    /// Whether a read quorum and a write quorum of replicas are reachable
    /// (not Down) and readable (complete epoch) now, from what the
    /// coordinator already knows: no replica is contacted. Health changes
    /// as requests and probes answer, so a replica that just died counts
    /// as reachable until `down_after_failures` requests failed on it.
    ///
    /// Ready means W replicas are not Down, and max(R, N − W + 1) of those
    /// are readable. For a `/health/ready` endpoint; a Redis down is not a
    /// reason to restart the app (use a liveness check for that).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use quorum_sessions::coordinator::Readiness;
    /// use quorum_sessions::replica::{memory::InMemoryReplica, Replica};
    /// use quorum_sessions::{ClusterConfig, Coordinator};
    /// let replicas: Vec<Arc<dyn Replica>> = ["a", "b", "c"]
    ///     .into_iter()
    ///     .map(|name| Arc::new(InMemoryReplica::new(name)) as Arc<dyn Replica>)
    ///     .collect();
    /// let coordinator = Coordinator::connect(ClusterConfig::default(), replicas).await.unwrap();
    /// assert_eq!(coordinator.readiness(), Readiness::Ready);
    /// # });
    /// ```
    pub fn readiness(&self) -> Readiness {
        let closing = self.is_closing();
        let operator_needed = self.data_loss().1;
        let config = self.config();
        let n = self.replica_count();
        let read_quorum = config.read_quorum.max(config.misses_for_absence(n));
        decide(
            &self.replica_states(),
            config.write_quorum,
            read_quorum,
            operator_needed,
            closing,
        )
    }
}

/// The decision, from facts only.
fn decide(
    states: &[ReplicaState],
    write_quorum: usize,
    read_quorum: usize,
    operator_needed: bool,
    closing: bool,
) -> Readiness {
    let names = |keep: fn(&ReplicaState) -> bool| -> Vec<String> {
        states
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.name.clone())
            .collect()
    };
    let down = names(|s| s.health == Health::Down);
    // A replica never heard from (no epoch) is not refilling: it is Down or
    // about to be.
    let refilling =
        names(|s| s.health != Health::Down && !s.readable && !s.write_only && s.epoch.is_some());
    let reachable = states.len() - down.len();
    let readable = states
        .iter()
        .filter(|s| s.health != Health::Down && s.readable)
        .count();
    assert!(readable <= reachable, "a readable replica is reachable");
    let reason = if closing {
        NotReadyReason::ShuttingDown
    } else if operator_needed {
        NotReadyReason::OperatorNeeded
    } else if reachable < write_quorum {
        NotReadyReason::WriteQuorumUnreachable
    } else if readable < read_quorum {
        NotReadyReason::ReadQuorumUnreadable
    } else {
        return Readiness::Ready;
    };
    Readiness::NotReady(NotReady {
        reason,
        down,
        refilling,
        reachable,
        readable,
        write_quorum,
        read_quorum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Epoch;

    fn state(name: &str, health: Health, readable: bool) -> ReplicaState {
        ReplicaState {
            name: name.into(),
            health,
            epoch: Some(Epoch {
                id: 1,
                complete: readable,
            }),
            readable,
            write_only: false,
            pending_hints: 0,
            needs_anti_entropy: false,
        }
    }

    /// (replicas' health and readability, operator needed, expected reason).
    type Case = (&'static [(Health, bool)], bool, Option<NotReadyReason>);

    #[test]
    fn readiness_table() {
        use Health::{Down, Suspect, Up};
        use NotReadyReason::*;
        // W = 2, read quorum 2.
        let cases: [Case; 7] = [
            (&[(Up, true), (Up, true), (Up, true)], false, None),
            (&[(Up, true), (Suspect, true), (Down, true)], false, None),
            (
                &[(Up, true), (Down, true), (Down, true)],
                false,
                Some(WriteQuorumUnreachable),
            ),
            (
                &[(Up, true), (Up, false), (Down, true)],
                false,
                Some(ReadQuorumUnreadable),
            ),
            (
                &[(Up, true), (Up, false), (Up, false)],
                false,
                Some(ReadQuorumUnreadable),
            ),
            (
                &[(Up, true), (Up, false), (Up, false)],
                true,
                Some(OperatorNeeded),
            ),
            (
                &[(Down, true), (Down, true), (Down, true)],
                false,
                Some(WriteQuorumUnreachable),
            ),
        ];
        for (replicas, operator_needed, expected) in cases {
            let states: Vec<_> = replicas
                .iter()
                .enumerate()
                .map(|(i, &(health, readable))| state(&format!("r{i}"), health, readable))
                .collect();
            let got = decide(&states, 2, 2, operator_needed, false);
            match (expected, got) {
                (None, Readiness::Ready) => {}
                (Some(reason), Readiness::NotReady(not_ready)) => {
                    assert_eq!(not_ready.reason, reason, "{replicas:?}");
                }
                (expected, got) => panic!("{replicas:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn not_ready_names_the_replicas_down_and_refilling() {
        let states = [
            state("a", Health::Up, true),
            state("b", Health::Up, false),
            state("c", Health::Down, false),
        ];
        let Readiness::NotReady(not_ready) = decide(&states, 2, 2, false, false) else {
            panic!("one readable replica of a read quorum of 2");
        };
        assert_eq!(not_ready.reason, NotReadyReason::ReadQuorumUnreadable);
        assert_eq!(not_ready.down, ["c"]);
        assert_eq!(not_ready.refilling, ["b"]);
        assert_eq!((not_ready.reachable, not_ready.readable), (2, 1));
        let Readiness::NotReady(closing) = decide(&states, 2, 2, false, true) else {
            panic!("shutting down is never ready");
        };
        assert_eq!(closing.reason, NotReadyReason::ShuttingDown);
    }
}
