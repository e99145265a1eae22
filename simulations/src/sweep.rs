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

/// The right panel's colours, one per fault kind (none of them the left
/// panel's green or red, which mean R+W>N and R+W≤N).
const FAULT_COLORS: [&str; 7] = [
    "#4e79a7", "#f28e2b", "#76b7b2", "#b07aa1", "#9c755f", "#ff9da7", "#8c8c8c",
];
const _: () = assert!(
    FAULT_COLORS.len() >= FaultKind::ALL.len(),
    "a colour per fault kind"
);
/// Green: the preset's read and write quorums overlap (R+W>N).
const OVERLAP_COLOR: &str = "#59a14f";
/// Red: they need not overlap (R+W≤N).
const NO_OVERLAP_COLOR: &str = "#e15759";
/// Estimated width of one character of the 12 px sans-serif labels, px.
const CHAR_WIDTH: f64 = 7.0;

/// An SVG chart: stale-read rate per preset (left; bars green when R+W>N,
/// red otherwise, each labelled with its value, so a preset with no stale
/// read still shows) and read availability under each fault kind (right,
/// 0–100 %).
pub fn svg(rows: &[SweepRow]) -> String {
    const WIDTH: f64 = 960.0;
    const HEIGHT: f64 = 430.0;
    const TOP: f64 = 60.0;
    const BOTTOM: f64 = 340.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    // Left panel: stale-read rate, from 0 to a nice tick above the largest.
    let (left, right) = (60.0, 430.0);
    let max_percent = rows
        .iter()
        .map(|row| row.stale_read_rate() * 100.0)
        .fold(0.0, f64::max)
        .max(0.01);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="30" font-size="15" font-weight="bold">Stale reads under all faults (% of reads)</text>"#
    );
    let top_percent = axis(&mut out, left, right, TOP, BOTTOM, max_percent, "%");
    let slot = (right - left) / rows.len().max(1) as f64;
    for (i, row) in rows.iter().enumerate() {
        let percent = row.stale_read_rate() * 100.0;
        let height = (BOTTOM - TOP) * percent / top_percent;
        let x = left + slot * i as f64 + slot * 0.2;
        let (n, w, r) = row.quorums;
        let fill = if r + w > n {
            OVERLAP_COLOR
        } else {
            NO_OVERLAP_COLOR
        };
        // A zero bar is a 2 px line on the axis, so its colour shows.
        let height = height.max(2.0);
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{fill}"><title>{n}/{w}/{r}: {}</title></rect>"#,
            BOTTOM - height,
            slot * 0.6,
            percent_label(percent)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{fill}">{}</text>"#,
            x + slot * 0.3,
            BOTTOM - height - 4.0,
            percent_label(percent)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n}/{w}/{r}</text>"#,
            x + slot * 0.3,
            BOTTOM + 16.0
        );
    }
    let caption_y = BOTTOM + 38.0;
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="{caption_y:.1}" fill="#555">N/W/R, bar colour:</text>"##
    );
    legend(
        &mut out,
        left + 130.0,
        right + 60.0,
        caption_y - 9.0,
        &[
            (OVERLAP_COLOR, "R+W&gt;N (quorums overlap)"),
            (NO_OVERLAP_COLOR, "R+W≤N"),
        ],
    );
    // Right panel: read availability per fault kind, 0–100 %.
    let (left, right) = (520.0, 930.0);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="30" font-size="15" font-weight="bold">Read availability with one fault kind (%)</text>"#
    );
    axis(&mut out, left, right, TOP, BOTTOM, 100.0, "%");
    let group = (right - left) / rows.len().max(1) as f64;
    let bar = group * 0.8 / FaultKind::ALL.len() as f64;
    for (i, row) in rows.iter().enumerate() {
        for (k, &(kind, read, _)) in row.by_fault.iter().enumerate() {
            let height = (BOTTOM - TOP) * read.clamp(0.0, 1.0);
            let x = left + group * i as f64 + group * 0.1 + bar * k as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{height:.1}" fill="{}"><title>{}: {:.2}%</title></rect>"#,
                BOTTOM - height,
                FAULT_COLORS[k % FAULT_COLORS.len()],
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
    let entries: Vec<(&str, &str)> = FaultKind::ALL
        .iter()
        .enumerate()
        .map(|(k, kind)| (FAULT_COLORS[k % FAULT_COLORS.len()], kind.name()))
        .collect();
    legend(&mut out, left, right, BOTTOM + 29.0, &entries);
    out.push_str("</svg>\n");
    out
}

/// Legend entries (colour swatch, label) laid out left to right from `left`,
/// wrapping to a new row before `right`; returns the rows used. Each entry
/// is as wide as its label's estimated width, so none overlaps the next.
fn legend(out: &mut String, left: f64, right: f64, top: f64, entries: &[(&str, &str)]) -> usize {
    const ROW: f64 = 18.0;
    let (mut x, mut y, mut rows) = (left, top, 1);
    for &(color, label) in entries {
        let width = legend_entry_width(label);
        if x > left && x + width > right {
            (x, y, rows) = (left, y + ROW, rows + 1);
        }
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            x + 14.0,
            y + 9.0,
        );
        x += width;
    }
    rows
}

/// Width an entry takes: swatch, gap, label, space before the next.
fn legend_entry_width(label: &str) -> f64 {
    let chars = label
        .replace("&gt;", ">")
        .replace("&lt;", "<")
        .chars()
        .count();
    14.0 + chars as f64 * CHAR_WIDTH + 14.0
}

/// A percentage with two significant digits: `0`, `0.0078%`, `0.58%`,
/// `12%`.
fn percent_label(percent: f64) -> String {
    if percent <= 0.0 {
        return "0".to_owned();
    }
    let decimals = (1 - percent.log10().floor() as i32).max(0) as usize;
    format!("{percent:.decimals$}%")
}

/// Axis ticks from 0: a step of 1, 2 or 5 × 10^k, and the number of steps
/// (at most `steps_max`) that reaches `max`.
pub fn nice_ticks(max: f64, steps_max: usize) -> (f64, usize) {
    assert!(max > 0.0 && steps_max > 0, "a positive range");
    let raw = max / steps_max as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .expect("10 × magnitude is at least raw");
    let steps = ((max / step) - 1e-9).ceil().max(1.0) as usize;
    (step, steps)
}

/// A tick's label: as many decimals as the step needs, no more.
pub fn tick_label(value: f64, step: f64, unit: &str) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}{unit}")
}

/// Draws axes from 0 to the first nice tick at or above `max`, with a
/// gridline per tick; returns that top value.
fn axis(
    out: &mut String,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    max: f64,
    unit: &str,
) -> f64 {
    let (step, steps) = nice_ticks(max, 5);
    let high = step * steps as f64;
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>"##
    );
    for tick in 0..=steps {
        let value = step * tick as f64;
        let y = bottom - (bottom - top) * value / high;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 4.0,
            y + 4.0,
            tick_label(value, step, unit)
        );
    }
    high
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
        // 3/2/2 has R+W>N and is drawn green; 3/1/1 red; both bars show.
        assert!(chart.contains(&format!(r#"fill="{OVERLAP_COLOR}"><title>3/2/2"#)));
        assert!(chart.contains(&format!(r#"fill="{NO_OVERLAP_COLOR}"><title>3/1/1"#)));
        assert!(!chart.contains("NaN") && !chart.contains("inf"));
    }

    /// Ticks step by 1, 2 or 5 × 10^k, start at 0 and reach the maximum in
    /// at most five steps; labels carry only the decimals the step needs
    /// (the old axis printed `3.001%`).
    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(100.0, 5), (20.0, 5));
        assert_eq!(nice_ticks(0.5834, 5), (0.2, 3));
        assert_eq!(nice_ticks(3.001, 5), (1.0, 4));
        assert_eq!(nice_ticks(0.01, 5), (0.002, 5));
        let (step, steps) = nice_ticks(7.3, 5);
        assert_eq!((step, steps), (2.0, 4));
        assert_eq!(tick_label(3.0 * 0.2, 0.2, "%"), "0.6%");
        assert_eq!(tick_label(40.0, 20.0, "%"), "40%");
        assert_eq!(tick_label(0.006, 0.002, "%"), "0.006%");
        assert_eq!(percent_label(0.0), "0");
        assert_eq!(percent_label(0.5834), "0.58%");
        assert_eq!(percent_label(0.0078), "0.0078%");
        assert_eq!(percent_label(12.34), "12%");
    }

    /// Legend entries never overlap: each starts after the previous one's
    /// estimated width, and rows wrap inside the panel.
    #[test]
    fn legend_entries_do_not_overlap() {
        let names: Vec<(&str, &str)> = FaultKind::ALL.iter().map(|k| ("#000", k.name())).collect();
        let mut out = String::new();
        let rows = legend(&mut out, 520.0, 930.0, 0.0, &names);
        let mut previous: Option<(f64, f64, f64)> = None; // x, y, end
        for (line, &(_, name)) in out.lines().zip(&names) {
            let x: f64 = line
                .split(r#"x=""#)
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let y: f64 = line
                .split(r#"y=""#)
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let end = x + legend_entry_width(name);
            assert!(end <= 930.0 + 1e-9 || x == 520.0, "{name} fits");
            if let Some((px, py, pend)) = previous {
                assert!(
                    y > py || (y == py && x >= pend && x > px),
                    "{name} after the previous"
                );
            }
            previous = Some((x, y, end));
        }
        assert!(rows >= 2, "seven fault kinds need two rows in 410 px");
    }
}
