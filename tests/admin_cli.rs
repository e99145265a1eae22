//! The admin CLI (`qs-admin`, feature `cli`), run as a process against three
//! real Redis servers (testcontainers) holding sessions written through the
//! session store. What it proves, each point asserted on the CLI's output,
//! exit status, and the servers' contents:
//!
//! 1. `status` names every replica with its epoch state and says "ready"
//!    (exit 0); after one node restarted empty it shows that node
//!    "refilling" and still ready (2 of 3 complete is enough for W = R = 2).
//! 2. `inspect <id>` shows the session on every replica, the emptied one
//!    "missing" field by field, and no session value unless
//!    `--show-values` is given.
//! 3. `repair --dry-run` reports the records it would send to the emptied
//!    node and writes nothing (its key count does not move); `repair` then
//!    refills it and marks it complete (its key count matches the others).
//! 4. Two nodes restarted empty: `status` says NOT READY (operator needed,
//!    exit 2); `accept-data-loss` answered "no" changes nothing (exit 1);
//!    with `--yes` it copies what node 0 holds into both and marks them
//!    complete; then `status` is ready and every session reads back whole
//!    from a new store.
//!
//! 0. Looking decides nothing: `status` on a brand-new cluster marks no
//!    replica complete, and `repair` / `accept-data-loss` refuse to run
//!    without the application's W and R.
//!
//! Runtime: about 10 s. Needs Docker (see `tests/support`).
#![cfg(feature = "cli")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use quorum_sessions::replica::Replica;
use quorum_sessions::session::{ClientInfo, NewSession, SessionId};
use quorum_sessions::SessionStore;
use support::RedisNodes;

const SESSIONS: usize = 20;

/// Runs `qs-admin` on the nodes with `args` (stdin: `input`); returns the
/// exit code and stdout (stderr is appended, for the assertion messages).
async fn admin(nodes: &RedisNodes, args: &[&str], input: &str) -> (i32, String) {
    let mut with_quorums = vec!["-w", "2", "-r", "2"];
    with_quorums.extend_from_slice(args);
    admin_raw(nodes, &with_quorums, input).await
}

/// [`admin`] without the quorum flags.
async fn admin_raw(nodes: &RedisNodes, args: &[&str], input: &str) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qs-admin"));
    for node in nodes.nodes() {
        command.arg("--redis").arg(node.url());
    }
    command
        .args(["--timeout-ms", "1000"])
        .args(args)
        .env_remove("QS_REDIS_URLS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start qs-admin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().expect("qs-admin output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

fn store_builder(nodes: &RedisNodes) -> quorum_sessions::SessionStoreBuilder {
    let mut cluster = quorum_sessions::ClusterConfig::default();
    // The CLI does the repairs here, not the store's background task.
    cluster.anti_entropy.on_rejoin = false;
    cluster.anti_entropy.interval = None;
    SessionStore::builder()
        .redis(nodes.nodes().iter().map(|node| node.url()))
        .cluster_config(cluster)
}

fn line_of<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_inspect_repair_and_accept_data_loss_on_real_redis() {
    let nodes = RedisNodes::start(3).await;
    let names: Vec<String> = nodes
        .nodes()
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port()))
        .collect();

    // 0. Looking decides nothing: on a brand-new, empty cluster `status`
    // reports every replica refilling (not ready) and marks none complete
    // (the application's first start does that); `repair` refuses to guess
    // the application's quorums.
    let (code, out) = admin_raw(&nodes, &["status"], "").await;
    assert_eq!(code, 2, "{out}");
    for name in &names {
        assert!(line_of(&out, name).contains("refilling"), "{out}");
    }
    for node in nodes.nodes() {
        let epoch = node.replica().await.ping().await.unwrap();
        assert!(!epoch.complete, "status marked a replica complete");
    }
    let (code, out) = admin_raw(&nodes, &["repair", "--dry-run"], "").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("give -w and -r"), "{out}");

    // Sessions written through the store, which is then shut down.
    let store = store_builder(&nodes).connect().await.unwrap();
    let mut ids: Vec<SessionId> = Vec::new();
    for i in 0..SESSIONS {
        let new = NewSession::for_user(format!("user-{i}"))
            .data("email", format!("secret-{i}@example.com"));
        ids.push(*store.create(new).await.unwrap().id());
    }
    store.coordinator().shutdown(Duration::from_secs(5)).await;
    drop(store);

    // 1. All complete, ready.
    let (code, out) = admin(&nodes, &["status"], "").await;
    assert_eq!(code, 0, "{out}");
    for name in &names {
        assert!(line_of(&out, name).contains("complete"), "{out}");
    }
    assert!(out.contains("ready: reads and writes are served"), "{out}");

    nodes.node(2).restart_empty().await;
    let (code, out) = admin(&nodes, &["status"], "").await;
    assert_eq!(
        code, 0,
        "one empty node of three leaves the cluster ready:\n{out}"
    );
    assert!(line_of(&out, &names[2]).contains("refilling"), "{out}");
    assert!(line_of(&out, &names[0]).contains("complete"), "{out}");

    // 2. Inspect: node 2 misses every field; values hidden by default.
    let id = ids[7].to_string();
    let (code, out) = admin(&nodes, &["inspect", &id], "").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        line_of(&out, &format!("  {}", names[2])).contains("no record (refilling"),
        "{out}"
    );
    let email_row = line_of(&out, "  d:email");
    assert_eq!(email_row.matches('=').count(), 2, "{out}");
    assert!(email_row.contains("missing"), "{out}");
    assert!(
        !out.contains("secret-7@example.com"),
        "values are hidden:\n{out}"
    );
    assert!(
        !out.contains(&id),
        "the full session id is never printed:\n{out}"
    );
    let (_, out) = admin(&nodes, &["inspect", &id, "--show-values"], "").await;
    assert!(out.contains("secret-7@example.com"), "{out}");
    let (code, out) = admin(&nodes, &["inspect", "not-a-session-id"], "").await;
    assert_eq!(code, 1, "a bad id is an error:\n{out}");

    // 3. Dry run writes nothing; repair refills and marks complete.
    let before = nodes.node(2).dbsize().await;
    let (code, out) = admin(&nodes, &["repair", "--dry-run"], "").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("dry run:"), "{out}");
    let to_send: u64 = line_of(&out, &format!("  {}", names[2]))
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("records to send for node 2 in:\n{out}"));
    // Each session and each user's index record.
    assert_eq!(to_send, 2 * SESSIONS as u64, "{out}");
    assert_eq!(
        nodes.node(2).dbsize().await,
        before,
        "a dry run writes nothing"
    );
    let (code, out) = admin(&nodes, &["repair"], "").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("refilled and marked complete: {}", names[2])),
        "{out}"
    );
    assert_eq!(nodes.node(2).dbsize().await, nodes.node(0).dbsize().await);

    // 4. Two nodes lost their data: the operator decides.
    nodes.node(1).restart_empty().await;
    nodes.node(2).restart_empty().await;
    let (code, out) = admin(&nodes, &["status"], "").await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NOT READY: OperatorNeeded"), "{out}");
    assert!(out.contains("qs-admin accept-data-loss"), "{out}");
    let (code, out) = admin(&nodes, &["accept-data-loss"], "no\n").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    let (code, _) = admin(&nodes, &["status"], "").await;
    assert_eq!(code, 2, "refusing changed nothing");
    let (code, out) = admin(&nodes, &["accept-data-loss", "--yes"], "").await;
    assert_eq!(code, 0, "{out}");
    for name in &names[1..] {
        assert!(out.contains(&format!("{name}: marked complete")), "{out}");
    }
    let (code, out) = admin(&nodes, &["status"], "").await;
    assert_eq!(code, 0, "{out}");

    // What node 0 held was copied before anything was trusted: every
    // session reads back whole, also from the two emptied nodes alone.
    for node in [1, 2] {
        assert_eq!(
            nodes.node(node).dbsize().await,
            nodes.node(0).dbsize().await
        );
    }
    let store = store_builder(&nodes).connect().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let session = store
            .get(id, &ClientInfo::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("session {i} lost"));
        assert_eq!(
            session.get("email").and_then(|v| v.as_str()),
            Some(format!("secret-{i}@example.com").as_str())
        );
    }
}
