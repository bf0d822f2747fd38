//! raftkit: typed, replicated state machines on Raft.
//!
//! The crate is organised in layers (see `DESIGN.md` in the repository):
//!
//! - [`core`]: the Raft protocol as a pure, deterministic state machine. No
//!   IO, no clocks, no threads: time arrives as ticks and every output is
//!   collected in a [`core::Ready`] value.
//! - [`state_machine`](mod@state_machine): the trait a user's state machine implements (usually
//!   through `#[derive(StateMachine)]`), and the byte-level dispatch.
//! - [`client`]: what generated typed clients are built on.
//! - [`storage`]: the durable log (an embedded write-ahead log), the hard
//!   state and snapshots, behind the pluggable [`storage::LogStore`] trait.
//! - `sim` (feature `sim`): a seeded, deterministic cluster simulation and a
//!   linearizability checker.
#![doc = include_str!("macros.md")]
#![warn(missing_docs)]

pub mod client;
pub mod core;
pub mod error;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state_machine;
pub mod storage;

pub use error::Error;
pub use state_machine::{ErrorPolicy, StateMachine};

// The macros. `StateMachine` (derive) shares its name with the trait and
// `state_machine` (attribute) with the module, like serde's derives: macros
// live in their own namespace, so each path names both.
pub use raftkit_derive::{StateMachine, read, state_machine, write};

/// Everything a state machine definition needs:
/// `use raftkit::prelude::*;`.
pub mod prelude {
    pub use crate::error::Error;
    pub use crate::state_machine::{ErrorPolicy, StateMachine};
    pub use raftkit_derive::{StateMachine, read, state_machine, write};
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
