//! A seeded, deterministic simulation of raftkit clusters, and the
//! linearizability checker that judges their client histories.
//!
//! [`run`] builds a cluster of [`Raft`](crate::core::Raft) cores for one
//! seed, drives it through a fault phase (partitions of every shape, message
//! loss, duplication and reordering, crashes that lose unsynced writes) and a
//! calm phase, checks Raft's safety properties after every step
//! ([`oracle`]), and finally checks the client history for linearizability
//! ([`linearizability`]). A failing seed reports the one-line command that
//! replays it with a full trace.
//!
//! The same seed always produces the same run (the trace hash in the
//! [`SimReport`] is equal across runs), because every random choice comes
//! from one seeded RNG and every collection the scheduler iterates is
//! ordered.

pub mod disk;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod options;
pub mod oracle;
mod world;

pub use options::{FailureKind, SimFailure, SimOptions, SimReport};
pub use world::World;

/// Runs one seed with the given options.
pub fn run(seed: u64, opts: SimOptions) -> Result<SimReport, SimFailure> {
    World::new(seed, opts).run()
}

/// Runs `count` seeds from `first`, each with [`SimOptions::for_seed`]
/// adjusted by `adjust`; returns the reports or the first failure.
pub fn sweep(
    first: u64,
    count: u64,
    adjust: impl Fn(&mut SimOptions),
) -> Result<Vec<SimReport>, Box<SimFailure>> {
    (first..first + count)
        .map(|seed| {
            let mut opts = SimOptions::for_seed(seed);
            adjust(&mut opts);
            run(seed, opts).map_err(Box::new)
        })
        .collect()
}
