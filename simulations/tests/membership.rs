//! The membership scenario (`docs/membership.md` under the simulator's
//! workload and faults, app servers rolled one slot at a time): the
//! documented procedure counts no violation on fixed seeds, and each way of
//! doing it wrong is caught by the checker on fixed seeds where the
//! documented procedure is clean. Small runs (debug build): 8 000
//! operations at 500 per second on 50 active sessions, a fault every
//! 2.5 s on average.

use simulations::config::SimConfig;
use simulations::{membership, Procedure, Report};

/// The run every test uses: the default configuration on 50 active
/// sessions instead of 300, so that the few hundred operations of each
/// roll land on sessions written in the step before; 16 s of virtual time
/// leave room for every step to wait for the servers it replaces to stop.
fn config(seed: u64) -> SimConfig {
    let mut config = SimConfig {
        seed,
        ops: 8_000,
        ..SimConfig::default()
    };
    config.workload.ops_per_sec = 500.0;
    config.workload.active_sessions_max = 50;
    config
}

fn run(seed: u64, procedure: Procedure) -> Report {
    let config = config(seed);
    let report = membership(&config, procedure).expect("valid configuration");
    assert_eq!(report.ops, config.ops, "every operation was issued");
    report
}

/// `wrong` counts stale reads on at least one of `seeds` where the
/// documented procedure counts no violation. Several seeds: which runs
/// happen to expose the wrong procedure moves with any change to the
/// coordinator's timing (the seeds were found by scanning 1–40; the last
/// scan caught the unflagged add on 13 seeds, the one-roll removal on 5).
fn caught_where_the_documented_procedure_is_clean(wrong: Procedure, seeds: &[u64]) {
    let mut reports = Vec::new();
    for &seed in seeds {
        let report = run(seed, wrong);
        if report.violations.stale_reads > 0 {
            let right = run(seed, Procedure::Documented);
            assert!(right.is_clean(), "seed {seed}:\n{}", right.render());
            return;
        }
        reports.push(report.render());
    }
    panic!(
        "{wrong:?} caught on none of {seeds:?}:\n{}",
        reports.join("\n")
    );
}

/// The documented procedure (add D write-only, operator pass, D a member;
/// then D write-only, A B C, stop D) keeps every guarantee the checker
/// judges: no lost write, stale read, resurrection or false "not found",
/// and the replicas left converge.
#[test]
fn the_documented_procedure_counts_no_violation() {
    for seed in [1, 2, 3] {
        let report = run(seed, Procedure::Documented);
        assert!(report.is_clean(), "seed {seed}:\n{}", report.render());
        assert!(report.converged_after_ms.is_some(), "seed {seed} converged");
    }
}

/// Listing D without the write-only flag in the add's first roll is caught:
/// a new server's own pass marks D complete and reads it while old servers
/// still write only to A B C (stale reads on seeds 3, 12, 22 in the last
/// scan).
#[test]
fn adding_without_write_only_is_caught() {
    caught_where_the_documented_procedure_is_clean(Procedure::AddWithoutWriteOnly, &[3, 12, 22]);
}

/// Removing D in one roll (no write-only step) is caught: servers reading D
/// and one of A B C run beside servers that write only to A B C (stale
/// reads on seeds 5, 18, 39 in the last scan).
#[test]
fn removing_in_one_roll_is_caught() {
    caught_where_the_documented_procedure_is_clean(Procedure::RemoveInOneRoll, &[5, 18, 39]);
}
