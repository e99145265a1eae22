//! The membership scenario: `docs/membership.md` run under the normal
//! workload and faults. Three replicas A B C (W = 2, R = 2) and K app
//! servers; a fourth replica D joins empty and later leaves, each step a
//! rolling restart of the app servers one slot at a time, so that servers
//! of two consecutive steps serve side by side (as `tests/membership.rs`
//! does on real Redis). The run ends as any other (heal, quiesce, audit,
//! checker), D excluded once it is stopped.
//!
//! [`Procedure::Documented`] follows the document; the other procedures
//! skip one of its safeguards, for the detector tests.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use rand::SeedableRng;

use super::{connect_app, Members, Observer, World};
use crate::config::SimConfig;
use crate::report::Report;
use crate::trace::Trace;

/// The joining and leaving replica (D): the last of the four.
const JOINING: usize = 3;
/// Replicas of the scenario: A B C and D.
const REPLICAS: usize = 4;
/// How often the procedure looks at the workload's progress.
const POLL: Duration = Duration::from_millis(10);
/// A rolled-out app server keeps serving the requests it already took
/// this long before it shuts down (a read and its blocking repair, each
/// within the 500 ms request timeout).
const DRAIN: Duration = Duration::from_secs(1);
/// The rolled-out server's shutdown deadline (its writes finish, its hints
/// are handed over).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);
/// The operator's flag-free passes until D shows complete, at most.
const OPERATOR_TRIES: usize = 100;
/// Between two tries (another pass holds the lease, D unreachable).
const OPERATOR_RETRY: Duration = Duration::from_millis(200);
/// A step starts only once the servers the previous step replaced have
/// stopped; waiting for that takes at most this long (their drain and
/// shutdown deadline, and a margin).
const STOPPED_BOUND: Duration = Duration::from_secs(10);

/// How the membership change is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Procedure {
    /// `docs/membership.md`: add with D write-only, operator pass, D a
    /// member; remove by D write-only, then A B C, then stop D.
    Documented,
    /// Wrong: the add's first roll lists D without the write-only flag, so
    /// a new server's own pass marks D complete and reads it while old
    /// servers still write only to A B C.
    AddWithoutWriteOnly,
    /// Wrong: the removal goes from A B C D straight to A B C, so servers
    /// still reading D (and one of A B C) run beside servers that no
    /// longer write D.
    RemoveInOneRoll,
}

impl Procedure {
    /// The rolls, in order: each the members every app server moves to,
    /// and whether the operator's flag-free pass follows it.
    fn rolls(self) -> Vec<(Members, bool)> {
        let abcd = |write_only: &[usize]| Members {
            replicas: vec![0, 1, 2, JOINING],
            write_quorum: 3,
            read_quorum: 2,
            write_only: write_only.to_vec(),
        };
        let joining = if self == Procedure::AddWithoutWriteOnly {
            abcd(&[])
        } else {
            abcd(&[JOINING])
        };
        let mut rolls = vec![(joining, true), (abcd(&[]), false)];
        if self != Procedure::RemoveInOneRoll {
            rolls.push((abcd(&[JOINING]), false));
        }
        rolls.push((initial(), false));
        rolls
    }
}

/// The step-0 servers: A B C, W = 2, R = 2.
fn initial() -> Members {
    Members {
        replicas: vec![0, 1, 2],
        write_quorum: 2,
        read_quorum: 2,
        write_only: Vec::new(),
    }
}

/// Runs the membership scenario: `config`'s workload, faults and seed,
/// with four replicas (D down and out of the cluster until it joins) and
/// `procedure`'s rolls spread evenly over the fault phase.
///
/// # Errors
///
/// An invalid configuration, a runtime that cannot be built, or a
/// workload too short to hold every step.
pub fn membership(config: &SimConfig, procedure: Procedure) -> anyhow::Result<Report> {
    membership_observed(config, procedure, Observer::default()).map(|(report, _)| report)
}

/// [`membership`] with a trace and/or a progress callback (`replay
/// --scenario membership`).
///
/// # Errors
///
/// An invalid configuration, or a runtime that cannot be built.
pub fn membership_observed(
    config: &SimConfig,
    procedure: Procedure,
    observer: Observer,
) -> anyhow::Result<(Report, Option<Trace>)> {
    // The run's own quorums are D's member step's (N = 4, W = 3, R = 2);
    // each app server gets its step's from `Members`.
    let config = config.clone().with_quorums(REPLICAS, 3, 2);
    config.validate()?;
    super::watch_panics();
    super::PANICKED.with(|p| p.set(false));
    let (runtime, local) = super::virtual_runtime()?;
    let outcome = local.block_on(&runtime, async move {
        let world = World::start(config, observer, Some(initial())).await?;
        // D does not exist yet: down, and out of the faults' reach.
        world.retired.borrow_mut()[JOINING] = true;
        world.net.lock().stop(JOINING);
        world.spawn(world.clone().snapshots());
        if !world.config.faults.kinds.is_empty() {
            world.spawn(world.clone().inject_faults());
        }
        let done = Rc::new(Cell::new(false));
        {
            let (world, done) = (world.clone(), done.clone());
            world.clone().spawn(async move {
                world.procedure(procedure).await;
                done.set(true);
            });
        }
        world.clone().arrivals().await;
        world.check_panic();
        // Every step must have served under load: the procedure is done by
        // the time the last operation is issued.
        anyhow::ensure!(
            done.get(),
            "the workload ended before the membership procedure: raise --ops or lower --ops-per-sec"
        );
        world.heal().await;
        world.check_panic();
        world.quiesce().await;
        world.audit().await;
        world.check_panic();
        {
            let mut driver = world.driver();
            driver.phase = super::Phase::Done;
            driver.end_us = world.now_us();
        }
        Ok(world.finish())
    });
    drop(local);
    drop(runtime);
    if super::PANICKED.with(|p| p.replace(false)) {
        anyhow::bail!("a task of the run panicked (see the message above)");
    }
    outcome
}

impl World {
    /// The operator's part: each roll starts when the workload reached its
    /// share of the operations, so every step serves under load.
    async fn procedure(self: Rc<Self>, procedure: Procedure) {
        let rolls = procedure.rolls();
        let slots = self.app_count();
        // Rolled-out servers still finishing their requests.
        let draining = Rc::new(Cell::new(0usize));
        // Step 0, then each slot of each roll, then D's stop: marks evenly
        // spaced over the operations.
        let marks = 1 + rolls.len() * slots + 1;
        let mut mark = 0;
        let mut next_mark = || {
            mark += 1;
            self.config.ops * mark as u64 / (marks as u64 + 1)
        };
        self.wait_for_ops(next_mark()).await;
        // D is started empty (a new Redis: a new, incomplete epoch).
        self.net.lock().start(JOINING, false);
        self.retired.borrow_mut()[JOINING] = false;
        self.trace(|| "membership: D (r3) starts empty".to_owned());
        for (members, operator_pass) in rolls {
            // "Start the next step only when the previous one reached every
            // server": no server of the step before it still serves.
            self.wait_stopped(&draining).await;
            for slot in 0..slots {
                self.roll(slot, &members, &draining).await;
                self.wait_for_ops(next_mark()).await;
            }
            if operator_pass {
                self.wait_stopped(&draining).await;
                self.operator_pass(&members).await;
            }
        }
        self.wait_stopped(&draining).await;
        // D leaves: stopped, and no longer part of what is checked.
        self.retired.borrow_mut()[JOINING] = true;
        self.net.lock().stop(JOINING);
        self.trace(|| "membership: D (r3) stopped".to_owned());
    }

    /// Waits until every rolled-out server has stopped (at most
    /// [`STOPPED_BOUND`]).
    async fn wait_stopped(&self, draining: &Cell<usize>) {
        let started = tokio::time::Instant::now();
        while draining.get() > 0 && started.elapsed() < STOPPED_BOUND {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the workload issued `target` operations (always
    /// reached: every target is below the run's operation count).
    async fn wait_for_ops(&self, target: u64) {
        while self.driver().issued < target {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces slot `slot`'s app server with one on `members`: the new
    /// one serves at once, the old one finishes what it took, then stops.
    async fn roll(self: &Rc<Self>, slot: usize, members: &Members, draining: &Rc<Cell<usize>>) {
        let offset = self.app_offset(slot);
        let mut rng = {
            let mut driver = self.driver();
            rand_chacha::ChaCha8Rng::from_rng(&mut driver.rng)
        };
        let next = connect_app(
            &self.config,
            &self.net,
            self.clock,
            slot,
            members,
            &offset,
            &mut rng,
        )
        .await
        .expect("every step's configuration is valid");
        let old = std::mem::replace(&mut self.apps.borrow_mut()[slot].coordinator, next);
        self.trace(|| format!("membership: c{slot} rolled to {members:?}"));
        draining.set(draining.get() + 1);
        let draining = draining.clone();
        self.spawn(async move {
            tokio::time::sleep(DRAIN).await;
            old.shutdown(SHUTDOWN_DEADLINE).await;
            draining.set(draining.get() - 1);
        });
    }

    /// `qs-admin repair` once every server writes to D: passes by a
    /// coordinator on `members` without the write-only flag, until D shows
    /// complete (the operator checks `qs-admin status`), at most
    /// [`OPERATOR_TRIES`] times.
    async fn operator_pass(self: &Rc<Self>, members: &Members) {
        let members = Members {
            write_only: Vec::new(),
            ..members.clone()
        };
        let offset = self.app_offset(0);
        let mut rng = {
            let mut driver = self.driver();
            rand_chacha::ChaCha8Rng::from_rng(&mut driver.rng)
        };
        // It reaches the replicas over slot 0's links (the same network).
        let operator = connect_app(
            &self.config,
            &self.net,
            self.clock,
            0,
            &members,
            &offset,
            &mut rng,
        )
        .await
        .expect("the operator's configuration is valid");
        let mut complete = false;
        for _ in 0..OPERATOR_TRIES {
            let _ = operator.anti_entropy().await;
            complete = self.net.lock().is_complete(JOINING);
            if complete {
                break;
            }
            tokio::time::sleep(OPERATOR_RETRY).await;
        }
        self.trace(|| format!("membership: operator pass done, D complete: {complete}"));
        operator.shutdown(SHUTDOWN_DEADLINE).await;
    }
}
