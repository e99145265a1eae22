use simulations::config::SimConfig;
use simulations::{membership, Procedure};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops: u64 = args[1].parse().unwrap();
    let rate: f64 = args[2].parse().unwrap();
    let interval: f64 = args[3].parse().unwrap();
    for seed in 1..=args[4].parse::<u64>().unwrap() {
        for (name, p) in Procedure::ALL {
            let mut c = SimConfig { seed, ops, ..SimConfig::default() };
            c.workload.ops_per_sec = rate;
            c.faults.mean_interval_ms = interval;
            let t = std::time::Instant::now();
            let r = membership(&c, p).unwrap();
            println!("seed {seed} {name}: {} violations {:?} ({:.1}s)", r.violations.total(), r.violations, t.elapsed().as_secs_f64());
        }
    }
}
