//! A seeded, deterministic simulation of raftkit clusters, and the
//! linearizability checker that judges their client histories.
//!
//! [`run`] builds a cluster of [`Raft`](crate::core::Raft) cores for one
//! seed, drives it through a fault phase and a calm phase, checks Raft's
//! safety properties after every step ([`oracle`]), and finally checks the
//! client history for linearizability ([`linearizability`]). A failing seed
//! reports the one-line command that replays it with a full trace.
//!
//! What the fault phase throws at the cluster ([`SimOptions::for_seed`]
//! mixes them per seed):
//!
//! - **network** ([`network`]): loss, duplication and reordering in every
//!   kind of fault period; partitions of every shape (split, isolated node,
//!   one-way, ring, bridge) that drop what they cut or hold it as a backlog
//!   released at the heal; late delivery, a fraction of messages (or most
//!   of a slow node's) held back from a fraction of an election timeout to
//!   many, so that replies, votes, `TimeoutNow` and snapshot chunks arrive
//!   in later terms;
//! - **processes**: crashes at random, aimed at the window between a queued
//!   reply or vote and its fsync, and at nodes halfway through receiving a
//!   snapshot; long pauses (one node, or two stalling together) after which
//!   the missed ticks fire in a burst; a tick rate of its own per node;
//! - **disk** ([`disk`]): torn multi-part writes, writes of the log and of
//!   local snapshots completing in either order, fsync stalls, and IO
//!   errors that stop the node;
//! - **protocol**: leader churn, Raft Figure 8 both at random and step by
//!   step, split elections with slow voters, leadership transfers to any
//!   target (lagging, unreachable, learner, removed), their votes named
//!   for the leader that ordered them (`Body::TransferVote`) or, in a
//!   quarter of the seeds, in the earlier form to even-numbered nodes (a
//!   mixed-version cluster), membership changes
//!   with partitions across them, PreVote and CheckQuorum each off in a
//!   quarter of the seeds, snapshots of up to a dozen chunks replaced by
//!   newer ones mid-transfer, 4 to 8 clients on 3 to 10 keys.
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
#[cfg(test)]
mod oracle_tests;
pub mod runtime;
mod world;

pub use options::{FailureKind, SimFailure, SimOptions, SimReport};
pub use world::World;

pub use runtime::{SimClient, Simulation, Tooth, rand};

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
