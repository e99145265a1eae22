//! `qs-admin chaos`, run as a process: it starts its own local cluster
//! (`redis-server` processes on 127.0.0.1 behind proxies), runs scenarios
//! (a) SIGKILL and (c) pause of the test suite's fault scenarios
//! (`quorum_sessions::chaos`, the same code as `tests/faults.rs`), and
//! prints the fault table. What it proves: the command exits 0 (every
//! claim of both scenarios held), prints the table's header and one row per
//! scenario — (c) has two: its healthy phase and the paused one — each
//! with 0 lost writes and 0 stale reads, and leaves no `redis-server` it
//! started behind.
//!
//! Needs `redis-server` on PATH (CI installs it: `.ci/run`). Runtime:
//! about 20 s. Latencies are printed, not asserted.
#![cfg(feature = "cli")]

use std::process::Command;

use quorum_sessions::chaos::TABLE_HEADER;

fn redis_server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

#[test]
fn chaos_runs_two_scenarios_on_a_local_cluster_and_prints_the_table() {
    assert!(
        redis_server_installed(),
        "`redis-server` is not on PATH: install Redis (apt-get install redis-server) to run this test"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_qs-admin"))
        .args(["chaos", "--scenario", "a,c"])
        .env_remove("QS_REDIS_URLS")
        .output()
        .expect("run qs-admin chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert!(stdout.contains(TABLE_HEADER), "the table header\n{context}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("| (") && !line.starts_with("| scenario"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|row| cells(row)[0]).collect();
    assert_eq!(
        names,
        [
            "(a) SIGKILL 1 of 3",
            "(c) healthy phase",
            "(c) 1 of 3 paused"
        ],
        "one row per scenario\n{context}"
    );
    for row in rows {
        let cells = cells(row);
        assert!(
            cells[1].parse::<usize>().unwrap() > 0,
            "operations ran: {row}"
        );
        assert_eq!(cells[3], "0", "no lost write: {row}");
        assert_eq!(cells[4], "0", "no stale read: {row}");
    }
}
