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
            let mid_compaction: usize = reports.iter().map(|r| r.crashes_mid_compaction).sum();
            let mid_install: usize = reports.iter().map(|r| r.crashes_mid_install).sum();
            println!(
                "seeds {first}..{}: {} runs ok, {ops} client ops ({done} completed), {crashes} crashes \
                 ({mid_compaction} while writing a snapshot and compacting, {mid_install} while installing one), \
                 {snaps} snapshots installed",
                first + per,
                reports.len()
            );
            assert!(
                crashes > 0 && snaps > 0,
                "the sweep must exercise crashes and snapshot installs"
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

/// One seed always yields the same run.
#[test]
fn a_seed_replays_identically() {
    for seed in [3, 17, 4242] {
        let a = sim::run(seed, SimOptions::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(seed, SimOptions::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged");
        assert_eq!(a.events, b.events);
        assert!(a.completed > 0, "seed {seed} completed no operation");
    }
    let a = sim::run(3, SimOptions::for_seed(3)).unwrap_or_else(|f| panic!("{f}"));
    let b = sim::run(4, SimOptions::for_seed(3)).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "different seeds gave the same trace"
    );
}

// ----- teeth: a deliberately broken rule is caught within the CI budget ----

/// Runs seeds with `bugs` switched on until one fails; returns the failure.
fn find_violation(bugs: raftkit::core::config::Bugs, budget: u64) -> sim::SimFailure {
    for seed in 1..=budget {
        let mut opts = SimOptions::for_seed(seed);
        opts.bugs = bugs;
        if let Err(failure) = sim::run(seed, opts) {
            println!("caught after {seed} seeds: {failure}");
            return *Box::new(failure);
        }
    }
    panic!("{bugs:?} survived {budget} seeds: the simulation has no teeth for it");
}

#[test]
fn teeth_acknowledging_before_persisting_is_caught() {
    let bugs = raftkit::core::config::Bugs {
        ack_before_persist: true,
        ..Default::default()
    };
    let failure = find_violation(bugs, 2000);
    assert!(
        !matches!(failure.kind, sim::FailureKind::Liveness(_)),
        "expected a safety or linearizability failure, got {failure}"
    );
}

#[test]
fn teeth_reads_without_a_heartbeat_round_are_caught() {
    let bugs = raftkit::core::config::Bugs {
        read_without_heartbeat: true,
        ..Default::default()
    };
    let failure = find_violation(bugs, 2000);
    assert!(
        matches!(failure.kind, sim::FailureKind::Linearizability(_)),
        "expected a stale read, got {failure}"
    );
}

#[test]
fn teeth_committing_earlier_term_entries_by_counting_is_caught() {
    let bugs = raftkit::core::config::Bugs {
        commit_old_terms: true,
        ..Default::default()
    };
    let failure = find_violation(bugs, 2000);
    assert!(
        !matches!(failure.kind, sim::FailureKind::Liveness(_)),
        "expected a safety or linearizability failure, got {failure}"
    );
}
