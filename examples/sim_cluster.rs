//! Runs simulated clusters of the example key-value store through crashes,
//! partitions, message loss and late delivery, disk faults, pauses and
//! leadership transfers, and prints what happened: elections, snapshots,
//! client operations, and the verdicts of the safety oracle and the
//! linearizability checker.
//!
//! ```text
//! cargo run --release --example sim_cluster               # 20 seeds
//! cargo run --release --example sim_cluster -- 200        # 200 seeds
//! cargo run --release --example sim_cluster -- --seed 7   # one seed, traced
//! ```

use std::process::ExitCode;
use std::time::Instant;

use raftkit::sim::{self, SimOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (seeds, trace): (Vec<u64>, bool) = match args.as_slice() {
        [] => ((1..=20).collect(), false),
        [flag, seed] if flag == "--seed" => match seed.parse() {
            Ok(s) => (vec![s], true),
            Err(_) => {
                eprintln!("error: --seed takes a number, got {seed:?}");
                return ExitCode::from(2);
            }
        },
        [count] => match count.parse::<u64>() {
            Ok(n) => ((1..=n).collect(), false),
            Err(_) => {
                eprintln!("usage: sim_cluster [COUNT | --seed SEED]");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: sim_cluster [COUNT | --seed SEED]");
            return ExitCode::from(2);
        }
    };
    println!(
        "{:>6} {:>5} {:>9} {:>9} {:>7} {:>8} {:>9} {:>5} {:>9} {:>7}  verdict",
        "seed",
        "nodes",
        "ops",
        "completed",
        "leaders",
        "crashes",
        "snapshots",
        "xfers",
        "late/term",
        "commit"
    );
    let started = Instant::now();
    let mut failed = 0;
    for &seed in &seeds {
        let mut opts = SimOptions::for_seed(seed);
        opts.trace = trace;
        let nodes = opts.nodes;
        match sim::run(seed, opts) {
            Ok(r) => println!(
                "{:>6} {:>5} {:>9} {:>9} {:>7} {:>8} {:>9} {:>5} {:>9} {:>7}  safe, linearizable",
                seed,
                nodes,
                r.ops,
                r.completed,
                r.leaders,
                r.crashes,
                r.snapshots_installed + r.snapshots_taken,
                r.transfers,
                r.late_across_terms,
                r.commit
            ),
            Err(f) => {
                failed += 1;
                println!("{seed:>6} {nodes:>5}  FAILED: {f}");
            }
        }
    }
    println!(
        "\n{} clusters simulated in {:.1}s: {} passed, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        seeds.len() - failed,
        failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
