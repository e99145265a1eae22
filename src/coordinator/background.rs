//! The coordinator's background tick: probes of Down replicas, replay of
//! hints (hinted handoff) and the decision to start an anti-entropy pass (the
//! pass itself is in `anti_entropy.rs`). See the
//! [module documentation](super) for how hints and passes work together.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use tracing::{debug, error, info, warn};

use crate::core::health::Health;
use crate::replica::MergeMode;
use crate::stamp::duration_ms;

use super::{Coordinator, Inner};

impl Coordinator {
    pub(super) fn spawn_probe_task(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = self
            .inner
            .config
            .health
            .probe_interval_min
            .min(self.inner.config.handoff_interval);
        let stopped = self.inner.lifecycle.stopped();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick.max(Duration::from_millis(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stopped);
            loop {
                // Ends at `Coordinator::shutdown` (between ticks: a tick
                // under way finishes, and shutdown waits for its writes).
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    _ = interval.tick() => {}
                }
                // Ends when the last coordinator handle is dropped.
                let Some(inner) = weak.upgrade() else { return };
                let coordinator = Coordinator { inner };
                // A panic in one tick (a bug) is logged and the next tick
                // runs: probes, hint replay and anti-entropy never stop.
                let tick_work = async {
                    coordinator.probe_due_replicas().await;
                    if coordinator.replica_states().iter().all(|s| !s.readable) {
                        // A new cluster is bootstrapped; a full-cluster
                        // restart with data is not (see `bootstrap.rs`).
                        coordinator.initialize().await;
                    }
                    coordinator.replay_hints().await;
                    coordinator.maybe_start_anti_entropy();
                };
                if std::panic::AssertUnwindSafe(tick_work)
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    error!("the background tick panicked (a bug): the next tick runs");
                }
            }
        });
    }

    /// Probes the Down replicas whose backoff has passed, once. The probe
    /// task calls this on its own tick; tests may call it directly.
    pub async fn probe_due_replicas(&self) {
        let now_ms = self.monotonic_ms();
        let due = {
            let mut state = self.lock();
            let due = state.health.due_probes(now_ms);
            for &index in &due {
                state.health.on_probe_sent(index, now_ms);
            }
            due
        };
        for index in due {
            let replica = self.inner.replicas[index].clone();
            if let Ok(epoch) = self.call(index, replica.ping()).await {
                self.observe_epoch(index, epoch);
                tracing::info!(replica = replica.name(), "replica back up");
            }
        }
    }

    /// Replays one rate-limited batch of hints to every replica that is not
    /// Down. The background tick calls it; tests may call it directly.
    pub async fn replay_hints(&self) {
        let now_ms = self.now_ms();
        for index in 0..self.replica_count() {
            let (batch, before) = {
                let mut state = self.lock();
                if state.health.health(index) == Health::Down || state.hints.is_empty(index) {
                    continue;
                }
                let before = state.hints.stats(index);
                (state.hints.take_batch(index, now_ms), before)
            };
            if batch.is_empty() {
                continue;
            }
            let mut failed = Vec::new();
            let mut batch = batch.into_iter();
            for hint in batch.by_ref() {
                let result = self
                    .merge_on(index, &hint.key, &hint.delta, MergeMode::Upsert, now_ms)
                    .await;
                if let Err(error) = result {
                    debug!(replica = self.inner.replicas[index].name(), %error, "hint replay failed");
                    failed.push(hint);
                    break; // the replica is failing: keep the rest for later
                }
            }
            failed.extend(batch);
            let mut state = self.lock();
            let restored = failed.len() as u64;
            if !failed.is_empty() {
                state.hints.restore(index, failed, now_ms);
            }
            self.hint_metrics(&state, index, before, restored);
        }
    }

    /// Starts a background anti-entropy pass when one is due: a replica is
    /// write-only (new epoch) or its hints overflowed, and it is not Down.
    pub(crate) fn maybe_start_anti_entropy(&self) {
        let config = &self.inner.config.anti_entropy;
        let now_ms = self.monotonic_ms();
        if self.inner.anti_entropy_running.load(Ordering::Acquire) {
            return;
        }
        if let Some(interval) = config.interval {
            // A scheduled pass: the next one `interval` after this one
            // starts. The schedule never holds back a rejoin (below).
            let scheduled = &self.inner.anti_entropy_next_scheduled_ms;
            if now_ms >= scheduled.load(Ordering::Relaxed) {
                scheduled.store(now_ms + duration_ms(interval), Ordering::Relaxed);
                self.spawn_pass("scheduled anti-entropy pass");
                return;
            }
        }
        let retry_at = self
            .inner
            .anti_entropy_not_before_ms
            .load(Ordering::Relaxed);
        if !config.on_rejoin || now_ms < retry_at {
            return;
        }
        let states = self.replica_states();
        // A write-only replica (joining or leaving) is never readable here:
        // it is refilled by the operator's pass (`docs/membership.md`).
        let due = states.iter().any(|s| {
            s.health != Health::Down
                && ((!s.readable && !s.write_only) || s.needs_anti_entropy)
                && s.epoch.is_some()
        });
        // A cluster where nothing is readable is bootstrapped, not refilled.
        let any_readable = states.iter().any(|s| s.readable);
        if due && any_readable {
            self.spawn_pass("anti-entropy pass after a rejoin");
        }
    }

    fn spawn_pass(&self, what: &'static str) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(report) = this.anti_entropy().await else {
                return;
            };
            info!(
                keys = report.stats.keys_compared,
                repaired = report.stats.keys_repaired,
                refilled = ?report.marked_complete,
                "{what}"
            );
            let stuck = this
                .replica_states()
                .iter()
                .any(|s| s.health != Health::Down && !s.readable && !s.write_only);
            if stuck && report.marked_complete.is_empty() {
                // Too few complete sources (more than N - W replicas lost
                // data): retrying at once changes nothing. See
                // `Coordinator::accept_data_loss` for the operator's way out.
                let retry = this.config().anti_entropy.retry_interval;
                let retry_ms = duration_ms(retry);
                let next = this.monotonic_ms() + retry_ms;
                this.inner
                    .anti_entropy_not_before_ms
                    .fetch_max(next, Ordering::Relaxed);
                warn!(
                    retry_ms,
                    "anti-entropy could not refill a replica: too few complete replicas"
                );
            }
        });
    }
}
