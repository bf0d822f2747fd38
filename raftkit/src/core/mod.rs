//! The Raft protocol as a pure, deterministic state machine.
//!
//! Nothing in this module performs IO, reads a clock, spawns a thread or
//! draws unseeded randomness (a test enforces the imports): time arrives as
//! [`Raft::tick`] calls, messages as [`Raft::step`] calls, and everything the
//! node wants done comes out of [`Raft::ready`] as one [`Ready`] value, in
//! the spirit of etcd's RawNode. The same inputs always give the same
//! outputs, which is what lets the simulation (`raftkit::sim`) drive
//! thousands of seeded clusters through crashes and partitions.
//!
//! One concept per file:
//!
//! | file | concept |
//! |---|---|
//! | `types` | ids, entries, hard state, configurations |
//! | `message` | what peers send each other |
//! | `config` | a node's parameters |
//! | `log` | the in-memory log and its cursors |
//! | `progress` | a leader's view of each follower; the inflight window |
//! | `quorum` | majorities of simple and joint configurations |
//! | `raft` | roles, terms, input dispatch |
//! | `inbound` | what is accepted from the network; drop counters; invariants check |
//! | `election` | PreVote, votes, CheckQuorum |
//! | `replication` | AppendEntries, heartbeats, commitment |
//! | `read_index` | linearizable reads, on the leader and followers |
//! | `lease` | lease reads on the leader; the clock assumption |
//! | `transfer` | leadership transfer |
//! | `membership` | joint-consensus configuration changes |
//! | `snapshot` | compaction and InstallSnapshot |
//! | `ready` | the outputs |

pub mod config;
mod election;
pub mod inbound;
mod lease;
pub mod log;
pub(crate) mod member_bound;
mod membership;
pub mod message;
pub mod progress;
pub mod quorum;
mod raft;
pub mod read_index;
pub mod ready;
mod replication;
mod snapshot;
mod transfer;
pub mod types;

#[cfg(test)]
mod tests;

/// The shared byte buffer of [`Payload::Command`] (re-exported from the
/// `bytes` crate).
pub use bytes::Bytes;
pub use config::{Config, ConfigError, MAX_ELECTION_TICKS};
pub use inbound::{DropCounts, DropReason, MAX_ADDR_LEN, MAX_MEMBERS, MAX_TERM_JUMP};
pub use message::{Body, MAX_ENTRIES_PER_APPEND, Message};
pub use raft::{NotLeader, ProposeError, Raft, Restored, Role, Status};
pub use ready::{InstalledSnapshot, PersistMarker, ReadState, Ready};
pub use snapshot::{CompactError, Released, SnapshotSend};
pub use transfer::TransferError;
pub use types::{
    Configuration, Entry, HardState, Index, NO_NODE, NodeId, Payload, SnapshotMeta, Term,
};
