use simulations::config::SimConfig;
use simulations::{membership, Procedure};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops: u64 = args[1].parse().unwrap();
    let rate: f64 = args[2].parse().unwrap();
    let interval: f64 = args[3].parse().unwrap();
    let seed: u64 = args[4].parse().unwrap();
    let p = Procedure::ALL[args[5].parse::<usize>().unwrap()].1;
    let mut c = SimConfig { seed, ops, ..SimConfig::default() };
    c.workload.ops_per_sec = rate;
    c.faults.mean_interval_ms = interval;
    let r = membership(&c, p).unwrap();
    print!("{}", r.render());
}
