#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use simulations::{run, SimConfig};
fn main() -> anyhow::Result<()> {
    let mut config = SimConfig::default();
    if let Some(ops) = std::env::args().nth(1) {
        config.ops = ops.parse()?;
    }
    let start = std::time::Instant::now();
    let mut report = run(&config)?;
    report.sim_ops_per_sec = report.ops as f64 / start.elapsed().as_secs_f64();
    print!("{}", report.render());
    unsafe {
        eprintln!(
            "pops {} avg heap {}",
            simulations::queue::POPS,
            simulations::queue::LEN_SUM / simulations::queue::POPS
        );
    }

    Ok(())
}
