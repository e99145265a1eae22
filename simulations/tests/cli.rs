//! The commands as a user runs them: help, exit codes, the seed on stderr,
//! `pbs` output and model validation, `replay`'s bounded trace, `sweep`'s
//! table and chart.

use std::process::{Command, Output};

fn simulations(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulations"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let output = simulations(&["--help"]);
    assert!(output.status.success());
    for command in ["run", "sweep", "pbs", "replay"] {
        assert!(stdout(&output).contains(command), "{}", stdout(&output));
    }
    for command in ["run", "sweep", "pbs", "replay"] {
        assert!(
            simulations(&[command, "--help"]).status.success(),
            "{command} --help"
        );
    }
}

#[test]
fn run_is_the_default_and_prints_the_seed() {
    let output = simulations(&["--ops", "2000", "--seed", "17"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("seed 17"), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("seed 17"));
    assert!(
        report.contains("violations: lost writes 0, stale reads 0"),
        "{report}"
    );
    assert!(report.contains("simulated ops per second"));
}

/// `--scenario membership` runs the add-then-remove procedure clean (four
/// replicas in the report); a workload too short to hold every step is
/// refused rather than run with steps that served nothing.
#[test]
fn the_membership_scenario_runs_and_refuses_a_too_short_workload() {
    let args = [
        "--scenario",
        "membership",
        "--ops-per-sec",
        "500",
        "--seed",
        "1",
    ];
    let output = simulations(&[&args[..], &["--ops", "8000"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("N=4 W=3 R=2"), "{report}");
    assert!(report.contains("stale reads 0"), "{report}");
    let output = simulations(&[&args[..], &["--ops", "500"]].concat());
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("raise --ops"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn violations_make_the_exit_code_non_zero_and_name_the_seed() {
    let output = simulations(&[
        "run",
        "--ops",
        "4000",
        "--seed",
        "11",
        "-w",
        "1",
        "-r",
        "1",
        "--read-repair",
        "off",
        "--ops-per-sec",
        "800",
        "--fault-interval-ms",
        "400",
    ]);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("FAILED: seed 11"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_quorums_are_refused_with_the_field_named() {
    let output = simulations(&["--ops", "100", "-w", "4"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("write_quorum"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn pbs_prints_one_json_object_of_the_documented_shape() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/lnkd-ssd.toml");
    let output = simulations(&[
        "pbs", "--model", model, "-n", "3", "-r", "1", "-w", "1", "--trials", "2000", "--t-ms",
        "0,1,5,10", "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(value["n"], 3);
    assert_eq!(value["r"], 1);
    assert_eq!(value["w"], 1);
    assert_eq!(value["trials"], 2000);
    let points = value["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert_eq!(points[2]["t_ms"], 5.0);
    assert!(points[0]["p_consistent"].as_f64().unwrap() < 1.0);
}

#[test]
fn every_shipped_model_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        simulations::latency::LatencyModel::from_file(&path).unwrap();
        count += 1;
    }
    assert!(count >= 2, "models shipped: {count}");
}

#[test]
fn an_invalid_model_is_refused_naming_the_leg() {
    let dir = std::env::temp_dir().join(format!("sim-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let leg = "components = [{ weight = 1.0, exponential = { lambda = 1.0 } }]";
    let text = format!(
        "[write]\n{leg}\n[ack]\ncomponents = [{{ weight = 1.0, pareto = {{ xm = 0.2, alpha = 0.0 }} }}]\n[read]\n{leg}\n[response]\n{leg}\n"
    );
    std::fs::write(&path, text).unwrap();
    let output = simulations(&["pbs", "--model", path.to_str().unwrap(), "--trials", "10"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("[ack]") && message.contains("alpha"),
        "{message}"
    );
}

/// The default replay is a summary a person reads: the faults are in it,
/// it is bounded by SUMMARY_LINES_MAX (plus two header lines and the line
/// that names `--all`), and its records are short. `--all` prints every
/// event in order, invocations included, bounded only by `--max-events`.
#[test]
fn replay_prints_a_bounded_summary_and_every_event_on_request() {
    let trace_of = |text: &str| -> Vec<String> {
        text.lines()
            .take_while(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let common = ["replay", "--seed", "3", "--ops", "3000"];
    let faulty = [&common[..], &["--fault-interval-ms", "100"]].concat();
    let output = simulations(&faulty);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let trace = trace_of(&text);
    assert!(
        trace.len() <= simulations::trace::SUMMARY_LINES_MAX + 3,
        "{} lines:\n{text}",
        trace.len()
    );
    assert!(
        trace.iter().any(|l| l.contains("** fault #0 starts")),
        "{text}"
    );
    assert!(trace.iter().all(|l| l.chars().count() <= 200), "{text}");
    assert!(
        trace.last().unwrap().contains("--all prints every event"),
        "{text}"
    );
    assert!(text.contains("quorum-sessions simulation — seed 3"));

    let help = stdout(&simulations(&["replay", "--help"]));
    let bound = format!("{} for the summary", simulations::trace::SUMMARY_LINES_MAX);
    assert!(help.contains(&bound) && help.contains("--all"), "{help}");

    let all = [&common[..], &["--all", "--max-events", "25"]].concat();
    let output = simulations(&all);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let trace = trace_of(&text);
    assert_eq!(trace.len(), 26, "25 events and the omitted line:\n{text}");
    assert!(trace[0].contains(" create s:{"), "invocations too: {text}");
    assert!(trace[25].contains("more events left out"), "{text}");
}

#[test]
fn sweep_prints_a_table_and_writes_a_chart() {
    let svg = std::env::temp_dir().join(format!("sweep-{}.svg", std::process::id()));
    let output = simulations(&[
        "sweep",
        "--ops",
        "800",
        "--presets",
        "3/2/2,3/1/1",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    assert!(
        table.contains("3/2/2") && table.contains("3/1/1"),
        "{table}"
    );
    assert!(table.contains("clock-skew"), "{table}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"));
}
