//! Each detector of the history checker is shown to work: a configuration
//! that makes the anomaly possible (R + W <= N, naive servers, protections
//! switched off, wipes beyond the budget) must count it, while the default configuration,
//! on the same seeds, counts nothing. Fixed seeds, small runs (debug build).

use quorum_sessions::config::ReadRepair;
use simulations::config::{FaultKind, SimConfig};
use simulations::{run, Report};

const OPS: u64 = 6_000;

/// The default configuration, with fewer operations spread over more virtual
/// time (about 7.5 s, so that short sessions expire) and faults every 0.5 s
/// on average.
fn base(seed: u64) -> SimConfig {
    let mut config = SimConfig {
        seed,
        ops: OPS,
        ..SimConfig::default()
    };
    config.workload.ops_per_sec = 800.0;
    config.faults.mean_interval_ms = 500.0;
    config
}

fn run_ok(config: &SimConfig) -> Report {
    let report = run(config).expect("valid configuration");
    assert!(report.ops == config.ops, "every operation was issued");
    report
}

#[test]
fn the_default_configuration_counts_no_violation() {
    for seed in [1, 2] {
        let report = run_ok(&base(seed));
        assert!(report.is_clean(), "seed {seed}:\n{}", report.render());
        assert!(report.converged_after_ms.is_some(), "seed {seed} converged");
    }
}

#[test]
fn stale_reads_are_counted_when_r_plus_w_is_at_most_n() {
    let mut config = base(11).with_quorums(3, 1, 1);
    config.cluster.read_repair = ReadRepair::Off;
    let report = run_ok(&config);
    assert!(report.violations.stale_reads > 0, "{}", report.render());
}

#[test]
fn resurrections_are_counted_without_tombstones() {
    let mut config = base(12);
    config.switches.tombstones = false;
    let report = run_ok(&config);
    assert!(report.violations.resurrections > 0, "{}", report.render());
}

// Expired sessions served: the simulator runs the production read path,
// whose expiry check has no switch; the detector is shown on a history in
// the checker's own table test (`checker::tests::read_table`, "expired
// served").

#[test]
fn hidden_writes_are_counted_when_merge_replies_carry_no_held_stamp() {
    // Without the stamps a record held, a coordinator whose clock is behind
    // cannot re-stamp above a write acknowledged before: last-writer-wins
    // then hides its acknowledged write (clock skew is on by default).
    let mut config = base(16);
    config.switches.held_stamps = false;
    let report = run_ok(&config);
    assert!(report.violations.hidden_writes > 0, "{}", report.render());
}

#[test]
fn diverged_keys_are_counted_without_anti_entropy_hints_or_read_repair() {
    let mut config = base(14);
    config.switches.anti_entropy = false;
    config.switches.hints = false;
    config.cluster.read_repair = ReadRepair::Off;
    config.quiesce_bound_ms = 2_000;
    let report = run_ok(&config);
    assert!(report.violations.diverged_keys > 0, "{}", report.render());
    assert_eq!(report.converged_after_ms, None);
}

#[test]
fn lost_writes_are_counted_when_wipes_outrun_a_single_acknowledgement() {
    // W = 1 and no hints: a write may sit on one replica only; wipes beyond
    // the budget then destroy it before anti-entropy copies it anywhere.
    let mut config = base(15).with_quorums(3, 1, 1);
    config.switches.hints = false;
    config.cluster.read_repair = ReadRepair::Off;
    config.faults.kinds = vec![
        FaultKind::RestartEmpty,
        FaultKind::Loss,
        FaultKind::Partition,
    ];
    config.faults.wipe_budget = false;
    config.faults.mean_interval_ms = 150.0;
    config.faults.concurrent_max = 3;
    config.faults.loss_probability = (0.5, 0.9);
    let report = run_ok(&config);
    assert!(report.violations.lost_writes > 0, "{}", report.render());
}
