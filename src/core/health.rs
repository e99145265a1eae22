//! Replica health: Up → Suspect → Down from consecutive failures; Down
//! replicas are skipped at once and probed with exponential backoff.
//! Driven by `now_ms`; never reads a clock.

use super::ReplicaIndex;
use crate::config::HealthConfig;
use crate::stamp::duration_ms;

/// A replica's health as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Answering.
    Up,
    /// Failed recently, still asked.
    Suspect,
    /// Failed `down_after_failures` times in a row: skipped, probed.
    Down,
}

#[derive(Clone, Debug)]
struct ReplicaHealth {
    health: Health,
    consecutive_failures: u32,
    next_probe_at_ms: u64,
    probe_backoff_ms: u64,
}

/// Health of every replica of one coordinator.
///
/// ```
/// use quorum_sessions::core::health::{Health, HealthTracker};
/// use quorum_sessions::config::HealthConfig;
/// let mut health = HealthTracker::new(2, &HealthConfig::default());
/// for now in 0..3 { health.on_failure(0, now); }
/// assert_eq!(health.health(0), Health::Down);
/// assert_eq!(health.due_probes(50), Vec::<usize>::new());
/// assert_eq!(health.due_probes(200), vec![0]);
/// health.on_success(0);
/// assert_eq!(health.health(0), Health::Up);
/// ```
#[derive(Clone, Debug)]
pub struct HealthTracker {
    replicas: Vec<ReplicaHealth>,
    down_after_failures: u32,
    probe_min_ms: u64,
    probe_max_ms: u64,
}

impl HealthTracker {
    /// Every replica starts Up.
    pub fn new(replica_count: usize, config: &HealthConfig) -> HealthTracker {
        let probe_min_ms = duration_ms(config.probe_interval_min).max(1);
        HealthTracker {
            replicas: vec![
                ReplicaHealth {
                    health: Health::Up,
                    consecutive_failures: 0,
                    next_probe_at_ms: 0,
                    probe_backoff_ms: probe_min_ms,
                };
                replica_count
            ],
            down_after_failures: config.down_after_failures.max(1),
            probe_min_ms,
            probe_max_ms: duration_ms(config.probe_interval_max).max(probe_min_ms),
        }
    }

    /// The replica's health.
    pub fn health(&self, index: ReplicaIndex) -> Health {
        self.replicas[index].health
    }

    /// True when the replica is Down (requests skip it).
    pub fn is_down(&self, index: ReplicaIndex) -> bool {
        self.health(index) == Health::Down
    }

    /// A reply came back: the replica is Up.
    pub fn on_success(&mut self, index: ReplicaIndex) {
        let replica = &mut self.replicas[index];
        replica.health = Health::Up;
        replica.consecutive_failures = 0;
        replica.probe_backoff_ms = self.probe_min_ms;
    }

    /// An error or timeout. Returns true if the replica just went Down.
    pub fn on_failure(&mut self, index: ReplicaIndex, now_ms: u64) -> bool {
        let replica = &mut self.replicas[index];
        replica.consecutive_failures = replica.consecutive_failures.saturating_add(1);
        if replica.health == Health::Down {
            // A failed probe: back off further.
            replica.probe_backoff_ms = (replica.probe_backoff_ms * 2).min(self.probe_max_ms);
            replica.next_probe_at_ms = now_ms + replica.probe_backoff_ms;
            return false;
        }
        if replica.consecutive_failures >= self.down_after_failures {
            replica.health = Health::Down;
            replica.probe_backoff_ms = self.probe_min_ms;
            replica.next_probe_at_ms = now_ms + self.probe_min_ms;
            return true;
        }
        replica.health = Health::Suspect;
        false
    }

    /// Down replicas whose next probe is due at `now_ms`. The driver probes
    /// them and reports with `on_success` / `on_failure`.
    pub fn due_probes(&self, now_ms: u64) -> Vec<ReplicaIndex> {
        (0..self.replicas.len())
            .filter(|&i| {
                let replica = &self.replicas[i];
                replica.health == Health::Down && replica.next_probe_at_ms <= now_ms
            })
            .collect()
    }

    /// Marks a probe as sent, so the next call to `due_probes` does not
    /// return the replica again before its backoff.
    pub fn on_probe_sent(&mut self, index: ReplicaIndex, now_ms: u64) {
        let replica = &mut self.replicas[index];
        replica.next_probe_at_ms = now_ms + replica.probe_backoff_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tracker() -> HealthTracker {
        HealthTracker::new(
            1,
            &HealthConfig {
                down_after_failures: 2,
                probe_interval_min: Duration::from_millis(100),
                probe_interval_max: Duration::from_millis(300),
            },
        )
    }

    #[test]
    fn transitions_table() {
        let mut health = tracker();
        assert!(!health.on_failure(0, 0));
        assert_eq!(health.health(0), Health::Suspect);
        assert!(health.on_failure(0, 10), "second failure: down");
        assert_eq!(health.health(0), Health::Down);
        assert_eq!(health.due_probes(109), Vec::<usize>::new());
        assert_eq!(health.due_probes(110), vec![0]);
        health.on_probe_sent(0, 110);
        assert_eq!(
            health.due_probes(150),
            Vec::<usize>::new(),
            "probe in flight"
        );
        health.on_failure(0, 120); // failed probe: backoff 200
        assert_eq!(health.due_probes(319), Vec::<usize>::new());
        assert_eq!(health.due_probes(320), vec![0]);
        health.on_failure(0, 320); // backoff capped at 300
        assert_eq!(health.due_probes(620), vec![0]);
        health.on_success(0);
        assert_eq!(health.health(0), Health::Up);
        assert!(
            !health.on_failure(0, 700),
            "counter was reset by the success"
        );
    }
}
