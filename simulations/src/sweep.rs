//! The `sweep` command: what each (N, W, R) costs and buys. Every preset runs
//! once with all faults (stale-read rate, latency) and once per fault kind
//! alone (availability under that fault), all with the same seed.

use std::fmt::Write as _;

use anyhow::Result;

use crate::config::{FaultKind, SimConfig};
use crate::report::Report;
use crate::sim;

/// The presets of the default sweep.
pub const DEFAULT_PRESETS: [(usize, usize, usize); 8] = [
    (3, 1, 1),
    (3, 2, 1),
    (3, 1, 2),
    (3, 2, 2),
    (3, 3, 1),
    (5, 3, 3),
    (5, 2, 2),
    (5, 1, 1),
];

/// The configuration every sweep run starts from: the default one, with the
/// operations spread over more virtual time (1 000 ops/s) and a fault every
/// 0.5 s on average, so that each fault kind happens often enough in one run
/// for the availability under it to mean something.
pub fn base_config(seed: u64, ops: u64) -> SimConfig {
    let mut config = SimConfig {
        seed,
        ops,
        ..SimConfig::default()
    };
    config.workload.ops_per_sec = 1_000.0;
    config.faults.mean_interval_ms = 500.0;
    config
}

/// One preset's results.
#[derive(Clone, Debug)]
pub struct SweepRow {
    /// N, W, R.
    pub quorums: (usize, usize, usize),
    /// The run with every fault kind.
    pub all_faults: Report,
    /// Read and write availability with one fault kind only.
    pub by_fault: Vec<(FaultKind, f64, f64)>,
}

impl SweepRow {
    /// Stale reads per read judged, under all faults.
    pub fn stale_read_rate(&self) -> f64 {
        let judged = self.all_faults.reads_checked.max(1);
        self.all_faults.violations.stale_reads as f64 / judged as f64
    }
}

/// Runs the sweep. `progress` is called after each run with (done, total).
///
/// # Errors
///
/// A preset the configuration refuses.
pub fn run_sweep(
    base: &SimConfig,
    presets: &[(usize, usize, usize)],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<SweepRow>> {
    let total = presets.len() * (1 + FaultKind::ALL.len());
    let mut done = 0;
    let mut rows = Vec::with_capacity(presets.len());
    for &(n, w, r) in presets {
        let config = base.clone().with_quorums(n, w, r);
        let all_faults = sim::run(&config)?;
        done += 1;
        progress(done, total);
        let mut by_fault = Vec::with_capacity(FaultKind::ALL.len());
        for kind in FaultKind::ALL {
            let mut single = config.clone();
            single.faults.kinds = vec![kind];
            let report = sim::run(&single)?;
            by_fault.push((kind, report.read_availability, report.write_availability));
            done += 1;
            progress(done, total);
        }
        rows.push(SweepRow {
            quorums: (n, w, r),
            all_faults,
            by_fault,
        });
    }
    Ok(rows)
}

/// The readable tables.
pub fn render(rows: &[SweepRow], ops: u64, seed: u64) -> String {
    let mut out = format!("sweep: seed {seed}, {ops} ops per run\n\n");
    out.push_str("N/W/R   R+W>N  stale reads   lost  hidden  resurr.  read avail  write avail  read p99  write p99\n");
    for row in rows {
        let (n, w, r) = row.quorums;
        let report = &row.all_faults;
        let v = &report.violations;
        let _ = writeln!(
            out,
            "{:<7} {:<6} {:>10.4}% {:>6} {:>7} {:>8} {:>10.2}% {:>11.2}% {:>7.1}ms {:>8.1}ms",
            format!("{n}/{w}/{r}"),
            if r + w > n { "yes" } else { "no" },
            row.stale_read_rate() * 100.0,
            v.lost_writes,
            v.hidden_writes,
            v.resurrections,
            report.read_availability * 100.0,
            report.write_availability * 100.0,
            report.latency.read_p99,
            report.latency.write_p99,
        );
    }
    out.push_str("\navailability (read / write, %) with one fault kind at a time\nN/W/R  ");
    for kind in FaultKind::ALL {
        let _ = write!(out, " {:>13}", kind.name());
    }
    out.push('\n');
    for row in rows {
        let (n, w, r) = row.quorums;
        let _ = write!(out, "{:<7}", format!("{n}/{w}/{r}"));
        for &(_, read, write) in &row.by_fault {
            let _ = write!(
                out,
                " {:>13}",
                format!("{:.1}/{:.1}", read * 100.0, write * 100.0)
            );
        }
        out.push('\n');
    }
    out
}

/// An SVG chart: stale-read rate per preset (left) and read availability
/// under each fault kind (right).
pub fn svg(rows: &[SweepRow]) -> String {
    const WIDTH: f64 = 960.0;
    const HEIGHT: f64 = 420.0;
    const TOP: f64 = 60.0;
    const BOTTOM: f64 = 340.0;
    let colors = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    // Left panel: stale-read rate.
    let (left, right) = (60.0, 430.0);
    let max_rate = rows
        .iter()
        .map(SweepRow::stale_read_rate)
        .fold(0.0, f64::max)
        .max(1e-4);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="30" font-size="15" font-weight="bold">Stale reads under all faults (% of reads)</text>"#
    );
    axis(&mut out, left, right, TOP, BOTTOM, max_rate * 100.0, "%");
    let slot = (right - left) / rows.len().max(1) as f64;
    for (i, row) in rows.iter().enumerate() {
        let rate = row.stale_read_rate();
        let height = (BOTTOM - TOP) * rate / max_rate;
        let x = left + slot * i as f64 + slot * 0.2;
        let (n, w, r) = row.quorums;
        let fill = if r + w > n { "#59a14f" } else { "#e15759" };
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{fill}"><title>{n}/{w}/{r}: {:.4}%</title></rect>"#,
            BOTTOM - height,
            slot * 0.6,
            rate * 100.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n}/{w}/{r}</text>"#,
            x + slot * 0.3,
            BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="{:.1}" fill="#555">N/W/R — green: R+W&gt;N, red: R+W≤N</text>"##,
        BOTTOM + 36.0
    );
    // Right panel: read availability per fault kind.
    let (left, right) = (520.0, 930.0);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="30" font-size="15" font-weight="bold">Read availability with one fault kind (%)</text>"#
    );
    let floor = rows
        .iter()
        .flat_map(|row| row.by_fault.iter().map(|&(_, read, _)| read))
        .fold(1.0, f64::min)
        .min(0.9);
    let floor = (floor * 10.0).floor() / 10.0;
    axis_range(
        &mut out,
        left,
        right,
        TOP,
        BOTTOM,
        floor * 100.0,
        100.0,
        "%",
    );
    let group = (right - left) / rows.len().max(1) as f64;
    let bar = group * 0.8 / FaultKind::ALL.len() as f64;
    for (i, row) in rows.iter().enumerate() {
        for (k, &(kind, read, _)) in row.by_fault.iter().enumerate() {
            let height = (BOTTOM - TOP) * ((read - floor) / (1.0 - floor)).clamp(0.0, 1.0);
            let x = left + group * i as f64 + group * 0.1 + bar * k as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{height:.1}" fill="{}"><title>{}: {:.2}%</title></rect>"#,
                BOTTOM - height,
                colors[k % colors.len()],
                kind.name(),
                read * 100.0
            );
        }
        let (n, w, r) = row.quorums;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n}/{w}/{r}</text>"#,
            left + group * (i as f64 + 0.5),
            BOTTOM + 16.0
        );
    }
    for (k, kind) in FaultKind::ALL.iter().enumerate() {
        let x = left + (k as f64) * 70.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            BOTTOM + 30.0,
            colors[k % colors.len()],
            x + 14.0,
            BOTTOM + 39.0,
            kind.name()
        );
    }
    out.push_str("</svg>\n");
    out
}

fn axis(out: &mut String, left: f64, right: f64, top: f64, bottom: f64, max: f64, unit: &str) {
    axis_range(out, left, right, top, bottom, 0.0, max, unit);
}

#[allow(clippy::too_many_arguments)]
fn axis_range(
    out: &mut String,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    low: f64,
    high: f64,
    unit: &str,
) {
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>"##
    );
    for step in 0..=4 {
        let fraction = f64::from(step) / 4.0;
        let y = bottom - (bottom - top) * fraction;
        let value = low + (high - low) * fraction;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{value:.3}{unit}</text>"##,
            left - 4.0,
            y + 4.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_sweep_renders_a_table_and_a_chart() {
        let base = SimConfig {
            audit_reads: false,
            ..base_config(3, 1_500)
        };
        let rows = run_sweep(&base, &[(3, 2, 2), (3, 1, 1)], |_, _| {}).unwrap();
        let table = render(&rows, base.ops, base.seed);
        assert!(table.contains("3/2/2"), "{table}");
        assert!(table.contains("3/1/1"), "{table}");
        let chart = svg(&rows);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert_eq!(rows[0].by_fault.len(), FaultKind::ALL.len());
    }
}
