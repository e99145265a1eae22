//! Recent read latencies of one replica, and the hedge delay they give.
//!
//! A fixed hedge delay is wrong both ways: far above what a healthy replica
//! needs (a slow one costs the whole delay on every read), or below it on a
//! loaded machine (every read is sent twice). As in Cassandra's speculative
//! retry, a read asks the next replica once the asked one has taken longer
//! than a percentile of recent latencies, capped by the configured
//! `hedge_delay` (which is also used until enough samples are known).
//!
//! The percentile is that of the *fastest* replica, not the asked one's: a
//! replica that is slow all the time has a slow p99 of its own, and hedging
//! after it would never spare a read its slowness. Against the fastest
//! replica's p99, a read to a slow replica hedges early, and with replicas
//! alike about 1% of reads are sent twice.

use std::time::Duration;

/// Latencies kept per replica (a ring: the oldest is overwritten).
pub const LATENCY_WINDOW: usize = 128;
/// Samples needed before the percentile is trusted; until then the cap is
/// the delay.
pub const LATENCY_SAMPLES_MIN: usize = 32;
/// The percentile is recomputed (a sort of the window) once per this many
/// new samples, not on every read.
pub const LATENCY_RECOMPUTE_EVERY: u32 = 16;
/// The shortest hedge delay: below it a hedge would mostly duplicate reads
/// that are merely being scheduled.
pub const HEDGE_DELAY_MIN: Duration = Duration::from_millis(1);

/// The last [`LATENCY_WINDOW`] latencies of one replica, in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyWindow {
    samples: Vec<u32>,
    next: usize,
    since_recompute: u32,
    cached: Option<(u32, f64)>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            samples: Vec::with_capacity(LATENCY_WINDOW),
            next: 0,
            since_recompute: 0,
            cached: None,
        }
    }
}

impl LatencyWindow {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.samples.len() < LATENCY_WINDOW {
            self.samples.push(micros);
        } else {
            self.samples[self.next] = micros;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
        self.since_recompute += 1;
    }

    /// The `quantile` (0 < q ≤ 1) of the window, by the nearest-rank method;
    /// `None` with fewer than [`LATENCY_SAMPLES_MIN`] samples.
    pub fn quantile(&mut self, quantile: f64) -> Option<Duration> {
        if self.samples.len() < LATENCY_SAMPLES_MIN {
            return None;
        }
        let fresh = matches!(self.cached, Some((_, q)) if q == quantile)
            && self.since_recompute < LATENCY_RECOMPUTE_EVERY;
        if !fresh {
            // A selection in a copy on the stack: no allocation, no sort.
            let len = self.samples.len();
            let mut scratch = [0u32; LATENCY_WINDOW];
            scratch[..len].copy_from_slice(&self.samples);
            let rank = ((quantile * len as f64).ceil() as usize).clamp(1, len);
            let (_, nth, _) = scratch[..len].select_nth_unstable(rank - 1);
            self.cached = Some((*nth, quantile));
            self.since_recompute = 0;
        }
        self.cached
            .map(|(micros, _)| Duration::from_micros(u64::from(micros)))
    }
}

/// The hedge delay, from the windows of every replica: the smallest
/// `quantile` latency among those with enough samples, at least
/// [`HEDGE_DELAY_MIN`], at most `cap`; `cap` while none has enough.
pub fn hedge_delay<'a>(
    windows: impl IntoIterator<Item = &'a mut LatencyWindow>,
    quantile: f64,
    cap: Duration,
) -> Duration {
    windows
        .into_iter()
        .filter_map(|window| window.quantile(quantile))
        .min()
        .map_or(cap, |fastest| fastest.clamp(HEDGE_DELAY_MIN, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(latencies_ms: impl IntoIterator<Item = u64>) -> LatencyWindow {
        let mut window = LatencyWindow::default();
        for ms in latencies_ms {
            window.record(Duration::from_millis(ms));
        }
        window
    }

    #[test]
    fn too_few_samples_give_the_cap() {
        let mut few = window(vec![1; LATENCY_SAMPLES_MIN - 1]);
        assert_eq!(few.quantile(0.99), None);
        let cap = Duration::from_millis(50);
        assert_eq!(hedge_delay([&mut few], 0.99, cap), cap);
    }

    #[test]
    fn the_delay_is_the_percentile_within_floor_and_cap() {
        // 99 fast answers and one slow: p99 is the fast one, p100 the slow.
        let mut w = window((0..99).map(|_| 2).chain([40]));
        assert_eq!(w.quantile(0.99), Some(Duration::from_millis(2)));
        assert_eq!(w.quantile(1.0), Some(Duration::from_millis(40)));
        let cap = Duration::from_millis(30);
        assert_eq!(hedge_delay([&mut w], 0.99, cap), Duration::from_millis(2));
        assert_eq!(hedge_delay([&mut w], 1.0, cap), cap, "capped");
        let mut instant = window(vec![0; 64]);
        assert_eq!(hedge_delay([&mut instant], 0.99, cap), HEDGE_DELAY_MIN);
    }

    #[test]
    fn the_fastest_replica_sets_the_delay() {
        // A replica slow all the time hedges after the fast one's p99, not
        // its own; one without enough samples does not count.
        let (mut fast, mut slow) = (window(vec![1; 64]), window(vec![9; 64]));
        let mut new = window(vec![0; LATENCY_SAMPLES_MIN - 1]);
        let cap = Duration::from_millis(50);
        let delay = hedge_delay([&mut slow, &mut new, &mut fast], 0.99, cap);
        assert_eq!(delay, Duration::from_millis(1));
        assert_eq!(
            hedge_delay([&mut slow, &mut new], 0.99, cap),
            Duration::from_millis(9)
        );
    }

    #[test]
    fn the_window_forgets_old_latencies() {
        let mut w = window(vec![100; LATENCY_WINDOW]);
        for _ in 0..LATENCY_WINDOW {
            w.record(Duration::from_millis(3));
        }
        assert_eq!(w.quantile(0.99), Some(Duration::from_millis(3)));
    }
}
