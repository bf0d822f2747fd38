//! The whole-runtime simulation: real [`Peer`](crate::runtime::Peer)s of
//! the user's own state machine under one seeded, deterministic scheduler,
//! with faults, judged with the user's state machine as the specification.
//!
//! A complete example, with a state machine that is not a key-value
//! store:
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use raftkit::prelude::*;
//! use raftkit::sim::Simulation;
//! use raftkit::sim::rand::Rng;
//!
//! #[derive(StateMachine, Default, Serialize, Deserialize)]
//! #[raftkit(name = "bank")]
//! pub struct Bank {
//!     balances: BTreeMap<u8, i64>,
//! }
//!
//! #[raftkit::state_machine]
//! impl Bank {
//!     /// Moves `amount` between two accounts; the new balance of `to`.
//!     #[write]
//!     fn transfer(&mut self, from: u8, to: u8, amount: i64) -> i64 {
//!         *self.balances.entry(from).or_default() -= amount;
//!         let to = self.balances.entry(to).or_default();
//!         *to += amount;
//!         *to
//!     }
//!
//!     #[read]
//!     fn balance(&self, account: u8) -> i64 {
//!         self.balances.get(&account).copied().unwrap_or(0)
//!     }
//! }
//!
//! // Five real peers, eight clients of the generated `BankClient`, faults
//! // of every kind; panics with the failing seed, the violated property
//! // and the command that replays it with a trace.
//! let summary = Simulation::<Bank>::new()
//!     .nodes(5)
//!     .clients(8)
//!     .workload(|mut rng, client| async move {
//!         let bank = BankClient::new(client);
//!         let (from, to) = (rng.random_range(0..4u8), rng.random_range(0..4u8));
//!         if rng.random_bool(0.7) {
//!             let _ = bank.transfer(from, to, rng.random_range(1..100)).await;
//!         } else {
//!             let _ = bank.balance(from).await;
//!         }
//!     })
//!     .seeds(0..4)
//!     .run();
//! assert!(!summary.seeds.is_empty());
//! ```
//!
//! # What runs
//!
//! Everything between the core and the user, on the production code path:
//! the node task, group commit and the write-ahead log, the snapshot saver,
//! the apply task with `apply_encoded`, error policies, exactly-once
//! sessions (opened, numbered, retried, expired by the leader's stamped
//! clock), snapshots of the user's state, their transfer and restoration,
//! restarts from disk. The user's generated typed client runs unchanged on
//! [`SimClient`], which does the network client's leader routing and
//! session retries in-process (the QUIC transport does not run: see
//! `client.rs`).
//!
//! # Mechanism, and why
//!
//! A current-thread tokio runtime with a paused clock per seed
//! (`exec.rs`), rather than madsim or turmoil: the runtime already is
//! tokio, so the peers run unmodified and production keeps its real threads
//! and clock, with no second runtime to build against and no patched
//! crates. What would make a run non-deterministic is injected, through
//! hooks that exist in production too:
//!
//! - **threads**: the storage, snapshot and apply workers are `async`
//!   loops started in one place (`runtime/threads.rs`); production runs
//!   each on an operating-system thread, the simulation spawns them as
//!   tasks of its runtime;
//! - **time**: `tokio::time` is virtual under the paused clock; the wall
//!   clock that stamps entries (session expiry) is injected per node, and
//!   the nemesis makes the leader's jump;
//! - **randomness**: election jitter (the core's seed) and session ids are
//!   injected seeded; the node task's `select!` is `biased` (a fixed,
//!   starvation-free order instead of tokio's random one); the network's
//!   drops, duplicates and delays, the disk's faults and tears, the
//!   nemesis and the workload draw from RNGs seeded from the seed;
//! - **transport**: the in-process [`MemoryNetwork`](crate::transport::memory::MemoryNetwork);
//! - **disk**: [`SimDisk`], a [`Vfs`](crate::storage::vfs::Vfs) that keeps
//!   synced and unsynced data apart.
//!
//! A test runs each seed twice and compares the trace hashes.
//!
//! # Several groups per node
//!
//! [`Simulation::groups`] runs `k` groups of `S` the way a
//! [`MultiNode`](crate::multi::MultiNode) hosts them: each node's replicas
//! of every group write through the node's one
//! [`Journal`](crate::multi::Journal) on its simulated disk (its commit
//! loop a task of the simulation, through the same `Threads` hook), each
//! group keeps its own snapshot directory, and a node's crash, restart,
//! pause or partition hits all its groups at once. Each group has a network
//! of its own (the multi-group QUIC links do not run here; the nemesis'
//! network faults hit every group's network alike), its own history and
//! its own probe, and is judged on its own. [`Simulation::replicas`]
//! leaves spare nodes, which replica moves (`moves.rs`) bring groups to:
//! learner, catch-up, joint change, removal, with crashes and partitions
//! across every step; leadership transfers to random targets run in every
//! mode.
//!
//! # Properties checked per seed
//!
//! - **replicas agree** (`probe.rs`): replicas that applied the same write
//!   position applied the same command, with the same output, into the same
//!   state; a non-deterministic handler is reported as diverging replicas;
//! - **restart**: every crashed node restarts from its simulated disk;
//! - **exactly-once** (`history.rs`): no write applied more often than it
//!   was acknowledged or left unknown; no acknowledged write lost;
//! - **linearizability** (`history.rs`): the history of typed calls, with
//!   the user's state machine as the sequential specification, per group
//!   (the whole group's history, which implies every key's); reads at
//!   `Consistency::Lease` are in it and must be linearizable too (the
//!   simulated clocks share one virtual time, so they respect any drift
//!   bound);
//! - **stale reads** (`history::stale_reads`): a `Consistency::Stale`
//!   read came with its `Staleness`, reports `applied <= leader_commit`,
//!   and answered exactly what the state after the log's writes up to its
//!   reported `applied` index answers (a committed prefix, the one it
//!   claims); how far behind it may be is not bounded (its contract);
//! - **session expiry** (`client.rs`): no session expires before its
//!   time-to-live of virtual time without use, less the leaders' stamp
//!   slack. About a third of the seeds run the peers with a time-to-live of
//!   a few seconds and let clients stay away longer than it, so sessions do
//!   expire (a write then fails with `SessionExpired`, its outcome unknown,
//!   or is retried under a new session when no attempt can have applied);
//!   the nemesis' leader clock jumps (up to two hours) must not expire any.
//!
//! # Switches
//!
//! `RAFTKIT_SIM_SEED=<n>` replays one seed, `RAFTKIT_SIM_TRACE=1` prints
//! its trace (`=2`: with the messages' bodies), `RAFTKIT_SIM_RUNTIME_SEEDS=<n>` runs more seeds,
//! `RAFTKIT_SIM_RUNTIME_BUG=<name>` arms a runtime tooth ([`Tooth`]).

mod client;
pub mod disk;
mod exec;
pub mod history;
mod kit;
mod moves;
mod probe;
pub mod teeth;

pub use client::SimClient;
pub use disk::{DiskFaults, SimDisk};
pub use history::StaleRead;
pub use kit::{
    Faults, MembershipCounts, SeedReport, SessionCounts, SimFailure, Simulation, Summary,
};
pub use probe::Probe;
pub use rand;
pub use teeth::Tooth;
