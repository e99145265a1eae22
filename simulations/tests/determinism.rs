//! One seed, one run: two runs of the same seed give the same report, the
//! same trace and (through the binary) the same JSON, except
//! `sim_ops_per_sec`, the only wall-clock measurement.

use std::process::Command;

use simulations::config::SimConfig;
use simulations::trace::TraceOptions;
use simulations::{run, run_observed, Observer};

fn small(seed: u64) -> SimConfig {
    let mut config = SimConfig {
        seed,
        ops: 4_000,
        ..SimConfig::default()
    };
    config.workload.ops_per_sec = 1_000.0;
    config.faults.mean_interval_ms = 500.0;
    config
}

#[test]
fn the_same_seed_gives_a_byte_identical_report() {
    let first = run(&small(5)).unwrap();
    let second = run(&small(5)).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.render(), second.render());
    assert_eq!(first.to_json().to_string(), second.to_json().to_string());
    let other = run(&small(6)).unwrap();
    assert_ne!(first.render(), other.render(), "another seed, another run");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let trace = || {
        let observer = Observer {
            trace: Some(TraceOptions {
                all: true,
                max_events: 300,
                ..TraceOptions::default()
            }),
            progress: None,
        };
        let (_, trace) = run_observed(&small(7), observer).unwrap();
        trace.unwrap().lines()
    };
    let first = trace();
    assert_eq!(first.len(), 300, "bounded by max_events");
    assert_eq!(first, trace());
    let summary = || {
        let observer = Observer {
            trace: Some(TraceOptions {
                max_events: 120,
                ..TraceOptions::default()
            }),
            progress: None,
        };
        let (_, trace) = run_observed(&small(7), observer).unwrap();
        trace.unwrap().lines()
    };
    let first = summary();
    assert!(!first.is_empty());
    assert_eq!(first, summary(), "the default replay too");
}

fn json_run(seed: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_simulations"))
        .args(["run", "--json", "--ops", "3000", "--seed", seed])
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    serde_json::from_str(stdout.trim()).expect("valid JSON")
}

#[test]
fn json_output_differs_only_in_sim_ops_per_sec() {
    let mut first = json_run("9");
    let mut second = json_run("9");
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "seed",
        "config",
        "ops",
        "acknowledged_writes",
        "violations",
        "availability",
        "latency_ms",
        "sim_ops_per_sec",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    for (field, inner) in [
        ("config", &["n", "r", "w"][..]),
        (
            "violations",
            &[
                "diverged_keys",
                "expired_served",
                "hidden_writes",
                "lost_writes",
                "non_monotonic_reads",
                "resurrections",
                "stale_reads",
            ][..],
        ),
        ("availability", &["read", "write"][..]),
        (
            "latency_ms",
            &["read_p50", "read_p99", "write_p50", "write_p99"][..],
        ),
    ] {
        let mut names: Vec<&str> = first[field]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(names, inner, "{field}");
    }
    assert!(first["sim_ops_per_sec"].as_f64().unwrap() > 0.0);
    first.as_object_mut().unwrap().remove("sim_ops_per_sec");
    second.as_object_mut().unwrap().remove("sim_ops_per_sec");
    assert_eq!(first, second);
    assert_eq!(first["seed"], 9);
    assert_eq!(first["config"]["n"], 3);
}
