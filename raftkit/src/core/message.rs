//! The messages Raft peers exchange (Raft Figure 2, thesis §6.4, §6.4.1,
//! §3.10).
//!
//! Every message carries the sender's term in one place, [`Message::term`],
//! so that the rule "a node adopts a higher term from any message" (Raft
//! §5.1) is applied once, before a message's body is looked at.

use serde::{Deserialize, Serialize};

use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// The most entries one [`Body::AppendEntries`] carries: 2^16.
///
/// A leader's batch (Raft thesis §10.2.1) stops here even when
/// `Config::max_batch_bytes` would admit more, and receivers refuse a
/// message claiming more: the transport before it decodes a single entry
/// (`FrameError::TooManyEntries`, the link is closed), the core when a
/// message reaches it by another way (`DropReason::TooManyEntries`).
///
/// Why a count and not only bytes: a no-op entry is 3 bytes on the wire
/// and about 120 in memory, so a 16 MiB frame of them decoded into
/// millions of entries, hundreds of MB, from any holder of a node
/// certificate. At the cap a frame decodes into at most 2^16 entries,
/// about 8 MB, whatever its bytes. The cap does not bind real batches:
/// the runtime limits a batch to 1 MiB (`max_batch_bytes`, at most a
/// quarter of the frame cap), and an entry counts at least 24 bytes
/// (`Entry::approx_size`), so a batch holds at most 43,690 entries; a
/// peer of an earlier version therefore never sends more than the cap
/// either.
pub const MAX_ENTRIES_PER_APPEND: usize = 1 << 16;

/// A message between two peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term, or for a pre-vote request the term the sender would
    /// campaign in.
    pub term: Term,
    /// What the message says.
    pub body: Body,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// RequestVote (Raft §5.2) or, with `pre_vote`, the PreVote probe
    /// (thesis §9.6) that asks whether a vote *would* be granted.
    RequestVote {
        /// Index of the candidate's last log entry.
        last_index: Index,
        /// Term of the candidate's last log entry.
        last_term: Term,
        /// A PreVote probe: receivers neither adopt the term nor record a vote.
        pre_vote: bool,
        /// Sent because of a leadership transfer: receivers grant it even
        /// while they believe a leader is alive (thesis §3.10), one term
        /// above theirs. The earlier form of a transfer vote, which names
        /// no leader: this binary sends [`Body::TransferVote`] instead (the
        /// transport turns it into this form for a peer of an earlier
        /// binary), and takes this form from such peers with the earlier
        /// rule (module docs of `transfer`, "Mixed versions").
        transfer: bool,
    },
    /// The answer to a [`Body::RequestVote`].
    RequestVoteResponse {
        /// Whether the vote was granted.
        granted: bool,
        /// Answers a pre-vote probe.
        pre_vote: bool,
    },
    /// AppendEntries (Raft §5.3). With no entries it still carries the commit
    /// index and probes for the follower's log position.
    AppendEntries {
        /// Index of the entry immediately before `entries`.
        prev_index: Index,
        /// Term of that entry.
        prev_term: Term,
        /// Entries to append; may be empty.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to a [`Body::AppendEntries`].
    AppendEntriesResponse {
        /// On success, the index of the last entry now known to match the
        /// leader's log; on rejection, the `prev_index` that was rejected.
        index: Index,
        /// Whether the follower's log matched at `prev_index`.
        success: bool,
        /// On rejection, the follower's hint for fast backtracking: the
        /// largest index at or below the rejected one whose term is at most
        /// the leader's `prev_term`, and that entry's term.
        hint: Option<(Index, Term)>,
    },
    /// A heartbeat (Raft §5.2). It carries the commit index the follower may
    /// safely adopt and the round of read confirmation it belongs to
    /// (thesis §6.4).
    Heartbeat {
        /// `min(follower's match index, leader's commit)`.
        commit: Index,
        /// The read-confirmation round this heartbeat belongs to.
        round: u64,
    },
    /// The answer to a [`Body::Heartbeat`], echoing its round.
    HeartbeatResponse {
        /// The round of the heartbeat being answered.
        round: u64,
    },
    /// Tells a caught-up voter to campaign at once (thesis §3.10).
    TimeoutNow,
    /// One chunk of a snapshot (Raft §7).
    InstallSnapshot {
        /// What the whole snapshot covers.
        meta: SnapshotMeta,
        /// Byte offset of this chunk within the snapshot data.
        offset: u64,
        /// The chunk's bytes.
        #[serde(with = "crate::byte_field")]
        data: Vec<u8>,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// The answer to an [`Body::InstallSnapshot`] chunk.
    InstallSnapshotResponse {
        /// The snapshot's last index.
        index: Index,
        /// The offset the follower expects next (the end of what it holds),
        /// or the whole length once installed.
        next_offset: u64,
        /// Whether the snapshot has been installed.
        done: bool,
        /// The chunk did not continue the transfer the follower holds; the
        /// leader must restart from `next_offset`.
        rejected: bool,
    },
    /// A follower asks its leader for a read index on behalf of a read it
    /// serves itself (thesis §6.4.1).
    ReadIndexRequest {
        /// The follower's context for the read, echoed in the answer.
        ctx: u64,
    },
    /// The answer to a [`Body::ReadIndexRequest`]: the index the follower's
    /// state machine must have applied before it serves the read, or `None`
    /// when the receiver could not confirm its leadership (the follower fails
    /// the read; its caller retries).
    ReadIndexResponse {
        /// The follower's context, as sent.
        ctx: u64,
        /// The read index, if leadership was confirmed.
        index: Option<Index>,
    },
    /// RequestVote sent because of a leadership transfer (thesis §3.10),
    /// naming the leader that ordered it: `leader` sent the candidate
    /// `TimeoutNow` as the leader of term `term - 1` (the message's term
    /// less one). A voter inside a lease (thesis §4.2.3, §6.4.1) grants
    /// the transfer override only when `leader` is the leader it knows for
    /// that term; otherwise the request is an ordinary vote request, which
    /// a lease refuses (`Raft::step_admitted`).
    ///
    /// The successor of [`Body::RequestVote`] with `transfer` set, which
    /// named nobody. Appended last (postcard encodes variants by index), and
    /// sent over a peer link only to a peer that announced it understands
    /// it; a peer of an earlier binary gets [`Body::legacy_form`] instead
    /// (`transport::peer_features`).
    TransferVote {
        /// Index of the candidate's last log entry.
        last_index: Index,
        /// Term of the candidate's last log entry.
        last_term: Term,
        /// The leader that ordered the transfer (the sender of the
        /// candidate's TimeoutNow), leader of the term below the message's.
        leader: NodeId,
    },
}

impl Body {
    /// Whether this body is a response (its term is compared differently by
    /// some rules).
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            Body::RequestVoteResponse { .. }
                | Body::AppendEntriesResponse { .. }
                | Body::HeartbeatResponse { .. }
                | Body::InstallSnapshotResponse { .. }
                | Body::ReadIndexResponse { .. }
        )
    }

    /// A short name for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::RequestVote { pre_vote: true, .. } => "PreVote",
            Body::RequestVote { .. } => "RequestVote",
            Body::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            Body::RequestVoteResponse { .. } => "RequestVoteResponse",
            Body::AppendEntries { .. } => "AppendEntries",
            Body::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::HeartbeatResponse { .. } => "HeartbeatResponse",
            Body::TimeoutNow => "TimeoutNow",
            Body::InstallSnapshot { .. } => "InstallSnapshot",
            Body::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            Body::ReadIndexRequest { .. } => "ReadIndexRequest",
            Body::ReadIndexResponse { .. } => "ReadIndexResponse",
            Body::TransferVote { .. } => "TransferVote",
        }
    }

    /// Whether this body asks for a vote or a pre-vote: a
    /// [`Body::RequestVote`] or a [`Body::TransferVote`].
    pub fn is_vote_request(&self) -> bool {
        matches!(self, Body::RequestVote { .. } | Body::TransferVote { .. })
    }

    /// This body as a peer of an earlier binary understands it: a
    /// [`Body::TransferVote`] becomes the [`Body::RequestVote`] with
    /// `transfer` set that it replaces (the ordering leader is not named,
    /// so such a peer's voters apply the earlier, weaker rule: see the
    /// module docs of `transfer`, "Mixed versions"); every other body is
    /// unchanged.
    pub fn legacy_form(self) -> Body {
        match self {
            Body::TransferVote {
                last_index,
                last_term,
                ..
            } => Body::RequestVote {
                last_index,
                last_term,
                pre_vote: false,
                transfer: true,
            },
            other => other,
        }
    }
}
