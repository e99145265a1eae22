//! What a run measured, as readable text and as the one JSON object of
//! `run --json`.

use std::fmt::Write as _;

use quorum_sessions::core::read::ReadResult;
use serde_json::json;

use crate::checker::{Checker, Violations, WriteResult};
use crate::config::{FaultKind, SimConfig};

/// Counters kept while the run goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    /// Client reads (fault phase).
    pub reads: u64,
    /// Reads that got a conclusive answer.
    pub reads_available: u64,
    /// Client writes (fault phase).
    pub writes: u64,
    /// Writes that got a conclusive answer (acknowledged, gone, collision).
    pub writes_available: u64,
    /// Writes acknowledged by W replicas.
    pub acknowledged_writes: u64,
    /// Latency of available reads, µs.
    pub read_latency_us: Vec<u32>,
    /// Latency of available writes, µs.
    pub write_latency_us: Vec<u32>,
    /// Requests sent.
    pub messages_sent: u64,
    /// Requests and replies lost (partition or loss).
    pub messages_lost: u64,
    /// Replica calls that failed or timed out (every coordinator).
    pub timeouts: u64,
    /// Read-repair writes sent.
    pub read_repairs: u64,
    /// Reads blocking read-repair answered before W replicas held their
    /// record.
    pub read_repairs_short: u64,
    /// Hints queued (coalesced ones included).
    pub hints_queued: u64,
    /// Hints replayed successfully.
    pub hints_replayed: u64,
    /// Stamps refused by an HLC for being too far ahead.
    pub hlc_rejections: u64,
    /// Epoch changes coordinators noticed.
    pub epoch_changes_seen: u64,
    /// Replies carrying an epoch their coordinator had seen replaced.
    pub stale_epoch_replies: u64,
    /// Anti-entropy passes started.
    pub anti_entropy_passes: u64,
    /// Records anti-entropy sent.
    pub anti_entropy_records_sent: u64,
    /// Replicas refilled and marked complete.
    pub epochs_refilled: u64,
}

impl RunStats {
    /// Fresh counters for `replica_count` replicas.
    pub fn new(replica_count: usize) -> RunStats {
        let _ = replica_count;
        RunStats::default()
    }

    /// A write's client got `result` after `latency_us`.
    pub fn record_write(&mut self, result: WriteResult, latency_us: u64, counted: bool) {
        if result == WriteResult::Acked {
            self.acknowledged_writes += 1;
        }
        if !counted {
            return;
        }
        self.writes += 1;
        if result != WriteResult::Failed {
            self.writes_available += 1;
            self.write_latency_us.push(clamp_u32(latency_us));
        }
    }

    /// A read's client got `result` after `latency_us`.
    pub fn record_read(&mut self, result: &ReadResult, latency_us: u64, counted: bool) {
        if !counted {
            return;
        }
        self.reads += 1;
        if !matches!(result, ReadResult::Unavailable { .. }) {
            self.reads_available += 1;
            self.read_latency_us.push(clamp_u32(latency_us));
        }
    }
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Latency percentiles, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latencies {
    /// Median read.
    pub read_p50: f64,
    /// 99th percentile read.
    pub read_p99: f64,
    /// Median write.
    pub write_p50: f64,
    /// 99th percentile write.
    pub write_p99: f64,
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// N.
    pub n: usize,
    /// W.
    pub w: usize,
    /// R.
    pub r: usize,
    /// A one-line description of the switches and faults.
    pub setup: String,
    /// Client operations issued in the fault phase.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Writes acknowledged.
    pub acknowledged_writes: u64,
    /// What the checker found.
    pub violations: Violations,
    /// The first violations, described.
    pub examples: Vec<String>,
    /// Reads judged by the checker (audit reads included).
    pub reads_checked: u64,
    /// Reads were judged for monotonicity (read-repair is blocking: the only
    /// mode that promises it).
    pub monotonic_judged: bool,
    /// Fraction of reads with a conclusive answer.
    pub read_availability: f64,
    /// Fraction of writes with a conclusive answer.
    pub write_availability: f64,
    /// Latency percentiles.
    pub latency: Latencies,
    /// Faults started, per kind.
    pub faults: Vec<(FaultKind, u64)>,
    /// Counters.
    pub stats: RunStats,
    /// Hints dropped (overflow and age), over every coordinator.
    pub hints_dropped: u64,
    /// Virtual time from the heal to convergence, ms (`None`: not within
    /// the bound).
    pub converged_after_ms: Option<u64>,
    /// The convergence bound, ms.
    pub quiesce_bound_ms: u64,
    /// Virtual duration of the fault phase, ms.
    pub fault_phase_ms: u64,
    /// Virtual duration of the whole run, ms.
    pub virtual_ms: u64,
    /// Client operations per second of wall time (the only field that differs
    /// between two runs of one seed).
    pub sim_ops_per_sec: f64,
}

impl Report {
    /// Assembles the report at the end of a run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        config: &SimConfig,
        ops: u64,
        stats: RunStats,
        checker: &Checker,
        hints_dropped: u64,
        faults: Vec<(FaultKind, u64)>,
        heal_at: Option<u64>,
        converged_at: Option<u64>,
        end: u64,
    ) -> Report {
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                1.0
            } else {
                part as f64 / whole as f64
            }
        };
        let mut reads = stats.read_latency_us.clone();
        let mut writes = stats.write_latency_us.clone();
        reads.sort_unstable();
        writes.sort_unstable();
        let latency = Latencies {
            read_p50: percentile_ms(&reads, 0.50),
            read_p99: percentile_ms(&reads, 0.99),
            write_p50: percentile_ms(&writes, 0.50),
            write_p99: percentile_ms(&writes, 0.99),
        };
        let converged_after_ms = match (heal_at, converged_at) {
            (Some(heal), Some(converged)) => Some((converged - heal) / 1000),
            _ => None,
        };
        Report {
            monotonic_judged: checker.judges_monotonic_reads(),
            seed: config.seed,
            n: config.replicas,
            w: config.write_quorum(),
            r: config.read_quorum(),
            setup: describe_setup(config),
            ops,
            reads: stats.reads,
            writes: stats.writes,
            acknowledged_writes: stats.acknowledged_writes,
            violations: checker.violations(),
            examples: checker.examples().to_vec(),
            reads_checked: checker.reads_checked(),
            read_availability: ratio(stats.reads_available, stats.reads),
            write_availability: ratio(stats.writes_available, stats.writes),
            latency,
            faults,
            hints_dropped,
            converged_after_ms,
            quiesce_bound_ms: config.quiesce_bound_ms,
            fault_phase_ms: heal_at.unwrap_or(end) / 1000,
            virtual_ms: end / 1000,
            sim_ops_per_sec: 0.0,
            stats,
        }
    }

    /// True when the checker found nothing.
    pub fn is_clean(&self) -> bool {
        self.violations.total() == 0
    }

    /// The one JSON object of `run --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let v = &self.violations;
        json!({
            "seed": self.seed,
            "config": { "n": self.n, "w": self.w, "r": self.r },
            "ops": self.ops,
            "acknowledged_writes": self.acknowledged_writes,
            "violations": {
                "lost_writes": v.lost_writes,
                "stale_reads": v.stale_reads,
                "non_monotonic_reads": v.non_monotonic_reads,
                "hidden_writes": v.hidden_writes,
                "resurrections": v.resurrections,
                "expired_served": v.expired_served,
                "diverged_keys": v.diverged_keys,
            },
            "availability": { "read": self.read_availability, "write": self.write_availability },
            "latency_ms": {
                "read_p50": self.latency.read_p50,
                "read_p99": self.latency.read_p99,
                "write_p50": self.latency.write_p50,
                "write_p99": self.latency.write_p99,
            },
            "sim_ops_per_sec": self.sim_ops_per_sec.round(),
        })
    }

    /// The readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let s = &self.stats;
        let v = &self.violations;
        let monotonic = if self.monotonic_judged {
            v.non_monotonic_reads.to_string()
        } else {
            "- (not promised without blocking read-repair)".to_owned()
        };
        let w = |out: &mut String, line: String| {
            out.push_str(&line);
            out.push('\n');
        };
        w(
            &mut out,
            format!("quorum-sessions simulation — seed {}", self.seed),
        );
        w(
            &mut out,
            format!(
                "  cluster     N={} W={} R={}  ({})",
                self.n, self.w, self.r, self.setup
            ),
        );
        w(
            &mut out,
            format!(
                "  workload    {} ops ({} reads, {} writes) over {:.1} s of virtual time; {} acknowledged writes",
                self.ops,
                self.reads,
                self.writes,
                self.fault_phase_ms as f64 / 1000.0,
                self.acknowledged_writes
            ),
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, count)| format!("{} {count}", kind.name()))
            .collect();
        w(&mut out, format!("  faults      {}", faults.join(", ")));
        w(
            &mut out,
            format!(
                "  availability read {:.2}%  write {:.2}%",
                self.read_availability * 100.0,
                self.write_availability * 100.0
            ),
        );
        w(
            &mut out,
            format!(
                "  latency     read p50 {:.2} ms  p99 {:.2} ms | write p50 {:.2} ms  p99 {:.2} ms",
                self.latency.read_p50,
                self.latency.read_p99,
                self.latency.write_p50,
                self.latency.write_p99
            ),
        );
        w(
            &mut out,
            format!(
                "  messages    {} sent, {} lost, {} replica calls failed or timed out",
                s.messages_sent, s.messages_lost, s.timeouts
            ),
        );
        w(
            &mut out,
            format!(
                "  repair      read-repairs {} ({} reads short of W), hints queued {} / replayed {} / dropped {}, anti-entropy {} passes / {} records sent, {} replicas refilled",
                s.read_repairs,
                s.read_repairs_short,
                s.hints_queued,
                s.hints_replayed,
                self.hints_dropped,
                s.anti_entropy_passes,
                s.anti_entropy_records_sent,
                s.epochs_refilled
            ),
        );
        let convergence = match self.converged_after_ms {
            Some(ms) => format!(
                "converged {ms} ms after the heal (bound {} ms)",
                self.quiesce_bound_ms
            ),
            None => format!(
                "NOT converged within the bound of {} ms",
                self.quiesce_bound_ms
            ),
        };
        w(&mut out, format!("  quiesce     {convergence}"));
        w(
            &mut out,
            format!(
                "  checker     {} reads judged; violations: lost writes {}, stale reads {}, non-monotonic reads {}, hidden writes {}, resurrections {}, expired served {}, diverged keys {}",
                self.reads_checked, v.lost_writes, v.stale_reads, monotonic, v.hidden_writes, v.resurrections, v.expired_served, v.diverged_keys
            ),
        );
        if s.hlc_rejections > 0 {
            w(
                &mut out,
                format!("  notes       {} stamps refused for skew", s.hlc_rejections),
            );
        }
        for example in &self.examples {
            w(&mut out, format!("    ! {example}"));
        }
        let _ = write!(
            out,
            "  speed       {:.0} simulated ops per second of wall time",
            self.sim_ops_per_sec
        );
        out.push('\n');
        out
    }
}

/// The value at quantile `q` of sorted µs samples, in ms.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn describe_setup(config: &SimConfig) -> String {
    let s = config.switches;
    let repair = match config.cluster.read_repair {
        quorum_sessions::config::ReadRepair::Blocking => "blocking",
        quorum_sessions::config::ReadRepair::Background => "background",
        quorum_sessions::config::ReadRepair::Off => "off",
    };
    let on = |flag: bool| if flag { "on" } else { "OFF" };
    format!(
        "{} coordinators; read-repair {repair}, tombstones {}, anti-entropy {}, hints {}, epochs {}, held stamps {}",
        config.workload.coordinators,
        on(s.tombstones),
        on(s.anti_entropy),
        on(s.hints),
        on(s.epochs),
        on(s.held_stamps)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&samples, 0.50), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        assert_eq!(percentile_ms(&[7_000], 0.99), 7.0);
    }
}
