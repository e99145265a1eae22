//! Probabilistically Bounded Staleness: t-visibility (Bailis et al., "PBS",
//! VLDB 2012), by Monte Carlo over the WARS model.
//!
//! One trial: a write is sent to all N replicas; replica i receives it after
//! `W_i` and its acknowledgement takes `A_i` more; the write *commits* at the
//! W-th acknowledgement. A read starts `t` ms after the commit, is sent to all
//! N replicas (request `R_i`, response `S_i`) and takes the first R
//! responses. It is consistent when one of those replicas had received the
//! write before the read request reached it (`W_i <= commit + t + R_i`).
//!
//! With R + W > N the first R responders always include one of the W that
//! acknowledged, which had the write before the commit: p = 1 at every t.

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::latency::LatencyModel;

/// One point of the t-visibility curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Time after the commit at which the read starts, ms.
    pub t_ms: f64,
    /// Probability that the read returns the write.
    pub p_consistent: f64,
}

/// The curve, as `pbs --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Curve {
    /// Replicas.
    pub n: usize,
    /// Read quorum.
    pub r: usize,
    /// Write quorum.
    pub w: usize,
    /// Trials.
    pub trials: u64,
    /// One point per requested t.
    pub points: Vec<Point>,
}

/// Estimates t-visibility at each of `t_ms` with `trials` trials.
///
/// # Errors
///
/// Quorums outside `1..=n`, no trials, or a negative or non-finite `t`.
pub fn t_visibility(
    model: &LatencyModel,
    n: usize,
    r: usize,
    w: usize,
    trials: u64,
    t_ms: &[f64],
    seed: u64,
) -> Result<Curve> {
    if n == 0 || !(1..=n).contains(&r) || !(1..=n).contains(&w) {
        bail!("need 1 <= R <= N and 1 <= W <= N (got N={n}, R={r}, W={w})");
    }
    if trials == 0 {
        bail!("need at least one trial");
    }
    if let Some(bad) = t_ms.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        bail!("t must be a finite, non-negative number of ms (got {bad})");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut consistent = vec![0u64; t_ms.len()];
    let mut write_arrival = vec![0.0; n];
    let mut acked = vec![0.0; n];
    let mut read_request = vec![0.0; n];
    let mut responders: Vec<(f64, usize)> = Vec::with_capacity(n);
    for _ in 0..trials {
        for i in 0..n {
            write_arrival[i] = model.write.sample_ms(&mut rng);
            acked[i] = write_arrival[i] + model.ack.sample_ms(&mut rng);
        }
        let mut acks = acked.clone();
        acks.sort_by(f64::total_cmp);
        let commit = acks[w - 1];
        // The same read latencies for every t (common random numbers): the
        // curve is then monotone trial by trial.
        responders.clear();
        for (i, request) in read_request.iter_mut().enumerate() {
            *request = model.read.sample_ms(&mut rng);
            let response = model.response.sample_ms(&mut rng);
            responders.push((*request + response, i));
        }
        responders.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (slot, &t) in t_ms.iter().enumerate() {
            let start = commit + t;
            let fresh = responders[..r]
                .iter()
                .any(|&(_, i)| write_arrival[i] <= start + read_request[i]);
            if fresh {
                consistent[slot] += 1;
            }
        }
    }
    let points = t_ms
        .iter()
        .zip(&consistent)
        .map(|(&t_ms, &count)| Point {
            t_ms,
            p_consistent: count as f64 / trials as f64,
        })
        .collect();
    Ok(Curve {
        n,
        r,
        w,
        trials,
        points,
    })
}

impl Curve {
    /// A readable table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "t-visibility, N={} R={} W={} ({} trials){}\n",
            self.n,
            self.r,
            self.w,
            self.trials,
            if self.r + self.w > self.n {
                ": R + W > N, every read sees every committed write"
            } else {
                ""
            }
        );
        out.push_str("     t (ms)   P(consistent)\n");
        for point in &self.points {
            out.push_str(&format!(
                "{:>11.3}   {:.6}\n",
                point.t_ms, point.p_consistent
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::lan_latency;

    #[test]
    fn strict_quorums_are_always_consistent() {
        let model = lan_latency();
        for (n, r, w) in [(3, 2, 2), (3, 1, 3), (3, 3, 1), (5, 3, 3)] {
            let curve = t_visibility(&model, n, r, w, 2_000, &[0.0, 1.0, 10.0], 1).unwrap();
            assert!(
                curve.points.iter().all(|p| p.p_consistent == 1.0),
                "{n}/{r}/{w}"
            );
        }
    }

    #[test]
    fn partial_quorums_are_stale_at_first_and_fresher_with_time() {
        let model = LatencyModel::from_toml(include_str!("../models/lnkd-disk.toml")).unwrap();
        let t = [0.0, 1.0, 5.0, 10.0, 50.0, 200.0];
        let curve = t_visibility(&model, 3, 1, 1, 20_000, &t, 7).unwrap();
        let p: Vec<f64> = curve
            .points
            .iter()
            .map(|point| point.p_consistent)
            .collect();
        assert!(
            p[0] < 1.0,
            "R=W=1, N=3 is stale right after the commit: {p:?}"
        );
        assert!(
            p.windows(2).all(|pair| pair[0] <= pair[1]),
            "p grows with t: {p:?}"
        );
        assert!(p[5] > p[0] + 0.3, "and by a lot: {p:?}");
        let same = t_visibility(&model, 3, 1, 1, 20_000, &t, 7).unwrap();
        assert_eq!(curve, same, "deterministic for a seed");
    }

    #[test]
    fn bad_arguments_are_refused() {
        let model = lan_latency();
        assert!(t_visibility(&model, 3, 4, 1, 10, &[0.0], 1).is_err());
        assert!(t_visibility(&model, 3, 1, 0, 10, &[0.0], 1).is_err());
        assert!(t_visibility(&model, 3, 1, 1, 0, &[0.0], 1).is_err());
        assert!(t_visibility(&model, 3, 1, 1, 10, &[-1.0], 1).is_err());
    }
}
