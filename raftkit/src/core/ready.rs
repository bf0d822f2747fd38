//! The outputs of the core, collected in one value (the Ready/Advance
//! pattern of etcd's RawNode).
//!
//! The runtime takes a [`Ready`] whenever [`Raft::has_ready`] says there is
//! one, and must handle it in this order:
//!
//! 1. Send [`Ready::messages`] at once: they do not depend on anything
//!    being durable.
//! 2. Persist [`Ready::snapshot`] (if any), then [`Ready::entries`]
//!    (truncating any existing suffix from the first entry's index) and
//!    [`Ready::hard_state`], and make them durable. Readies are persisted in
//!    the order they were taken.
//! 3. Only then send [`Ready::persisted_messages`] and call
//!    [`Raft::on_persisted`] with [`Ready::persist_marker`].
//! 4. Apply [`Ready::committed_entries`] in order (they are already durable
//!    locally) and serve [`Ready::reads`] once the state machine has applied
//!    up to each read's index.
//!
//! [`Raft::has_ready`]: super::Raft::has_ready
//! [`Raft::on_persisted`]: super::Raft::on_persisted

use std::sync::Arc;

use super::message::Message;
use super::types::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};

/// Everything the core asks of the runtime after some inputs.
#[derive(Debug, Default)]
pub struct Ready {
    /// Hard state to persist, when it changed.
    pub hard_state: Option<HardState>,
    /// Entries to append durably, replacing any suffix from the first one.
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader, to persist and restore the state
    /// machine from before applying anything after it.
    pub snapshot: Option<InstalledSnapshot>,
    /// Messages that may leave now.
    pub messages: Vec<Message>,
    /// Messages that may leave only after this Ready's writes are durable
    /// (votes, acknowledgements, anything carrying a term or vote not yet
    /// durable).
    pub persisted_messages: Vec<Message>,
    /// Committed, locally durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Results of ReadIndex requests.
    pub reads: Vec<ReadState>,
    /// Hand this back to [`Raft::on_persisted`](super::Raft::on_persisted)
    /// once this Ready's writes are durable.
    pub persist_marker: PersistMarker,
}

impl Ready {
    /// Whether this Ready has anything to write to storage.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty() || self.snapshot.is_some()
    }
}

/// A snapshot the leader sent, fully received, to be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledSnapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine's serialized state: the very buffer the core
    /// keeps as its local snapshot (to send on, should this node lead), so
    /// a snapshot of gigabytes is held once, not copied.
    pub data: Arc<Vec<u8>>,
}

/// Identifies what a Ready asked to persist, for
/// [`Raft::on_persisted`](super::Raft::on_persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistMarker {
    /// The last log entry written, with its term (`None` if no entries).
    pub last_entry: Option<(Index, Term)>,
    /// The term and vote written (`None` if the hard state did not change).
    pub term_vote: Option<(Term, NodeId)>,
    /// The snapshot written, if any.
    pub snapshot: Option<(Index, Term)>,
}

/// The outcome of a ReadIndex request (Raft thesis §6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context, as given to
    /// [`Raft::read_index`](super::Raft::read_index).
    pub ctx: u64,
    /// The read index, or why the read cannot be served here.
    pub result: Result<Index, super::NotLeader>,
}
