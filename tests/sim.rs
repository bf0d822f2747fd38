//! The seeded cluster simulation: thousands of clusters through crashes,
//! partitions, loss, duplication and reordering, with Raft's safety
//! properties checked after every step and every client history checked for
//! linearizability.
//!
//! - `RAFTKIT_SIM_SEEDS=N` runs N seeds per sweep test instead of the CI
//!   default.
//! - `RAFTKIT_SIM_SEED=S RAFTKIT_SIM_TRACE=1 cargo test --test sim replay --
//!   --nocapture` replays one seed with a full event trace; a failing seed
//!   prints exactly this command.

use raftkit::sim::{self, SimOptions};

/// Seeds per sweep test in CI; four sweep tests run, so CI covers 4x this.
const CI_SEEDS_PER_SWEEP: u64 = 500;

fn seeds_per_sweep() -> u64 {
    match std::env::var("RAFTKIT_SIM_SEEDS") {
        Ok(v) => v
            .parse::<u64>()
            .map(|n| n.div_ceil(4))
            .unwrap_or_else(|_| panic!("RAFTKIT_SIM_SEEDS must be a number, got {v:?}")),
        Err(_) => CI_SEEDS_PER_SWEEP,
    }
}

fn sweep(part: u64) {
    let per = seeds_per_sweep();
    let first = 1 + part * per;
    match sim::sweep(first, per, |_| {}) {
        Ok(reports) => {
            let ops: usize = reports.iter().map(|r| r.ops).sum();
            let done: usize = reports.iter().map(|r| r.completed).sum();
            let snaps: usize = reports.iter().map(|r| r.snapshots_installed).sum();
            let crashes: usize = reports.iter().map(|r| r.crashes).sum();
            println!(
                "seeds {first}..{}: {} runs ok, {ops} client ops ({done} completed), {crashes} crashes, {snaps} snapshots installed",
                first + per,
                reports.len()
            );
            assert_eq!(reports.len() as u64, per);
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn sweep_seeds_part_0() {
    sweep(0);
}

#[test]
fn sweep_seeds_part_1() {
    sweep(1);
}

#[test]
fn sweep_seeds_part_2() {
    sweep(2);
}

#[test]
fn sweep_seeds_part_3() {
    sweep(3);
}

/// Replays `RAFTKIT_SIM_SEED` (seed 1 when unset) and prints the trace when
/// `RAFTKIT_SIM_TRACE` is set.
#[test]
fn replay() {
    let seed = std::env::var("RAFTKIT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut opts = SimOptions::for_seed(seed);
    opts.trace = std::env::var_os("RAFTKIT_SIM_TRACE").is_some();
    println!("replaying seed {seed} with {opts:?}");
    match sim::run(seed, opts) {
        Ok(report) => println!("{report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}
