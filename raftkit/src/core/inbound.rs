//! What the core accepts from the network: every inbound message is checked
//! before any rule looks at it, and a message that no correct peer could
//! have sent, or that the rules below refuse, is dropped and counted
//! ([`DropReason`], [`DropCounts`]). Nothing in a message can make the core
//! panic, grow memory without a bound, or rewrite a committed entry.
//!
//! # Who may send what (Raft thesis §4.2.3, §3.10, Raft §5.2)
//!
//! *Member* means a voter or learner of the configuration in force (the
//! last one in the log, thesis §4.1).
//!
//! | message | dropped when | why |
//! |---|---|---|
//! | any | not addressed to this node, or "from" this node or from node 0 | misrouted or forged |
//! | any | its term more than [`MAX_TERM_JUMP`] (2^24) above this node's | no correct peer is that far ahead (below); one message must not exhaust the terms |
//! | RequestVote (and PreVote) | the sender is not a member, while this node leads or heard from its leader within the minimum election timeout (with or without CheckQuorum), or is in its startup lease, or has no configuration yet (a new server not yet replicated to has nothing to elect) | §4.2.3: a removed server must not disrupt the cluster. Outside a lease they are handled (§4.1: a server grants its vote to a candidate outside its latest configuration; the candidate may be a voter of a configuration this node missed, and its vote may be needed to elect anybody) |
//! | a response, TimeoutNow | the sender is neither a member nor a node the leader still replicates to | it answers nothing this node sent; only the leader orders a campaign |
//! | TransferVote, or RequestVote with `transfer` (its earlier form) | the candidate is not a voter of this node's configuration | §3.10: a leader transfers only to a voter, and a transfer vote overrides the lease (a learner could depose a settled leader) |
//! | TimeoutNow | not from the leader of this node's term, at that term (from another node, at another term, or while no leader of this term is known; a pre-candidate remembers its term's leader), or from a leader that was not a voter of this node's configuration when this node first followed it | §3.10: the transfer is the leader's, sent to a target that acknowledged its whole log in its term; a transfer vote overrides leases (§6.4.1), so nobody else may order one, not even a non-voter this node followed after its window (below) |
//! | AppendEntries, Heartbeat, InstallSnapshot | at a *higher* term, or at *our* term before its leader is known, from a non-voter (a learner or a non-member), while this node has a configuration and is in its *window*: it leads, is in a leader lease, or heard from its term's leader (or started) less than the longest election timeout (2 × `election_ticks`) ago | the §4.2.3 lease argument applied to leader messages: a node that is not a voter of the configuration cannot be elected (thesis §3.4, §4.2.1). The window covers a restarted node and a pre-candidate (stop 58), and it ends: a voter promoted by a configuration this node missed may be the leader it must follow (§4.1). A node that stops leading starts a new window (stop 58), and so does one that grants a vote, a window that spares the candidate it voted for at the term of that vote (stop 59; `Raft::guards_against_non_voters`), or votes for itself as it campaigns (stop 60). At our term, a voter of the last committed configuration is taken while a newer one is pending in this node's log (§4.2.2: the leader of a change that removes it keeps replicating it). Limit (review s59, finding 2): so is any other voter that pending change removes; a node restarted during a removal follows the first such voter it hears, applies entries that voter makes up, and refuses the real leader for the term (`non_voters::limit_a_removed_voter_leads_a_restarted_node_while_its_removal_is_pending`) |
//! | any other message but a vote request (responses, read requests) | at a *higher* term, from a non-voter, whenever this node has a configuration | its term would depose the leader or make a follower forget it (Raft §5.1), on the word of a node that cannot have been elected; voters carry a real new term, and no node needs a non-voter to learn it (candidates count only voters; an old leader hears it from voters, or steps down by CheckQuorum) |
//! | AppendEntries, Heartbeat, InstallSnapshot | at *our* term, from another node than the leader of our term once known (`term_leader`, which a pre-candidate keeps), or when we lead | Raft §5.2 Election Safety: at most one leader per term |
//! | ReadIndexRequest | the sender is not a member; or the leader already holds [`MAX_REMOTE_READS`](super::read_index::MAX_REMOTE_READS) followers' reads | thesis §6.4.1: only members forward reads; a bounded queue |
//! | ReadIndexResponse | not from the leader we follow at our term, or for a context this node is not waiting for (a read it already failed or never forwarded); from a node we know in a higher term it is admitted only to raise our term (Raft §5.1), which fails the forwarded reads first, so it answers none | an answer of an old leader must not release a read (it fails and is retried instead); a leader that stepped down answers in its new term, and the read fails at once instead of after two election timeouts |
//!
//! Leader messages from non-voters are **accepted** outside the window, and
//! always by a node with no configuration yet: a node being added hears
//! from the leader before it knows any configuration, and a member that
//! was cut off may have missed the configuration that made today's leader
//! a voter. That is the price of membership changes: a holder of a node
//! certificate who is not a voter can still present itself as a leader of
//! a higher term (or of its term, before it heard the leader) to a node
//! outside its window (one cut off from its leader for two election
//! timeouts). It cannot order that node to run a transfer campaign
//! (TimeoutNow, above). A node may still obey the TimeoutNow of a node
//! that is no voter of the cluster's, because it judges "voter" by its own
//! configuration:
//!
//! - *A stale configuration* (review s58, finding 2; review s59,
//!   finding 1). A node that still lists a demoted or removed voter as a
//!   voter follows it and obeys its TimeoutNow, whether captured at a term
//!   above the lease's, at the lease's own term (restarted, it knows no
//!   leader of that term, and the window spares voters) or taken up to it
//!   from a lower one (lagging, it missed that term's election).
//! - *A configuration the non-voter wrote* (stop 59). Leader `L` leads
//!   term `t`; voter 3 is in its lease; voter 2, cut off for two election
//!   timeouts, is still at `t - 1` (it missed the election). Learner 4
//!   leads 2 at `t - 1` (outside 2's window: accepted, §4.1, but not
//!   trusted with a TimeoutNow), appends a made-up configuration making
//!   itself a voter and commits it by its commit index, then leads 2 at
//!   `t`: now a voter of 2's configuration, so trusted, and it sends
//!   TimeoutNow. No narrow rule tells this from the honest case it
//!   copies: a node that missed a promotion (§4.1) takes it, and its
//!   commit, from the promoted leader it did not know as a voter, exactly
//!   so.
//!
//! Leases hold all the same: the captured node's transfer vote
//! ([`Body::TransferVote`]) names the node that sent it the TimeoutNow,
//! and a voter in a lease lets a transfer vote override it only when it
//! names that voter's own leader of the term below, one term up
//! (`transfer` module docs). Voters in `L`'s lease therefore refuse it as
//! an ordinary vote request (§4.2.3), and `L`'s lease reads stay fresh
//! (§6.4.1; `non_voters::rev_same_term_demoted_voter_orders_a_transfer_through_a_restarted_node`,
//! `non_voters::rev_lower_term_demoted_voter_orders_a_transfer_through_a_lagging_node`,
//! `non_voters::a_demoted_voter_cannot_order_a_transfer_through_a_lagging_node`,
//! `non_voters::a_learner_that_wrote_its_own_promotion_cannot_order_a_transfer_through_a_lease`).
//! The limit left is the earlier form of a transfer vote, which names
//! nobody and keeps the earlier rule, from or to a peer of an earlier
//! binary during a rolling upgrade (`transfer` module docs, "Mixed
//! versions").
//!
//! Following a fake leader still costs the node its term and its
//! uncommitted entries, and
//! more: the fake leader's entries and commit index are taken as a real
//! leader's would be, so the node can apply entries the fake leader made up
//! (past what it knew committed; it never rewrites an entry it knew
//! committed, below). Such a node has left the cluster's history: it then
//! refuses the real leader's different entries at those indexes
//! ([`DropReason::CommittedRewrite`]) and must be removed and added
//! again with a new data directory (so would every node it reaches this
//! way before their leader's lease protects them). Raft
//! assumes peers that follow the protocol (crash faults, not Byzantine
//! ones): a node certificate is that trust, so issue them only to the
//! deployment's nodes and revoke a leaked one (`--crl`).
//!
//! # How far a term may jump
//!
//! A message at a term more than [`MAX_TERM_JUMP`] (2^24) above this
//! node's is dropped, whatever it carries, before any rule adopts its term
//! (Raft §5.1): votes and their answers, PreVote, leader messages,
//! snapshots, every response, TimeoutNow and read-index answers alike.
//! Without the bound one heartbeat at `Term::MAX` from any holder of a node
//! certificate (to a node outside a lease) pushed its victim to the last
//! term, durably; its answers then deposed the real leader, and nobody
//! could campaign again (there is no next term). With it, reaching the
//! last term takes at least 2^40 messages, each one accepted.
//!
//! A correct peer is never that far ahead: terms grow by one per election
//! and, with PreVote (thesis §9.6, [`Config::pre_vote`], on by default), a
//! node that cannot win an election (partitioned, behind) does not raise
//! its term at all, so a member would have to miss 16 million elections.
//! The price: with PreVote off, a node cut off for 16 million election
//! timeouts (weeks) campaigns itself past the bound, and the cluster drops
//! everything it says for good (its term is durable): it must be removed
//! and added again with a new data directory. And a new node (term 0)
//! can join only a cluster whose term is at most 2^24.
//!
//! # What a message must look like
//!
//! - AppendEntries: at most [`MAX_ENTRIES_PER_APPEND`] entries (a correct
//!   leader's batches stop there; the transport refuses a frame claiming
//!   more before decoding it, this check covers other transports); entries
//!   at consecutive indexes starting right after `prev_index` (no
//!   overflow), terms non-decreasing, none below `prev_term` and none above
//!   the message's term; at this node's term or a later one, none
//!   conflicting with an entry this node knows committed (Raft §5.4,
//!   Leader Completeness: a correct leader of that term never sends one;
//!   a leader of an *earlier* term may, and is answered with this node's
//!   term, §5.1, its entries left alone).
//! - No entry or snapshot index past [`MAX_INDEX`] (2^62), so that no index
//!   arithmetic anywhere can overflow.
//! - A configuration, in an entry or in a snapshot's metadata: at most
//!   [`MAX_MEMBERS`] (1024) members, voters of either half and learners
//!   counted once ([`DropReason::ConfigTooLarge`]); no address longer than
//!   [`MAX_ADDR_LEN`] (256) bytes and no more than [`MAX_MEMBERS`]
//!   addresses (the same reason; an address of a node that is not a member
//!   is allowed, see below). The runtime keeps a link
//!   to, and dials, every address of the configuration in force, so an
//!   unbounded one (a 16 MiB frame names some 800,000 members with
//!   addresses) cost a task and a connection attempt to attacker-chosen
//!   addresses for each. Raft needs a majority of voters to answer every
//!   round, so a real cluster stays far below 1024 members; a host name is
//!   at most 253 bytes, so 256 holds any `host:port` worth dialling but a
//!   long IPv6 literal with a zone. [`Raft::propose_config`] refuses a
//!   change to such a configuration (`InvalidConfiguration`), so a correct
//!   leader never sends one. A log or snapshot written by an earlier
//!   version may hold a joint configuration that kept the address of a
//!   learner it removed: such a stray address is taken (it is counted, and
//!   dialled like the others), or a follower of this version could never
//!   take that entry; this version's joint configurations drop it.
//! - InstallSnapshot: the snapshot's term at most the message's, its index
//!   non-zero, and the chunk ending within [`Config::max_snapshot_bytes`]
//!   (the receive buffer never grows past it). A chunk that leaves a gap
//!   is counted ([`DropReason::SnapshotChunkOutOfOrder`]) and answered with
//!   the offset expected, so a correct leader resumes there. A chunk that
//!   would take the buffer past the room the runtime gives it (a
//!   multi-group node's budget across its groups) abandons the reception
//!   ([`DropReason::SnapshotOverBudget`], see `snapshot`). A reception no
//!   chunk can extend any more (of an earlier term, or covered by the
//!   commit index) is dropped at once, its bytes with it.
//! - On the leader: a successful AppendEntries answer may not acknowledge
//!   an index past the leader's log; a heartbeat answer may not echo a read
//!   round the leader never started.
//!
//! [`Config::max_snapshot_bytes`]: super::Config::max_snapshot_bytes
//! [`Config::pre_vote`]: super::Config::pre_vote

use super::message::{Body, MAX_ENTRIES_PER_APPEND, Message};
use super::raft::{Raft, Role};
use super::types::{Configuration, Entry, Index, NO_NODE, NodeId, Payload, Term};

/// Why an inbound message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Not addressed to this node, or from this node itself or node 0.
    Misaddressed,
    /// A vote request from a node outside the configuration, while this
    /// node heard from a leader within the minimum election timeout (or is
    /// in its startup lease).
    VoteFromNonMember,
    /// A response or TimeoutNow from a node this node has no business with.
    FromStranger,
    /// TimeoutNow not from the leader we follow at our term.
    TimeoutNowNotFromLeader,
    /// A leader message at a higher term, or at this node's term before
    /// its leader is known, from a node that is not a voter (a non-member
    /// or a learner) while this node leads, is in a lease, or heard from a
    /// leader (or started) within the longest election timeout. (The name
    /// predates learners and the window; it is kept for metrics.)
    NonMemberInLease,
    /// A leader message at our term from another node than our term's
    /// leader.
    SecondLeader,
    /// Entries not at consecutive indexes right after `prev_index`.
    NonContiguousEntries,
    /// Entry terms decreasing, below `prev_term` or above the message's.
    BadEntryTerm,
    /// An entry conflicting with an entry known committed.
    CommittedRewrite,
    /// A snapshot chunk past the configured maximum snapshot size.
    SnapshotTooLarge,
    /// A snapshot whose metadata no correct leader sends.
    SnapshotInvalid,
    /// A snapshot chunk that leaves a gap (answered with the offset
    /// expected).
    SnapshotChunkOutOfOrder,
    /// An acknowledgement of an index past the leader's log.
    AckBeyondLog,
    /// A heartbeat answer echoing a read round never started.
    UnknownReadRound,
    /// An entry or snapshot index past [`MAX_INDEX`].
    IndexOutOfRange,
    /// A read index answer for no read this node waits for, or not from
    /// its leader at its term.
    UnknownReadContext,
    /// A follower's read request while the leader holds the most
    /// followers' reads it takes.
    ReadQueueFull,
    /// An AppendEntries carrying more than [`MAX_ENTRIES_PER_APPEND`]
    /// entries.
    TooManyEntries,
    /// A message whose term is more than [`MAX_TERM_JUMP`] above this
    /// node's.
    TermJump,
    /// A leadership-transfer vote request from a node that is not a voter
    /// of this node's configuration.
    TransferFromNonVoter,
    /// A configuration (an entry or a snapshot's) of more than
    /// [`MAX_MEMBERS`] members or addresses, or with an address longer
    /// than [`MAX_ADDR_LEN`] bytes.
    ConfigTooLarge,
    /// A snapshot chunk that would take the receive buffer past the room
    /// the runtime gives it (a multi-group node's budget for all its
    /// groups' receive buffers): the reception is abandoned and its bytes
    /// released; the leader starts it over.
    SnapshotOverBudget,
    /// A message other than a leader message or a vote request (a
    /// response, a read request) at a higher term from a node that is not
    /// a voter of this node's configuration: its term is not adopted
    /// (thesis §4.2.3, §6.4.1).
    HigherTermFromNonVoter,
}

/// The largest log index accepted from a peer (2^62): no log gets near
/// the end of `u64`, so no index arithmetic can overflow, while no real log
/// ever reaches it (a million entries a second for 146,000 years).
pub const MAX_INDEX: Index = 1 << 62;

/// How far above this node's term a message's term may be (2^24): a
/// message beyond it is dropped ([`DropReason::TermJump`]) before its term
/// is looked at. See the module docs.
pub const MAX_TERM_JUMP: Term = 1 << 24;

/// The most members (voters of either half and learners) a configuration
/// may have (1024). See the module docs.
pub const MAX_MEMBERS: usize = 1024;

/// The longest address, in bytes, a configuration may carry for a member
/// (256). See the module docs.
pub const MAX_ADDR_LEN: usize = 256;

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 23] = [
        DropReason::Misaddressed,
        DropReason::VoteFromNonMember,
        DropReason::FromStranger,
        DropReason::TimeoutNowNotFromLeader,
        DropReason::NonMemberInLease,
        DropReason::SecondLeader,
        DropReason::NonContiguousEntries,
        DropReason::BadEntryTerm,
        DropReason::CommittedRewrite,
        DropReason::SnapshotTooLarge,
        DropReason::SnapshotInvalid,
        DropReason::SnapshotChunkOutOfOrder,
        DropReason::AckBeyondLog,
        DropReason::UnknownReadRound,
        DropReason::IndexOutOfRange,
        DropReason::UnknownReadContext,
        DropReason::ReadQueueFull,
        DropReason::TooManyEntries,
        DropReason::TermJump,
        DropReason::TransferFromNonVoter,
        DropReason::ConfigTooLarge,
        DropReason::SnapshotOverBudget,
        DropReason::HigherTermFromNonVoter,
    ];

    /// A stable snake_case name (metrics label values).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Misaddressed => "misaddressed",
            DropReason::VoteFromNonMember => "vote_from_non_member",
            DropReason::FromStranger => "from_stranger",
            DropReason::TimeoutNowNotFromLeader => "timeout_now_not_from_leader",
            DropReason::NonMemberInLease => "non_member_in_lease",
            DropReason::SecondLeader => "second_leader",
            DropReason::NonContiguousEntries => "non_contiguous_entries",
            DropReason::BadEntryTerm => "bad_entry_term",
            DropReason::CommittedRewrite => "committed_rewrite",
            DropReason::SnapshotTooLarge => "snapshot_too_large",
            DropReason::SnapshotInvalid => "snapshot_invalid",
            DropReason::SnapshotChunkOutOfOrder => "snapshot_chunk_out_of_order",
            DropReason::AckBeyondLog => "ack_beyond_log",
            DropReason::UnknownReadRound => "unknown_read_round",
            DropReason::IndexOutOfRange => "index_out_of_range",
            DropReason::UnknownReadContext => "unknown_read_context",
            DropReason::ReadQueueFull => "read_queue_full",
            DropReason::TooManyEntries => "too_many_entries",
            DropReason::TermJump => "term_jump",
            DropReason::TransferFromNonVoter => "transfer_from_non_voter",
            DropReason::ConfigTooLarge => "config_too_large",
            DropReason::SnapshotOverBudget => "snapshot_over_budget",
            DropReason::HigherTermFromNonVoter => "higher_term_from_non_voter",
        }
    }

    /// What it means, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::Misaddressed => "not addressed to this node, or from itself or node 0",
            DropReason::VoteFromNonMember => {
                "vote request from a node outside the configuration during a lease (thesis 4.2.3)"
            }
            DropReason::FromStranger => {
                "a response or TimeoutNow from a node outside the configuration"
            }
            DropReason::TimeoutNowNotFromLeader => {
                "TimeoutNow not from the leader this node follows at its term"
            }
            DropReason::NonMemberInLease => {
                "a leader message at a higher term (or this term, leader unknown) from a non-voter within the window"
            }
            DropReason::SecondLeader => {
                "a leader message at this term from a node that is not this term's leader"
            }
            DropReason::NonContiguousEntries => {
                "AppendEntries whose entries do not follow prev_index contiguously"
            }
            DropReason::BadEntryTerm => {
                "AppendEntries whose entry terms decrease, precede prev_term or exceed the message's term"
            }
            DropReason::CommittedRewrite => "AppendEntries conflicting with a committed entry",
            DropReason::SnapshotTooLarge => "a snapshot chunk past the maximum snapshot size",
            DropReason::SnapshotInvalid => "a snapshot whose metadata no correct leader sends",
            DropReason::SnapshotChunkOutOfOrder => "a snapshot chunk leaving a gap",
            DropReason::AckBeyondLog => "an acknowledgement past the leader's last index",
            DropReason::UnknownReadRound => "a heartbeat answer for a read round never started",
            DropReason::IndexOutOfRange => "an entry or snapshot index past 2^62",
            DropReason::UnknownReadContext => {
                "a read index answer for no pending read, or not from this term's leader"
            }
            DropReason::ReadQueueFull => "a follower's read while the leader's read queue is full",
            DropReason::TooManyEntries => {
                "AppendEntries carrying more entries than one message may (MAX_ENTRIES_PER_APPEND)"
            }
            DropReason::TermJump => "a message whose term is more than 2^24 above this node's",
            DropReason::TransferFromNonVoter => {
                "a leadership-transfer vote request from a node that is not a voter (thesis 3.10)"
            }
            DropReason::ConfigTooLarge => {
                "a configuration of more than MAX_MEMBERS members or addresses, or with an address over MAX_ADDR_LEN bytes"
            }
            DropReason::SnapshotOverBudget => {
                "a snapshot chunk past the node's receive budget (the reception is abandoned and restarted)"
            }
            DropReason::HigherTermFromNonVoter => {
                "a response or read request at a higher term from a non-voter"
            }
        }
    }

    fn slot(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many inbound messages a node dropped, per reason, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    counts: [u64; DropReason::ALL.len()],
    last: Option<DropReason>,
}

impl DropCounts {
    /// Messages dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason.slot()).copied().unwrap_or(0)
    }

    /// Messages dropped for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Every reason with its count (zeros included), in [`DropReason::ALL`]
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// The reason of the latest drop.
    pub fn last(&self) -> Option<DropReason> {
        self.last
    }

    pub(super) fn record(&mut self, reason: DropReason) {
        if let Some(c) = self.counts.get_mut(reason.slot()) {
            *c = c.saturating_add(1);
        }
        self.last = Some(reason);
    }
}

/// Whether `conf` is within the bounds of the module docs: at most
/// [`MAX_MEMBERS`] members and as many addresses, none over
/// [`MAX_ADDR_LEN`] bytes. `Err` carries the drop reason and a
/// sentence for a local caller (`Raft::propose_config`).
pub(super) fn check_config(conf: &Configuration) -> Result<(), (DropReason, String)> {
    // Counted without allocating: the configuration came from the network.
    let members = conf.member_count();
    if members > MAX_MEMBERS {
        return Err((
            DropReason::ConfigTooLarge,
            format!("{members} members, more than a configuration may have ({MAX_MEMBERS})"),
        ));
    }
    if let Some((id, addr)) = conf.addrs.iter().find(|(_, a)| a.len() > MAX_ADDR_LEN) {
        return Err((
            DropReason::ConfigTooLarge,
            format!(
                "the address of node {id} is {} bytes, more than {MAX_ADDR_LEN}",
                addr.len()
            ),
        ));
    }
    // Addresses of nodes that are not members are allowed (a joint
    // configuration of an earlier version kept the address of a learner
    // it removed; refusing it would leave a follower unable to take that
    // entry for ever), but counted: the runtime dials every address.
    if conf.addrs.len() > MAX_MEMBERS {
        return Err((
            DropReason::ConfigTooLarge,
            format!(
                "{} addresses, more than a configuration may have ({MAX_MEMBERS})",
                conf.addrs.len()
            ),
        ));
    }
    Ok(())
}

impl Raft {
    /// Handles a message from a peer, or drops it (see the module docs of
    /// `inbound` for what is dropped and why): `Err` says why this message,
    /// or part of it (a snapshot chunk out of order), was dropped. Every
    /// drop is counted in [`Raft::dropped`].
    pub fn step_checked(&mut self, m: Message) -> Result<(), DropReason> {
        if let Err(reason) = self.admit(&m) {
            self.dropped.record(reason);
            return Err(reason);
        }
        let before = self.dropped.total();
        self.step_admitted(m);
        // A reception no chunk can extend any more (a new term, or the log
        // committed past it) releases its bytes now.
        self.snapshots
            .forget_obsolete_receiving(self.term, self.log.committed());
        match self.dropped.last() {
            Some(reason) if self.dropped.total() != before => Err(reason),
            _ => Ok(()),
        }
    }

    /// The inbound messages dropped so far, per reason.
    pub fn dropped(&self) -> &DropCounts {
        &self.dropped
    }

    /// Whether this node is in a leader lease: it leads, or it heard from
    /// the leader it follows within an election timeout (thesis §4.2.3,
    /// §6.2; needs CheckQuorum).
    pub(super) fn in_lease(&self) -> bool {
        self.cfg.check_quorum && self.heard_leader_recently()
    }

    /// Whether this node leads, or heard from the leader it follows within
    /// the minimum election timeout: the rule of thesis §4.2.3 taken
    /// literally, without CheckQuorum (which [`Raft::in_lease`] adds).
    fn heard_leader_recently(&self) -> bool {
        self.leader != NO_NODE && self.election_elapsed < self.cfg.election_ticks
    }

    /// Whether this node refuses the leadership and terms of `from`, a
    /// non-voter, claiming `term` (module docs): it has a configuration,
    /// and it leads, is in a leader lease, or heard from its term's leader
    /// (or started) less than the longest election timeout
    /// (`2 * election_ticks`) ago. That covers a restarted node and a
    /// pre-candidate, which know no leader but have not been without one
    /// for long (review s57, core2 #1, #2). The window ends: a voter
    /// promoted by a configuration this node missed may be the leader it
    /// must follow (thesis §4.1).
    ///
    /// A second window of the same length starts when this node grants a
    /// real vote, or votes for itself as it campaigns (stop 60: a
    /// candidate past its leader's window had none) (review s58, finding
    /// 1: a voter of a slow election, past
    /// its old leader's window, knows no leader of the new term until the
    /// winner's first message). A granted vote is evidence of a live
    /// cluster as a leader's heartbeat is (the premise of the §4.2.3
    /// rule): an election of that term is under way among the voters.
    /// It refuses every non-voter but one: the candidate this node voted
    /// for, claiming the term of that vote. That candidate campaigned,
    /// which a node does only while it believes itself a voter (thesis
    /// §3.4, §4.2.1), and this node judged its log at least as up to date
    /// as its own (Raft §5.4.1); if it wins, this node's configuration
    /// missed its promotion (§4.1), and it may have needed this very vote.
    /// Refusing it too (the first attempt, stop 58) made such a winner step
    /// down by CheckQuorum (§6.2) for want of this node, which then voted
    /// again and restarted its window: nobody ever led
    /// (`review_s57::s57_a_freshly_promoted_voter_wins_an_election`). Any
    /// other non-voter winning that term won without this node's vote, so
    /// the window costs this node at most the longest election timeout of
    /// lag, as the leader window does. The window only adds refusals: the
    /// candidate spared is refused whenever the leader window refuses it,
    /// and at any other term; a learner that asked for this node's vote
    /// outside a lease (§4.1 handles a member's request) leads it no
    /// sooner than it could without this window.
    fn guards_against_non_voters(&self, from: NodeId, term: Term) -> bool {
        let window = u64::from(self.cfg.election_ticks).saturating_mul(2);
        let within = |at: u64| self.ticks.saturating_sub(at) < window;
        let voted_recently = self.voted_at.is_some_and(within)
            && !(term == self.term && from == self.vote && self.vote != NO_NODE);
        !self.conf.voters.is_empty()
            && (self.role == Role::Leader
                || self.in_lease()
                || within(self.leader_heard_at)
                || voted_recently)
    }

    /// Whether a configuration newer than the last committed one is
    /// pending in this node's log and `id` is a voter of that committed
    /// configuration: the leader of the change, which (thesis §4.2.2) keeps
    /// replicating a C_new that removes it until C_new commits. A learner
    /// or a non-member of the committed configuration never is; any voter
    /// the pending change removes or demotes is, its leader or another
    /// (see the module docs on stale configurations). That is a stated
    /// limit (review s59, finding 2): nothing in this node's log tells
    /// the change's leader from another removed voter, so a node restarted
    /// while a removal is pending follows whichever of them it hears first
    /// at its term, takes (and applies) entries that one makes up, and then
    /// refuses the real leader as [`DropReason::SecondLeader`] for the term
    /// (`non_voters::limit_a_removed_voter_leads_a_restarted_node_while_its_removal_is_pending`).
    /// Such a voter cannot order a transfer campaign: it is no voter of the
    /// configuration in force, so `term_leader_voter` stays false. O(1): the
    /// log keeps the last committed configuration's index
    /// ([`RaftLog::committed_config`](super::log::RaftLog::committed_config)),
    /// so a non-voter's stream of such messages costs no scan.
    fn voter_of_committed_conf_pending_change(&self, id: NodeId) -> bool {
        self.conf_index > self.log.committed() && self.log.committed_config().1.is_voter(id)
    }

    /// The checks of the module docs, before any rule sees the message.
    fn admit(&self, m: &Message) -> Result<(), DropReason> {
        if m.to != self.id || m.from == self.id || m.from == NO_NODE {
            return Err(DropReason::Misaddressed);
        }
        // Before any rule looks at the term: every path that adopts a
        // term (Raft §5.1) starts here, whatever the body.
        if m.term > self.term.saturating_add(MAX_TERM_JUMP) {
            return Err(DropReason::TermJump);
        }
        let member = self.conf.contains(m.from);
        let known = member || self.progress.contains_key(&m.from);
        // Thesis §4.2.3, §6.4.1: while this node is in a leader lease, only
        // a voter of its configuration can be a newer leader (a leader is a
        // voter of its own configuration), and only a voter can have been
        // elected in a newer term. A node with no configuration yet cannot
        // tell voters from others, so it has no such protection.
        let has_conf = !self.conf.voters.is_empty();
        let protected = self.guards_against_non_voters(m.from, m.term);
        let voter = self.conf.is_voter(m.from);
        match &m.body {
            // Thesis §4.1: a server processes vote requests without
            // consulting its configuration (a candidate may be a voter of a
            // configuration this node has not received, and its vote may be
            // needed to elect anybody); §4.2.3: inside a lease (or the
            // startup lease) they are disregarded, so a removed server
            // cannot disrupt the cluster. A node with no configuration yet
            // (a new server not yet replicated to) votes in no election.
            // The lease here is the rule of §4.2.3 itself (a leader heard
            // within the minimum election timeout), with or without
            // CheckQuorum (review s57, core2 #4: without it, a removed
            // server's elections deposed the leader).
            body if body.is_vote_request()
                && !member
                && (!has_conf || self.heard_leader_recently() || self.in_startup_lease()) =>
            {
                return Err(DropReason::VoteFromNonMember);
            }
            // Thesis §3.10: a leader transfers only to a voter, and a
            // transfer vote overrides the lease; nobody else may ask for one.
            Body::RequestVote { transfer: true, .. } | Body::TransferVote { .. }
                if !self.conf.is_voter(m.from) =>
            {
                return Err(DropReason::TransferFromNonVoter);
            }
            Body::ReadIndexRequest { .. } if !member => return Err(DropReason::FromStranger),
            // An answer in a higher term from a node we know goes on to
            // raise our term (Raft §5.1), which fails the reads we forwarded;
            // it is never taken as an answer (they are gone by then).
            Body::ReadIndexResponse { ctx, .. }
                if !(known
                    && (m.term > self.term
                        || (m.term == self.term
                            && m.from == self.leader
                            && self.role == Role::Follower
                            && self.reads.is_forwarded(*ctx)))) =>
            {
                return Err(DropReason::UnknownReadContext);
            }
            Body::TimeoutNow if !member => return Err(DropReason::FromStranger),
            // Thesis §3.10: only the leader orders a transfer campaign, and
            // only to a target that acknowledged its whole log in its term,
            // so the honest sender is the leader of this node's term, at
            // that term. `term_leader` survives pre-candidacy (a target
            // whose election timer fired forgot its leader without a new
            // term, and the transfer must go on), and is never NO_NODE for
            // a target: it heard the leader in this term. A TimeoutNow
            // while no leader of this term is known is dropped (stop 57: a
            // learner made a follower forget its leader with a higher term,
            // then ordered it to campaign with a transfer vote, which voters
            // grant inside the real leader's lease, thesis §6.4.1).
            //
            // Stop 58 (review s57, core2 #1): and only if that leader was a
            // voter of this node's configuration when this node first
            // followed it. A node may follow a non-voter claiming its term
            // once its window is over (a promotion it missed, §4.1), but a
            // transfer vote overrides the leases of the voters that grant
            // it, so a learner followed that way must not order one. (A
            // leader that removed itself, §4.2.2, may transfer only to a
            // target that does not hold C_new yet: one that does finds it
            // no member and drops its TimeoutNow as `FromStranger`; such a
            // leader steps down once C_new commits.)
            Body::TimeoutNow
                if m.term != self.term || m.from != self.term_leader || !self.term_leader_voter =>
            {
                return Err(DropReason::TimeoutNowNotFromLeader);
            }
            body if body.is_response() && !known => return Err(DropReason::FromStranger),
            Body::AppendEntries { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                // Stop 57: `is_voter`, not `contains`: a learner is a
                // member, but not a possible leader. A voter promoted in a
                // configuration this node has not received is followed once
                // the lease is over (thesis §4.1), at the cost of at most
                // one lease.
                if m.term > self.term && !voter && protected {
                    return Err(DropReason::NonMemberInLease);
                }
                // Raft §5.2, Election Safety: once this term's leader is
                // known (also by a pre-candidate, which forgot `leader`
                // but not `term_leader`), nobody else leads it.
                if m.term == self.term
                    && (self.role == Role::Leader
                        || (self.term_leader != NO_NODE && self.term_leader != m.from))
                {
                    return Err(DropReason::SecondLeader);
                }
                // Not known yet (restarted, or the term came with a vote):
                // a non-voter cannot be elected (thesis §3.4, §4.2.1), so
                // it is refused during the window, as at a higher term.
                if m.term == self.term
                    && self.term_leader == NO_NODE
                    && !voter
                    && protected
                    && !self.voter_of_committed_conf_pending_change(m.from)
                {
                    return Err(DropReason::NonMemberInLease);
                }
            }
            // Any other message at a higher term (a response, a read
            // request) from a non-voter inside a lease: adopting its term
            // (Raft §5.1) would depose the leader or make a follower forget
            // it, on the word of a node that cannot lead (stop 57). An old
            // leader still learns the new term from the voters, or steps
            // down by CheckQuorum (thesis §6.2). Vote requests are left to
            // the lease rule of §4.2.3 (`Raft::step`).
            //
            // Stop 58 (review s57, core2 #2): whenever this node has a
            // configuration, not only in a lease. No node needs a
            // non-voter's word to learn a term: candidates count only
            // voters, and a restarted voter or a pre-candidate that took a
            // learner's term deposed the leader by answering it in that
            // term.
            body if m.term > self.term && !voter && has_conf && !body.is_vote_request() => {
                return Err(DropReason::HigherTermFromNonVoter);
            }
            _ => {}
        }
        let leads_this_term = self.role == Role::Leader && m.term == self.term;
        match &m.body {
            Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                ..
            } => self.check_entries(m.term, *prev_index, *prev_term, entries),
            Body::InstallSnapshot {
                meta, offset, data, ..
            } => {
                if meta.term > m.term || meta.index == 0 {
                    return Err(DropReason::SnapshotInvalid);
                }
                if meta.index > MAX_INDEX {
                    return Err(DropReason::IndexOutOfRange);
                }
                check_config(&meta.config).map_err(|(reason, _)| reason)?;
                let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                match offset.checked_add(len) {
                    Some(end) if end <= self.cfg.max_snapshot_bytes => Ok(()),
                    _ => Err(DropReason::SnapshotTooLarge),
                }
            }
            Body::AppendEntriesResponse {
                index,
                success: true,
                ..
            } if leads_this_term && *index > self.log.last_index() => Err(DropReason::AckBeyondLog),
            Body::HeartbeatResponse { round } if leads_this_term && *round > self.reads.round() => {
                Err(DropReason::UnknownReadRound)
            }
            Body::ReadIndexResponse {
                index: Some(index), ..
            } if *index > MAX_INDEX => Err(DropReason::IndexOutOfRange),
            _ => Ok(()),
        }
    }

    /// The shape of an AppendEntries' entries (module docs).
    fn check_entries(
        &self,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
    ) -> Result<(), DropReason> {
        if entries.len() > MAX_ENTRIES_PER_APPEND {
            return Err(DropReason::TooManyEntries);
        }
        let committed = self.log.committed();
        // Raft §5.1: a message of an earlier term is only answered with
        // this node's term (`Raft::handle_stale` never touches the log), so
        // its entries rewrite nothing. An old leader that missed the
        // election still replicates its uncommitted entries at indexes a
        // newer leader committed: that is not an attack (stop 57).
        let current = term >= self.term;
        let mut expected = prev_index;
        let mut last_term = prev_term;
        for e in entries {
            expected = expected
                .checked_add(1)
                .ok_or(DropReason::NonContiguousEntries)?;
            if e.index != expected {
                return Err(DropReason::NonContiguousEntries);
            }
            if e.index > MAX_INDEX {
                return Err(DropReason::IndexOutOfRange);
            }
            if e.term < last_term || e.term > term {
                return Err(DropReason::BadEntryTerm);
            }
            last_term = e.term;
            if let Payload::Config(conf) = &e.payload {
                check_config(conf).map_err(|(reason, _)| reason)?;
            }
            if current
                && e.index <= committed
                && self.log.term(e.index).is_some_and(|t| t != e.term)
            {
                return Err(DropReason::CommittedRewrite);
            }
        }
        Ok(())
    }

    /// Checks the node's structural invariants: the log's cursors and
    /// indexes, the configuration in force, the role's bookkeeping, the
    /// bounded snapshot buffer. `Err` describes the first violation. For
    /// fuzzing and property tests, after feeding arbitrary messages.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let log = &self.log;
        let snap = log.snapshot();
        for (k, e) in log.entries().iter().enumerate() {
            let want = snap.index.checked_add(k as u64 + 1);
            if Some(e.index) != want {
                return Err(format!("entry {k} has index {} (want {want:?})", e.index));
            }
        }
        let mut prev = snap.term;
        for e in log.entries() {
            if e.term < prev {
                return Err(format!("term decreases at index {}", e.index));
            }
            prev = e.term;
        }
        if log.last_term() > self.term {
            return Err(format!(
                "last entry's term {} above the node's term {}",
                log.last_term(),
                self.term
            ));
        }
        let (first, applied, committed, last) =
            (snap.index, log.applied(), log.committed(), log.last_index());
        if !(first <= applied && applied <= committed && committed <= last) {
            return Err(format!(
                "cursors out of order: snapshot {first} applied {applied} committed {committed} last {last}"
            ));
        }
        if log.persisted() > last {
            return Err(format!("persisted {} past last {last}", log.persisted()));
        }
        // (Once compacted, the last configuration is the snapshot's, which
        // reports the snapshot's index.)
        let (conf_index, conf) = log.last_config();
        let same_index = conf_index == self.conf_index
            || (conf_index == snap.index && self.conf_index <= snap.index);
        if *conf != self.conf || !same_index {
            return Err(format!(
                "the configuration in force (index {}) is not the log's last one (index {conf_index})",
                self.conf_index
            ));
        }
        if (self.role == Role::Leader) != (self.leader == self.id) {
            return Err(format!("role {:?} with leader {}", self.role, self.leader));
        }
        if self.role != Role::Leader && !self.progress.is_empty() {
            return Err("progress kept while not leading".into());
        }
        if self.role == Role::Candidate && self.vote != self.id {
            return Err("a candidate that did not vote for itself".into());
        }
        for (id, pr) in &self.progress {
            if pr.matched >= pr.next || pr.matched > last {
                return Err(format!(
                    "progress of {id}: matched {} next {} last {last}",
                    pr.matched, pr.next
                ));
            }
        }
        if self.snapshots.receiving_len() > self.cfg.max_snapshot_bytes {
            return Err("snapshot receive buffer past the maximum".into());
        }
        if let Some(t) = self.snapshots.receiving_term()
            && t != self.term
        {
            return Err(format!(
                "a snapshot reception of term {t} kept in term {}",
                self.term
            ));
        }
        if self.durable.0 > self.term {
            return Err("durable term above the current term".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_slot_and_name() {
        let mut counts = DropCounts::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                counts.record(*r);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(counts.get(*r), i as u64 + 1, "{r}");
        }
        let names: std::collections::BTreeSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        assert_eq!(counts.last(), DropReason::ALL.last().copied());
    }

    #[test]
    fn entry_shapes() {
        let cfg = crate::core::Config::new(1);
        let mut restored =
            crate::core::Restored::bootstrap(crate::core::Configuration::new([1, 2]));
        restored.hard_state.term = 3;
        restored.hard_state.commit = 1;
        let raft = Raft::new(cfg, restored).expect("raft");
        let e = |index, term| Entry {
            index,
            term,
            payload: Payload::Noop,
        };
        assert_eq!(raft.check_entries(3, 1, 1, &[e(2, 2), e(3, 3)]), Ok(()));
        assert_eq!(
            raft.check_entries(3, 1, 1, &[e(3, 2)]),
            Err(DropReason::NonContiguousEntries)
        );
        assert_eq!(
            raft.check_entries(3, u64::MAX, 1, &[e(0, 2)]),
            Err(DropReason::NonContiguousEntries)
        );
        assert_eq!(
            raft.check_entries(3, 1, 1, &[e(2, 3), e(3, 2)]),
            Err(DropReason::BadEntryTerm)
        );
        assert_eq!(
            raft.check_entries(3, 1, 2, &[e(2, 1)]),
            Err(DropReason::BadEntryTerm)
        );
        assert_eq!(
            raft.check_entries(3, 1, 1, &[e(2, 4)]),
            Err(DropReason::BadEntryTerm)
        );
        // Index 1 (term 1) is committed.
        assert_eq!(
            raft.check_entries(3, 0, 0, &[e(1, 2)]),
            Err(DropReason::CommittedRewrite)
        );
        assert_eq!(raft.check_entries(3, 0, 0, &[e(1, 1), e(2, 3)]), Ok(()));
        assert_eq!(raft.check_invariants(), Ok(()));
    }
}
