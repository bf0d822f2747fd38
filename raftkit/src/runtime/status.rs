//! What a running peer reports about itself, through [`Peer::status`] and
//! the watch channel of [`Peer::watch`] (the metrics feed).
//!
//! [`Peer::status`]: super::Peer::status
//! [`Peer::watch`]: super::Peer::watch

use crate::core::{Index, NodeId, Role, Term};

/// A running peer's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// The node id.
    pub id: NodeId,
    /// The peer's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it follows (itself when leader).
    pub leader: Option<NodeId>,
    /// The leader's address, when known.
    pub leader_addr: Option<String>,
    /// Its commit index.
    pub commit: Index,
    /// The last index its state machine applied.
    pub applied: Index,
    /// Its last log index.
    pub last_index: Index,
    /// Every member of the configuration in force; replication progress is
    /// known on the leader only.
    pub members: Vec<MemberStatus>,
    /// The index the configuration in force was appended at.
    pub config_index: Index,
    /// Whether the configuration in force is joint (a change is under way).
    pub joint: bool,
    /// Set when a handler panicked under the `halt` policy: this node stopped
    /// applying (its log is intact).
    pub halted: Option<String>,
    /// Set when storage failed: the node stopped.
    pub fatal: Option<String>,
    /// Proposals accepted while leader.
    pub proposals: u64,
    /// Leader changes observed.
    pub leader_changes: u64,
    /// Client sessions in this peer's replicated session table (as of its
    /// applied index).
    pub sessions: usize,
    /// When this peer last received a message from the leader it follows
    /// (`None` on the leader itself and while no leader is known).
    pub leader_contact: Option<std::time::Instant>,
}

/// One member of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub id: NodeId,
    /// Its address.
    pub addr: Option<String>,
    /// Whether it votes.
    pub voter: bool,
    /// On the leader: the highest index known to match.
    pub matched: Option<Index>,
    /// On the leader: the next index to send.
    pub next: Option<Index>,
}
