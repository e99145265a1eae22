//! Fault scenarios on real Redis servers: a tool module (feature `chaos`),
//! not part of the session store.
//!
//! One implementation of the scenarios (a)–(g) run by both the test suite
//! (`tests/faults.rs`, on Redis containers) and `qs-admin chaos` (on local
//! `redis-server` processes it starts itself, [`local::LocalCluster`]). A
//! scenario runs several coordinators as separate app servers — each with
//! its own connections — doing thousands of writes and reads while a fault
//! is injected through [`ChaosNodes`], records what every client saw, and
//! checks the history:
//!
//! - lost writes: each (session, field) is written by one task with rising
//!   values; after the faults heal, a quorum read must show at least the
//!   last acknowledged value;
//! - stale reads: a read that began after a write was acknowledged must show
//!   that write (or a later one) — R + W > N makes this a guarantee;
//! - resurrections: a session whose delete was acknowledged never reads back.
//!
//! Each scenario returns [`ScenarioReport`]s: one row of the fault table
//! each ([`ScenarioReport::table_row`], under [`TABLE_HEADER`]) and the
//! claims the scenario makes, held or broken
//! ([`ScenarioReport::failures`]). The sessions are synthetic
//! (`s:{fault-N}`); no report or progress message holds session data.

mod scenarios;
mod workload;

pub mod local;

use std::fmt;

use async_trait::async_trait;

use crate::replica::redis::RedisReplica;

pub use workload::{
    check, create_sessions, expiry, fields_of, key, start_workload, History, LatencySummary,
    Verdict, Workload, ERROR_SAMPLES_MAX, SESSIONS, TASKS_PER_COORDINATOR,
};

/// Three Redis nodes the scenarios inject faults into. Every method waits
/// until the fault is in place (or the node answers PING again) and panics
/// when the harness itself fails (a node that does not start): that is a
/// broken test bench, not a broken claim.
#[async_trait]
pub trait ChaosNodes: Send + Sync {
    /// Number of nodes.
    fn len(&self) -> usize;
    /// Whether there is no node.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The name the replicas of node `index` carry (in reports).
    fn replica_name(&self, index: usize) -> String {
        format!("redis-{index}")
    }
    /// A new connection to node `index` named [`ChaosNodes::replica_name`],
    /// with short timeouts (about 300 ms per request) and fast reconnects.
    async fn replica(&self, index: usize) -> RedisReplica;
    /// SIGKILL: the process dies at once, its memory is lost.
    async fn kill(&self, index: usize);
    /// Graceful stop (SIGTERM); nothing is saved (`--save ""`).
    async fn stop(&self, index: usize);
    /// Starts a killed or stopped node (with the dump of the last
    /// [`ChaosNodes::save`], if any) and waits until it answers PING.
    async fn start(&self, index: usize);
    /// Freezes the process: connections stay open, no reply comes.
    async fn pause(&self, index: usize);
    /// Thaws a paused node.
    async fn unpause(&self, index: usize);
    /// Cuts the node off: live connections drop, new ones fail.
    async fn disconnect(&self, index: usize);
    /// Ends a [`ChaosNodes::disconnect`]; waits until the node answers PING.
    async fn reconnect(&self, index: usize);
    /// Restarts the node with no data at all (not even a saved dump).
    async fn restart_empty(&self, index: usize);
    /// `SAVE`: writes the dump that the next start loads.
    async fn save(&self, index: usize);
}

/// A progress hook: called with a short message (phase, operations so far)
/// as a scenario goes. Messages hold no session data.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// One claim a scenario makes, and whether it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// What is claimed ("no acknowledged write lost").
    pub what: String,
    /// Whether it held.
    pub held: bool,
    /// What was seen (counts, durations): why it broke, when it did.
    pub seen: String,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.seen)
    }
}

/// The header of the fault table (the two Markdown lines, each ended by a
/// newline), above the rows of [`ScenarioReport::table_row`].
pub const TABLE_HEADER: &str = "| scenario | operations | errors | lost | stale | resurrected | p50 / p99 / max ms (or recovery figures) |\n| --- | --- | --- | --- | --- | --- | --- |\n";

/// One row of the fault table and the claims behind it.
#[derive(Clone, Debug, Default)]
pub struct ScenarioReport {
    /// The row's name ("(a) SIGKILL 1 of 3").
    pub name: String,
    /// Client operations made.
    pub operations: usize,
    /// Client operations that failed.
    pub errors: usize,
    /// Acknowledged writes lost.
    pub lost: usize,
    /// Stale reads.
    pub stale: usize,
    /// Reads that found no session although it existed.
    pub missing: usize,
    /// Deleted sessions that read back.
    pub resurrected: usize,
    /// Latencies of the client operations.
    pub latency: LatencySummary,
    /// The first failures seen (when, since the workload began, and what).
    pub error_samples: Vec<(std::time::Duration, String)>,
    /// Every claim the scenario checked, in order.
    pub claims: Vec<Claim>,
}

impl ScenarioReport {
    fn new(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.to_owned(),
            ..ScenarioReport::default()
        }
    }

    /// A report of a scenario that did not run to its end (a step that
    /// could not run, a panic): its one claim is broken, `why` says where.
    pub fn did_not_finish(name: &str, why: impl fmt::Display) -> ScenarioReport {
        let mut report = ScenarioReport::new(name);
        report.claim("the scenario ran to its end", false, why);
        report
    }

    /// Fills the counts and latencies from a workload's history and the
    /// checker's verdict.
    pub fn from_history(name: &str, history: &History, verdict: &Verdict) -> ScenarioReport {
        ScenarioReport {
            name: name.to_owned(),
            operations: history.operations,
            errors: history.errors,
            lost: verdict.lost,
            stale: verdict.stale,
            missing: verdict.missing,
            resurrected: 0,
            latency: LatencySummary::of(&history.latencies_us),
            error_samples: history.error_samples.clone(),
            claims: Vec::new(),
        }
    }

    /// Records a claim and whether it held.
    pub fn claim(&mut self, what: &str, held: bool, seen: impl fmt::Display) {
        self.claims.push(Claim {
            what: what.to_owned(),
            held,
            seen: seen.to_string(),
        });
    }

    /// The claims every workload scenario makes about its history: nothing
    /// lost, nothing stale, no session missing, every final read answered.
    pub fn claim_clean_history(&mut self, verdict: &Verdict) {
        self.claim(
            "no acknowledged write lost",
            verdict.lost == 0,
            format!("{} lost", verdict.lost),
        );
        self.claim(
            "no stale read",
            verdict.stale == 0,
            format!("{} stale", verdict.stale),
        );
        self.claim(
            "no session read as missing",
            verdict.missing == 0,
            format!("{} missing", verdict.missing),
        );
        self.claim(
            "every final quorum read finds its session",
            verdict.final_reads_failed == 0,
            format!("{} failed", verdict.final_reads_failed),
        );
    }

    /// The claims that broke (empty: the scenario showed what it claims).
    pub fn failures(&self) -> Vec<&Claim> {
        self.claims.iter().filter(|claim| !claim.held).collect()
    }

    /// The row of the fault table (Markdown, ended by a newline).
    pub fn table_row(&self) -> String {
        let LatencySummary {
            p50_ms,
            p99_ms,
            max_ms,
        } = self.latency;
        format!(
            "| {} | {} | {} | {} | {} | {} | {p50_ms:.1} / {p99_ms:.1} / {max_ms:.1} |\n",
            self.name, self.operations, self.errors, self.lost, self.stale, self.resurrected
        )
    }
}

/// Prints each report's row (and its first failed operations, on standard
/// error) and appends the rows to the Markdown table at `path`, with
/// [`TABLE_HEADER`] first when the file is new or empty. A table that
/// cannot be written is skipped: the rows are printed anyway.
pub fn record_rows(reports: &[ScenarioReport], path: &std::path::Path) {
    let mut text = String::new();
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        text.push_str(TABLE_HEADER);
    }
    for report in reports {
        for (at, error) in &report.error_samples {
            eprintln!("{}: error at {at:?}: {error}", report.name);
        }
        print!("{}", report.table_row());
        text.push_str(&report.table_row());
    }
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(text.as_bytes());
    }
}

/// The scenarios (a)–(g) of the Redis-replicas issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// (a) SIGKILL one node of three under the workload, then start it.
    A,
    /// (b) Two of three cut off: writes and reads fail fast, then service
    /// comes back.
    B,
    /// (c) One node paused (SIGSTOP) under the workload: time, not failures.
    C,
    /// (d) One node restarted empty: no loss, then anti-entropy refills it.
    D,
    /// (e) One node cut off the network under the workload, then back.
    E,
    /// (f) Deletes while one node is down; it returns with its old data.
    F,
    /// (g) Two app servers reading in opposite orders update different
    /// fields of the same sessions concurrently.
    G,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 7] = [
        Scenario::A,
        Scenario::B,
        Scenario::C,
        Scenario::D,
        Scenario::E,
        Scenario::F,
        Scenario::G,
    ];

    /// The scenario's letter (`a`–`g`).
    pub fn letter(self) -> char {
        match self {
            Scenario::A => 'a',
            Scenario::B => 'b',
            Scenario::C => 'c',
            Scenario::D => 'd',
            Scenario::E => 'e',
            Scenario::F => 'f',
            Scenario::G => 'g',
        }
    }

    /// The scenario of a letter (`a`–`g`, either case).
    pub fn from_letter(letter: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| letter.eq_ignore_ascii_case(&s.letter().to_string()))
    }

    /// What the scenario does, in a few words.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::A => "SIGKILL 1 of 3",
            Scenario::B => "2 of 3 down, then back",
            Scenario::C => "1 of 3 paused",
            Scenario::D => "1 of 3 restarted empty",
            Scenario::E => "network partition 1 of 3",
            Scenario::F => "delete while down, node back with old data",
            Scenario::G => "2 orders, different fields",
        }
    }

    /// `(letter) title`, as the first row of its table would begin.
    pub fn name(self) -> String {
        format!("({}) {}", self.letter(), self.title())
    }

    /// Runs the scenario on `nodes` (3 fresh, empty nodes) and returns its
    /// rows: one, or two for (c) (a healthy phase, then the paused one).
    /// A step that could not run (a coordinator that does not connect) is
    /// reported as a broken claim of the scenario's last row.
    pub async fn run(self, nodes: &dyn ChaosNodes, progress: Progress<'_>) -> Vec<ScenarioReport> {
        let result = match self {
            Scenario::A => scenarios::a_sigkill_one_of_three(nodes, progress).await,
            Scenario::B => scenarios::b_two_of_three_down_then_back(nodes, progress).await,
            Scenario::C => scenarios::c_one_node_paused(nodes, progress).await,
            Scenario::D => scenarios::d_one_node_restarted_empty(nodes, progress).await,
            Scenario::E => scenarios::e_network_partition_one_of_three(nodes, progress).await,
            Scenario::F => scenarios::f_delete_while_down_old_data(nodes, progress).await,
            Scenario::G => scenarios::g_two_orders_different_fields(nodes, progress).await,
        };
        match result {
            Ok(reports) => reports,
            Err(step) => {
                let mut report =
                    ScenarioReport::new(&format!("({}) {}", self.letter(), self.title()));
                report.claim("the scenario ran to its end", false, step);
                vec![report]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Letters parse both ways, in table order; anything else is refused.
    #[test]
    fn scenarios_by_letter() {
        for scenario in Scenario::ALL {
            let letter = scenario.letter().to_string();
            assert_eq!(Scenario::from_letter(&letter), Some(scenario));
            assert_eq!(
                Scenario::from_letter(&letter.to_uppercase()),
                Some(scenario)
            );
        }
        assert_eq!(Scenario::from_letter("h"), None);
        assert_eq!(Scenario::from_letter("ab"), None);
        assert_eq!(Scenario::A.name(), "(a) SIGKILL 1 of 3");
    }

    /// A row has the header's seven columns; failures are exactly the
    /// claims that did not hold.
    #[test]
    fn rows_and_failures() {
        let mut report = ScenarioReport::new("(x) test");
        report.operations = 10;
        report.latency = LatencySummary::of(&[1_000, 2_000, 3_000]);
        report.claim("held", true, "fine");
        report.claim("broke", false, "2 lost");
        let row = report.table_row();
        assert_eq!(row, "| (x) test | 10 | 0 | 0 | 0 | 0 | 2.0 / 3.0 / 3.0 |\n");
        let columns = |line: &str| line.matches('|').count();
        assert_eq!(columns(&row), columns(TABLE_HEADER.lines().next().unwrap()));
        let failures = report.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].to_string(), "broke: 2 lost");
        assert_eq!(
            ScenarioReport::did_not_finish("(y) t", "no coordinator")
                .failures()
                .len(),
            1
        );
        assert_eq!(LatencySummary::of(&[]), LatencySummary::default());
    }
}
