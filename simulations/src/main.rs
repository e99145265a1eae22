//! `cargo run --release -p simulations -- <command>`: the deterministic chaos
//! simulator of quorum-sessions. `run` (the default), `sweep`, `pbs`,
//! `replay`; `--help` on each.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use quorum_sessions::config::ReadRepair;
use simulations::config::{lan_latency, FaultKind, SimConfig, DEFAULT_OPS, DEFAULT_SEED};
use simulations::latency::LatencyModel;
use simulations::trace::{TraceOptions, SUMMARY_LINES_MAX};
use simulations::{pbs, sim, sweep, Observer, Report};

// The simulator allocates and frees small records at a high rate; mimalloc
// does that several times faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic chaos simulator for quorum-sessions: N replicas, K
/// coordinators, faults drawn from one seed, a history checker.
#[derive(Parser, Debug)]
#[command(name = "simulations", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `run`, the default command.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One seeded run with all faults, then heal and quiesce; prints a report
    /// and exits non-zero if the checker found violations (the default).
    Run(RunArgs),
    /// A table over (N, W, R) presets: stale-read rate, availability under
    /// each fault kind, p99 latency; writes an SVG chart.
    Sweep(SweepArgs),
    /// t-visibility (PBS): probability that a read issued t ms after a write
    /// committed returns it, from a latency model.
    Pbs(PbsArgs),
    /// Reruns one seed and prints a readable trace: by default the faults
    /// and the operations around them (or the ones the checker flagged),
    /// at most 120 lines; `--all` for every event.
    Replay(ReplayArgs),
}

/// What the run does besides the workload and faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N replicas serve throughout (the default).
    Standard,
    /// docs/membership.md under the workload: a 4th replica (D) added to
    /// A B C, then removed, app servers rolled one at a time per step.
    Membership,
    /// As `membership`, wrongly: D listed without write-only in the add's
    /// first roll (the checker should catch it on some seeds).
    MembershipAddUnflagged,
    /// As `membership`, wrongly: D removed in one roll, without the
    /// write-only step.
    MembershipRemoveOneRoll,
}

impl Scenario {
    /// The membership procedure, if any.
    fn procedure(self) -> Option<sim::Procedure> {
        match self {
            Scenario::Standard => None,
            Scenario::Membership => Some(sim::Procedure::Documented),
            Scenario::MembershipAddUnflagged => Some(sim::Procedure::AddWithoutWriteOnly),
            Scenario::MembershipRemoveOneRoll => Some(sim::Procedure::RemoveInOneRoll),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RepairMode {
    Blocking,
    Background,
    Off,
}

/// The options that shape one simulated run.
#[derive(Args, Debug, Clone)]
struct SimArgs {
    /// N: replicas.
    #[arg(short = 'n', long, default_value_t = 3)]
    replicas: usize,
    /// W: acknowledgements a write needs.
    #[arg(short = 'w', long, default_value_t = 2)]
    write_quorum: usize,
    /// R: answers a read needs.
    #[arg(short = 'r', long, default_value_t = 2)]
    read_quorum: usize,
    /// The seed of the run's one RNG (faults, workload, latencies).
    #[arg(short = 's', long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Client operations in the fault phase.
    #[arg(short = 'k', long, default_value_t = DEFAULT_OPS)]
    ops: u64,
    /// App servers (coordinators).
    #[arg(long, default_value_t = 4)]
    coordinators: usize,
    /// Fault kinds, comma-separated: crash, restart-empty, partition, slow,
    /// loss, clock-skew; or `all`, or `none`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<String>,
    /// Read-repair mode.
    #[arg(long, value_enum, default_value_t = RepairMode::Blocking)]
    read_repair: RepairMode,
    /// Deletes remove the key instead of writing a tombstone (unsafe).
    #[arg(long)]
    no_tombstones: bool,
    /// No anti-entropy passes (unsafe).
    #[arg(long)]
    no_anti_entropy: bool,
    /// No hinted handoff (unsafe).
    #[arg(long)]
    no_hints: bool,
    /// Servers keep one complete epoch whatever happens to their data
    /// (unsafe).
    #[arg(long)]
    no_epochs: bool,
    /// Merge replies carry no held stamp (unsafe: writes may be
    /// acknowledged below earlier ones).
    #[arg(long)]
    no_held_stamps: bool,
    /// Let restart-empty faults overlap (may lose acknowledged writes).
    #[arg(long)]
    no_wipe_budget: bool,
    /// Mean virtual time between two fault starts, ms.
    #[arg(long, default_value_t = 2_500.0)]
    fault_interval_ms: f64,
    /// Most faults active at once.
    #[arg(long, default_value_t = 2)]
    faults_max: usize,
    /// Virtual arrival rate of client operations, per second.
    #[arg(long, default_value_t = 4_000.0)]
    ops_per_sec: f64,
    /// `membership`: replicas A B C plus D added and removed while app
    /// servers roll (N, W, R are the procedure's; see docs/membership.md);
    /// the two `membership-*` variants do it wrongly.
    #[arg(long, value_enum, default_value_t = Scenario::Standard)]
    scenario: Scenario,
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig> {
        let mut config = SimConfig {
            seed: self.seed,
            ops: self.ops,
            ..SimConfig::default()
        }
        .with_quorums(self.replicas, self.write_quorum, self.read_quorum);
        config.workload.coordinators = self.coordinators;
        config.faults.kinds = parse_faults(&self.faults)?;
        config.faults.wipe_budget = !self.no_wipe_budget;
        config.faults.mean_interval_ms = self.fault_interval_ms;
        config.faults.concurrent_max = self.faults_max;
        config.workload.ops_per_sec = self.ops_per_sec;
        config.cluster.read_repair = match self.read_repair {
            RepairMode::Blocking => ReadRepair::Blocking,
            RepairMode::Background => ReadRepair::Background,
            RepairMode::Off => ReadRepair::Off,
        };
        let switches = &mut config.switches;
        switches.tombstones = !self.no_tombstones;
        switches.anti_entropy = !self.no_anti_entropy;
        switches.hints = !self.no_hints;
        switches.epochs = !self.no_epochs;
        switches.held_stamps = !self.no_held_stamps;
        config.validate()?;
        Ok(config)
    }
}

fn parse_faults(names: &[String]) -> Result<Vec<FaultKind>> {
    let mut kinds = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match name {
            "all" => kinds.extend(FaultKind::ALL),
            "none" => {}
            other => kinds.push(FaultKind::parse(other)?),
        }
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Print exactly one JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// Client operations per run (each preset runs 7 times).
    #[arg(short = 'k', long, default_value_t = 20_000)]
    ops: u64,
    /// The seed of every run.
    #[arg(short = 's', long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "target/sweep.svg")]
    svg: PathBuf,
    /// Presets as N/W/R, comma-separated (default: 3/1/1, 3/2/1, 3/1/2,
    /// 3/2/2, 3/3/1, 5/3/3, 5/2/2, 5/1/1).
    #[arg(long, value_delimiter = ',')]
    presets: Vec<String>,
}

#[derive(Args, Debug)]
struct PbsArgs {
    /// Latency model (TOML, legs [write] [ack] [read] [response]); the
    /// built-in LAN model when absent. Examples in simulations/models/.
    #[arg(long)]
    model: Option<PathBuf>,
    /// N.
    #[arg(short = 'n', long, default_value_t = 3)]
    replicas: usize,
    /// R.
    #[arg(short = 'r', long, default_value_t = 1)]
    read_quorum: usize,
    /// W.
    #[arg(short = 'w', long, default_value_t = 1)]
    write_quorum: usize,
    /// Monte Carlo trials.
    #[arg(long, default_value_t = 100_000)]
    trials: u64,
    /// Times after the commit at which reads start, ms, comma-separated.
    #[arg(long = "t-ms", value_delimiter = ',', default_values_t = [0.0, 1.0, 5.0, 10.0])]
    t_ms: Vec<f64>,
    /// Seed.
    #[arg(short = 's', long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Print every event in order (each operation's invocation and answer;
    /// about 150 000 lines for the default run) instead of the summary.
    #[arg(long)]
    all: bool,
    /// Most trace lines printed [default: 120 for the summary, unbounded
    /// with --all].
    #[arg(long)]
    max_events: Option<usize>,
    /// Only events about this key (e.g. `s:{0000042}`), plus the cluster's
    /// (faults, restarts, heal); the summary then shows every answer on it.
    #[arg(long)]
    key: Option<String>,
    /// Skip the events before this virtual time, ms.
    #[arg(long, default_value_t = 0)]
    from_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Sweep(args)) => sweep_command(&args),
        Some(Command::Pbs(args)) => pbs_command(&args),
        Some(Command::Replay(args)) => replay(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn progress_bar(len: u64, unit: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    let template =
        format!("{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{eta}})");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    Some(bar)
}

fn run(args: &RunArgs) -> Result<ExitCode> {
    let config = args.sim.config()?;
    if args.sim.scenario == Scenario::Standard {
        eprintln!(
            "seed {} (N={} W={} R={}, {} ops)",
            config.seed,
            config.replicas,
            config.write_quorum(),
            config.read_quorum(),
            config.ops
        );
    } else {
        // The procedure sets N, W and R step by step.
        eprintln!(
            "seed {} (scenario {:?}: A B C, D added then removed; {} ops)",
            config.seed, args.sim.scenario, config.ops
        );
    }
    let bar = (config.ops >= 20_000)
        .then(|| progress_bar(config.ops, "ops"))
        .flatten();
    let mut observer = Observer::default();
    if let Some(bar) = &bar {
        let bar = bar.clone();
        observer.progress = Some(Box::new(move |done| bar.set_position(done)));
    }
    let started = Instant::now();
    let (mut report, _) = run_scenario(&config, args.sim.scenario, observer)?;
    report.sim_ops_per_sec = report.ops as f64 / started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&report.to_json())?);
    } else {
        print!("{}", report.render());
    }
    Ok(verdict(&report))
}

/// One run of `scenario`.
fn run_scenario(
    config: &SimConfig,
    scenario: Scenario,
    observer: Observer,
) -> Result<(Report, Option<simulations::trace::Trace>)> {
    match scenario.procedure() {
        None => sim::run_observed(config, observer),
        Some(procedure) => sim::membership_observed(config, procedure, observer),
    }
}

fn verdict(report: &Report) -> ExitCode {
    if report.is_clean() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "FAILED: seed {} found {} violation(s); replay it with `cargo run --release -p simulations -- replay --seed {}` (same flags)",
        report.seed,
        report.violations.total(),
        report.seed
    );
    ExitCode::FAILURE
}

fn parse_preset(text: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<&str> = text.trim().split('/').collect();
    let [n, w, r] = parts[..] else {
        anyhow::bail!("preset {text:?} is not N/W/R");
    };
    let number = |s: &str| {
        s.parse::<usize>()
            .with_context(|| format!("preset {text:?}"))
    };
    Ok((number(n)?, number(w)?, number(r)?))
}

fn sweep_command(args: &SweepArgs) -> Result<ExitCode> {
    let presets: Vec<(usize, usize, usize)> = if args.presets.is_empty() {
        sweep::DEFAULT_PRESETS.to_vec()
    } else {
        args.presets
            .iter()
            .map(|p| parse_preset(p))
            .collect::<Result<_>>()?
    };
    let base = sweep::base_config(args.seed, args.ops);
    eprintln!(
        "seed {} ({} presets, {} ops per run)",
        args.seed,
        presets.len(),
        args.ops
    );
    let runs = presets.len() * (1 + FaultKind::ALL.len());
    let bar = progress_bar(runs as u64, "runs");
    let rows = sweep::run_sweep(&base, &presets, |done, _| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print!("{}", sweep::render(&rows, args.ops, args.seed));
    if let Some(parent) = args.svg.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.svg, sweep::svg(&rows))
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("\nchart written to {}", args.svg.display());
    Ok(ExitCode::SUCCESS)
}

fn pbs_command(args: &PbsArgs) -> Result<ExitCode> {
    let model = match &args.model {
        Some(path) => LatencyModel::from_file(path)?,
        None => lan_latency(),
    };
    let curve = pbs::t_visibility(
        &model,
        args.replicas,
        args.read_quorum,
        args.write_quorum,
        args.trials,
        &args.t_ms,
        args.seed,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&curve)?);
    } else {
        eprintln!("seed {}", args.seed);
        print!("{}", curve.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    let config = args.sim.config()?;
    eprintln!("seed {}", config.seed);
    let max_events = args.max_events.unwrap_or(if args.all {
        usize::MAX
    } else {
        SUMMARY_LINES_MAX
    });
    let observer = Observer {
        trace: Some(TraceOptions {
            all: args.all,
            max_events,
            key: args.key.clone(),
            from_ms: args.from_ms,
        }),
        progress: None,
    };
    let started = Instant::now();
    let (mut report, trace) = run_scenario(&config, args.sim.scenario, observer)?;
    report.sim_ops_per_sec = report.ops as f64 / started.elapsed().as_secs_f64();
    let trace = trace.expect("a trace was asked for");
    if !args.all {
        let what = if args.key.is_some() {
            "every answer on the key"
        } else if trace.has_violations() {
            "the operations the checker flagged (!!) and the ones before them on the same session"
        } else {
            "around each, the operations on the session that fared worst (failed, slow)"
        };
        println!("replay of seed {}: the faults (**) and {what}", config.seed);
        println!(
            "(records: {{field=value@stamp}} exp=expiry from the reader's clock; stamp = last 5 hex digits of its ms[.logical]/writer)"
        );
    }
    let lines = trace.lines();
    for line in &lines {
        println!("{line}");
    }
    let omitted = trace.omitted();
    if omitted > 0 {
        if args.all {
            println!(
                "... {omitted} more events left out (raise --max-events, or use --key / --from-ms)"
            );
        } else {
            println!(
                "... {omitted} events left out: --all prints every event (with --key K, one session's; --from-ms T, from T on)"
            );
        }
    }
    println!();
    print!("{}", report.render());
    Ok(verdict(&report))
}
